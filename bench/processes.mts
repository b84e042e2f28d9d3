// Contention across processes: eight worker processes (bench/process-worker.mts) take one lock
// in turn for a few seconds. Hand-off latency is measured on the wall clock, from the moment a
// holder begins release() to the moment the next holder's acquire resolves, in whichever
// process that is (each holder records both times; the acquisitions are ordered by time).
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import { createLockTable, dropLockTable } from '../src/index.js'
import { connect, sqliteFile, uniqueName, type Database } from '../test/targets.mjs'

const script = join(import.meta.dirname, 'process-worker.mjs')

export interface ProcessContention {
  perSecond: number
  handoff: number[]
  /** The share of hand-offs in which the releasing process took the lock straight back. */
  sameProcess: number
  /** CPU time of all worker processes (not the database's) per critical section, in ms. */
  cpuMsPerSection: number
}

interface WorkerResult { acquiredAt: number[]; releasingAt: number[]; cpuMs: number }

interface Worker {
  ready: Promise<void>
  done: Promise<WorkerResult>
  go(end: number): void
}

function startWorker(database: Database, table: string, contender: string): Worker {
  const child = spawn(process.execPath, [script], {
    env: { ...process.env, WL_DATABASE: database, WL_TABLE: table, WL_SQLITE_FILE: sqliteFile, WL_CONTENDER: contender },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  let stdout = ''
  let onReady!: () => void
  const ready = new Promise<void>((resolve) => { onReady = resolve })
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (stdout.includes('ready\n')) onReady()
  })
  const done = new Promise<WorkerResult>((resolve, reject) => child.on('exit', (code) => {
    if (code !== 0) return reject(new Error(`a benchmark worker exited with ${code}: ${stdout}`))
    resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as WorkerResult)
  }))
  return { ready: Promise.race([ready, done.then(() => undefined)]), done, go: (end) => child.stdin.end(`go ${end}\n`) }
}

/** Eight processes of `contender` on one key for `seconds`: critical sections per second and hand-off times (ms). */
export async function acrossProcesses(database: Database, contender: 'worker-locks' | 'verrou', seconds: number, processes = 8): Promise<ProcessContention> {
  const knex = connect(database, { poolMax: 2 })
  const table = uniqueName(contender === 'verrou' ? 'verrou_x' : 'wl_x')
  try {
    if (contender === 'verrou') {
      // Let verrou create its own table once, before the workers start.
      const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: table }) } } })
      await verrou.createLock('setup', '1s').acquireImmediately()
    } else {
      await createLockTable(knex, { tableName: table })
    }
    const workers = Array.from({ length: processes }, () => startWorker(database, table, contender))
    await Promise.all(workers.map((w) => w.ready))
    const end = performance.timeOrigin + performance.now() + 200 + seconds * 1000
    for (const w of workers) w.go(end)
    const results = await Promise.all(workers.map((w) => w.done))
    const holds = results.flatMap((r, worker) => r.acquiredAt.map((at, i) => ({ worker, acquiredAt: at, releasingAt: r.releasingAt[i] ?? NaN })))
      .sort((a, b) => a.acquiredAt - b.acquiredAt)
    const handoff: number[] = []
    let same = 0
    for (let i = 1; i < holds.length; i++) {
      handoff.push((holds[i]?.acquiredAt ?? NaN) - (holds[i - 1]?.releasingAt ?? NaN))
      if (holds[i]?.worker === holds[i - 1]?.worker) same++
    }
    const cpuMs = results.reduce((sum, r) => sum + r.cpuMs, 0)
    return { perSecond: holds.length / seconds, handoff, sameProcess: same / Math.max(1, handoff.length), cpuMsPerSection: cpuMs / Math.max(1, holds.length) }
  } finally {
    if (contender === 'verrou') await knex.schema.dropTableIfExists(table)
    else await dropLockTable(knex, { tableName: table })
    await knex.destroy()
  }
}
