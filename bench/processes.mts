// Contention across processes: eight worker processes (bench/process-worker.mts) take one lock
// in turn for a few seconds. Hand-off latency is measured on the wall clock, from the moment a
// holder begins release() to the moment the next holder's acquire resolves, in whichever
// process that is (each holder records both times; the acquisitions are ordered by time).
import { join } from 'node:path'
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import { createLockTable, dropLockTable } from '../src/index.js'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { connect, MYSQL_URL, POSTGRES_URL, sqliteFile, uniqueName, type Database } from '../test/targets.mjs'
import { beforeBuild, beforeLibrary } from './before.mjs'
import { runBenchChildren } from './child.mjs'
import { median } from './stats.mjs'

const script = join(import.meta.dirname, 'process-worker.mjs')

export interface ProcessContention {
  perSecond: number
  handoff: number[]
  /** The share of hand-offs in which the releasing process took the lock straight back. */
  sameProcess: number
  /** Hand-off times (ms) of the hand-offs to another process only. */
  toOther: number[]
  /** CPU time of all worker processes (not the database's) per critical section, in ms. */
  cpuMsPerSection: number
  /**
   * A `SELECT 1` round trip (median, ms) measured while the workers run, on a connection left
   * idle for 20 ms before each, as a waiting process's connections are: the unit hand-offs
   * are counted in. NaN on SQLite, which has no round trips.
   */
  roundTripMs: number
}

/** Times `SELECT 1` every 20 ms until `stop` resolves. */
async function probeRoundTrips(database: Database, stop: Promise<unknown>): Promise<number> {
  if (database === 'sqlite') return NaN
  let query: () => Promise<unknown>
  let close: () => Promise<void>
  if (database === 'postgres') {
    const client = new pg.Client({ connectionString: POSTGRES_URL })
    await client.connect()
    query = () => client.query('SELECT 1')
    close = () => client.end()
  } else {
    const connection = await mysql.createConnection(MYSQL_URL)
    query = () => connection.query('SELECT 1')
    close = () => connection.end()
  }
  let stopped = false
  void stop.finally(() => { stopped = true })
  const times: number[] = []
  try {
    while (!stopped) {
      await new Promise((resolve) => setTimeout(resolve, 20))
      const start = performance.now()
      await query()
      times.push(performance.now() - start)
    }
  } finally {
    await close()
  }
  return median(times)
}

/**
 * `server`: the database's own lock queue (PostgreSQL and MySQL only), the floor.
 * `worker-locks before`: the library of the earlier build of `--before` (bench/before.mts) in the
 * same worker, on a table its own createLockTable made; `… before, no line`: the same on a table
 * without PostgreSQL's waiting line, which that build does without.
 */
export type ProcessContender = 'worker-locks' | 'worker-locks before' | 'worker-locks before, no line' | 'verrou' | 'server'

interface WorkerResult { acquiredAt: number[]; releasingAt: number[]; cpuMs: number }

/**
 * Eight processes of `contender` on one key for `seconds`, each holding the lock `workMs` (an
 * await of a timer, as a job's I/O): critical sections per second and hand-off times (ms).
 */
export async function acrossProcesses(database: Database, contender: ProcessContender, seconds: number, processes = 8, workMs = 0): Promise<ProcessContention> {
  const knex = connect(database, { poolMax: 2 })
  const table = uniqueName(contender === 'verrou' ? 'verrou_x' : 'wl_x')
  try {
    if (contender === 'verrou') {
      // Let verrou create its own table once, before the workers start.
      const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: table }) } } })
      await verrou.createLock('setup', '1s').acquireImmediately()
    } else if (contender === 'worker-locks') {
      await createLockTable(knex, { tableName: table })
    } else if (contender.startsWith('worker-locks before')) {
      await (await beforeBuild())?.createLockTable(knex, { tableName: table })
      if (contender.endsWith('no line')) await knex.schema.dropTableIfExists(`${table}_waiters`)
    }
    const before = contender.startsWith('worker-locks before')
    const env = {
      WL_DATABASE: database, WL_TABLE: table, WL_SQLITE_FILE: sqliteFile, WL_CONTENDER: before ? 'worker-locks' : contender, WL_WORK_MS: String(workMs),
      ...(before ? { WL_LIBRARY: beforeLibrary() } : {}),
    }
    const { finished } = await runBenchChildren<WorkerResult>(processes, [script], env, seconds)
    const [results, roundTripMs] = await Promise.all([finished, probeRoundTrips(database, finished.catch(() => undefined))])
    const holds = results.flatMap((r, worker) => r.acquiredAt.map((at, i) => ({ worker, acquiredAt: at, releasingAt: r.releasingAt[i] ?? NaN })))
      .sort((a, b) => a.acquiredAt - b.acquiredAt)
    const handoff: number[] = []
    const toOther: number[] = []
    let same = 0
    for (let i = 1; i < holds.length; i++) {
      const ms = (holds[i]?.acquiredAt ?? NaN) - (holds[i - 1]?.releasingAt ?? NaN)
      handoff.push(ms)
      if (holds[i]?.worker === holds[i - 1]?.worker) same++
      else toOther.push(ms)
    }
    const cpuMs = results.reduce((sum, r) => sum + r.cpuMs, 0)
    return { perSecond: holds.length / seconds, handoff, toOther, sameProcess: same / Math.max(1, handoff.length), cpuMsPerSection: cpuMs / Math.max(1, holds.length), roundTripMs }
  } finally {
    if (contender === 'verrou') await knex.schema.dropTableIfExists(table)
    else if (contender === 'worker-locks') await dropLockTable(knex, { tableName: table })
    else if (contender.startsWith('worker-locks before')) await (await beforeBuild())?.dropLockTable(knex, { tableName: table })
    await knex.destroy()
  }
}
