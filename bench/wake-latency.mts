// Section 8: how soon a waiter in another process gets a lock its holder released. A holder
// process (test/fixtures/hold-lock) takes the lock; a store in this process waits for it; after
// 50 ms to 3 s the holder is told to release, and prints the wall-clock time it begins to; the
// sample is the time from then until the waiter holds the lock. Several lanes (lock, holder,
// waiting store) run at once, as waiters of a busy service would. Also counted: the statements the
// waiting store ran per second of waiting (its attempts and its looks for releases).
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { LockStore, createLockTable, dropLockTable } from '../src/index.js'
import { connect, uniqueName, type Database } from '../test/targets.mjs'
import { startWorker } from '../test/worker-process.mjs'
import { beforeBuild } from './before.mjs'
import { quantile } from './stats.mjs'

export interface WakeFigures {
  readonly samples: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly max: number
  /** Statements the waiting store ran per second while it waited (median over samples). */
  readonly statementsPerSecond: number
  /** CPU time of this process per second of one long wait (a lock held throughout), ms; and its statements per second. */
  readonly idleWait: { cpuMsPerSecond: number; statementsPerSecond: number }
}

const LANES = 4
const wallNow = (): number => performance.timeOrigin + performance.now()

/** One mode (a database reached directly, or PostgreSQL through a pooler) with one library build. */
async function measure(database: Database, library: typeof import('../src/index.js'), postgresUrl: string | undefined, samplesPerLane: number, holdMs: [number, number]): Promise<WakeFigures> {
  const tableName = uniqueName('wl_bench_wake')
  const tweaks = postgresUrl === undefined ? {} : { postgresUrl }
  const admin = connect(database, tweaks)
  await createLockTable(admin, { tableName })
  const latencies: number[] = []
  const rates: number[] = []
  try {
    await Promise.all(Array.from({ length: LANES }, async (_, lane) => {
      const knex = connect(database, { ...tweaks, poolMax: 2 })
      let statements = 0
      knex.on('query', () => { statements++ })
      const waiter = new library.LockStore(knex, { tableName, lockTimeoutMs: 120_000 }) as LockStore
      try {
        for (let i = 0; i < samplesPerLane; i++) {
          const name = `wake-${lane}-${i}`
          const holder = await startWorker({ target: { id: `${database}/native`, database, strategy: 'native' }, tableName }, name, postgresUrl === undefined ? {} : { POSTGRES_URL: postgresUrl })
          const refused = new Promise<void>((resolve) => { const off = waiter.on('refused', () => { off(); resolve() }) })
          const began = performance.now()
          const before = statements
          const waiting = waiter.acquireLock(name, { timeoutMs: 60_000 })
          await refused
          await sleep(holdMs[0] + Math.random() * (holdMs[1] - holdMs[0]))
          await holder.release()
          const lock = await waiting
          const grantedAt = wallNow()
          const releasingAt = Number(/releasing at ([\d.]+)/.exec(holder.lines().join('\n'))?.[1])
          latencies.push(grantedAt - releasingAt)
          rates.push((statements - before) / ((performance.now() - began) / 1000))
          await lock.release()
          holder.child.stdin?.end()
          await holder.exited
        }
      } finally {
        await waiter.close()
        await knex.destroy()
      }
    }))
  } finally {
    await dropLockTable(admin, { tableName })
    await admin.destroy()
  }
  return {
    idleWait: await idleWait(database, library, postgresUrl, samplesPerLane === 1 ? 1_000 : 10_000), p50: quantile(latencies, 0.5), p90: quantile(latencies, 0.9), p99: quantile(latencies, 0.99),
    samples: latencies.length, max: Math.max(...latencies), statementsPerSecond: quantile(rates, 0.5),
  }
}

/** What one wait costs while nothing is released: a holder process keeps the lock for `ms`. */
async function idleWait(database: Database, library: typeof import('../src/index.js'), postgresUrl: string | undefined, ms: number): Promise<WakeFigures['idleWait']> {
  const tableName = uniqueName('wl_bench_idle')
  const knex = connect(database, { ...(postgresUrl === undefined ? {} : { postgresUrl }), poolMax: 2 })
  await createLockTable(knex, { tableName })
  let statements = 0
  knex.on('query', () => { statements++ })
  const holder = await startWorker({ target: { id: `${database}/native`, database, strategy: 'native' }, tableName }, 'idle', postgresUrl === undefined ? {} : { POSTGRES_URL: postgresUrl })
  const waiter = new library.LockStore(knex, { tableName, lockTimeoutMs: 120_000 }) as LockStore
  try {
    await waiter.init()
    const cpu = process.cpuUsage()
    const before = statements
    await waiter.acquireLock('idle', { timeoutMs: ms }).then((lock) => lock.release(), () => undefined)
    const used = process.cpuUsage(cpu)
    return { cpuMsPerSecond: (used.user + used.system) / 1000 / (ms / 1000), statementsPerSecond: (statements - before) / (ms / 1000) }
  } finally {
    holder.child.stdin?.end()
    await holder.exited
    await waiter.close()
    await dropLockTable(knex, { tableName })
    await knex.destroy()
  }
}

/** Every mode for `database`, with this build and, when given, the earlier one ("before"). */
export async function wakeLatencySection(database: Database, smoke: boolean): Promise<Record<string, WakeFigures>> {
  const samplesPerLane = smoke ? 1 : 25
  const holdMs: [number, number] = smoke ? [50, 200] : [50, 3_000]
  const modes: Array<[string, string | undefined]> = [['direct', undefined]]
  const pooler = process.env.PGBOUNCER_TRANSACTION_URL
  if (database === 'postgres' && pooler) modes.push(['via PgBouncer (transaction pooling)', pooler])
  const before = await beforeBuild()
  const builds: Array<[string, typeof import('../src/index.js')]> = [['worker-locks', await import('../src/index.js')], ...(before ? [['worker-locks before', before] as [string, typeof import('../src/index.js')]] : [])]
  const figures: Record<string, WakeFigures> = {}
  for (const [mode, url] of modes) {
    for (const [build, library] of builds) figures[`${build}, ${mode}`] = await measure(database, library, url, samplesPerLane, holdMs)
  }
  return figures
}
