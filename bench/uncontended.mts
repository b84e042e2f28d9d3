// Section 1 of the benchmarks: uncontended acquire + release, contenders interleaved in short
// batches so that drift on the shared machine hits all alike. "bare" is the floor: the minimal
// two-statement cycle on the bare driver, on a table of its own without fences (bench/raw.mts).
// "raw" runs worker-locks' own statements on the bare driver: raw − bare is the cost of fencing
// (on PostgreSQL, of the release's NOTIFY too). "dialect layer" runs the
// same statements through knex's pool, without the store: the difference between it and raw is
// the cost of taking pooled connections.
import { performance } from 'node:perf_hooks'
import type { Knex } from 'knex'
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import { acquire, database as runner, findDialect } from '../dialects/index.js'
import { LockStore } from '../src/index.js'
import { uniqueName, type Database } from '../test/targets.mjs'
import { bareContender, createBareTable, newToken, rawContender, type RawContender } from './raw.mjs'
import { beforeBuild } from './before.mjs'

export type Series = Record<string, number[]>

/** Runs `samples` cycles of each contender on `table`; microseconds per cycle. */
export async function uncontended(database: Database, knex: Knex, table: string, samples: number, lockTimeoutMs: number): Promise<Series> {
  const raw = await rawContender(database, table, lockTimeoutMs)
  const bareTable = uniqueName('wl_bare')
  await createBareTable(knex, database, bareTable)
  const bare = await bareContender(database, bareTable, lockTimeoutMs)
  const store = new LockStore(knex, { tableName: table, lockTimeoutMs, renewalIntervalMs: 30_000 })
  await store.init()
  // The same with releases that wait for the disk (the default does not, where it can choose).
  const durable = new LockStore(knex, { tableName: table, lockTimeoutMs, renewalIntervalMs: 30_000, durableReleases: true })
  const dialect = findDialect(knex)
  if (!dialect) throw new Error('no dialect')
  const facts = await dialect.detect(runner(knex, dialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }))
  const db = runner(knex, dialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 })
  // The same as the default, with named prepared statements (PostgreSQL; the same statements elsewhere).
  const prepared = new LockStore(knex, { tableName: table, lockTimeoutMs, renewalIntervalMs: 30_000, preparedStatements: true })
  const verrouTable = uniqueName('verrou')
  const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: verrouTable }) } } })
  const cycle = (driver: RawContender, name: string) => async (i: number): Promise<void> => {
    const t = newToken()
    if (!(await driver.acquire(name, `k${i % 8}`, t))) throw new Error(`${name} refused while uncontended`)
    await driver.release(name, `k${i % 8}`, t)
  }
  const contenders: Record<string, (i: number) => Promise<void>> = {
    bare: cycle(bare, 'bench-bare'),
    raw: cycle(raw, 'bench-raw'),
    'dialect layer': async (i) => {
      const request = { table, name: 'bench-dl', key: `k${i % 8}`, token: newToken(), instanceName: 'bench', leaseMs: lockTimeoutMs, nowMs: null }
      if (await acquire(db, dialect, facts, 'native', request) === null) throw new Error('refused while uncontended')
      await dialect.release(db, table, request, false)
    },
    'worker-locks, prepared statements': async (i) => {
      const lock = await prepared.tryAcquireLock('bench-wlp', `k${i % 8}`)
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    'worker-locks': async (i) => {
      const lock = await store.tryAcquireLock('bench-wl', `k${i % 8}`)
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    'worker-locks, durable releases': async (i) => {
      const lock = await durable.tryAcquireLock('bench-wld', `k${i % 8}`)
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    // The read/write lock's two sides: the cost of their acquisition against a plain lock's.
    'worker-locks, read/write (write)': async (i) => {
      const lock = await store.tryAcquireReadWriteLock('bench-wlw', `k${i % 8}`, { write: true })
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    'worker-locks, read/write (read)': async (i) => {
      const lock = await store.tryAcquireReadWriteLock('bench-wlr', `k${i % 8}`, { write: false })
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    verrou: async (i) => {
      const lock = verrou.createLock(`bench-v-k${i % 8}`, '2m')
      if (!(await lock.acquireImmediately())) throw new Error('verrou refused while uncontended')
      await lock.release()
    },
  }
  const before = await beforeContender(knex, lockTimeoutMs)
  if (before) {
    contenders['worker-locks before'] = before.run
    contenders['worker-locks before, read/write (write)'] = before.runWrite
  }
  const series: Series = Object.fromEntries(Object.keys(contenders).map((name) => [name, []]))
  for (const run of Object.values(contenders)) for (let i = 0; i < 20; i++) await run(i) // warm up
  // Contenders take turns in short batches: often enough that drift on this shared machine hits
  // all alike, and long enough that each runs on a connection it has just used, as a busy
  // service does. (Turns of one cycle each would favour whoever shares a pooled connection with
  // the contender before it: an idle connection costs several times a busy one here.)
  const batch = database === 'sqlite' ? 100 : 20
  for (let done = 0; done < samples; done += batch) {
    for (const [name, run] of Object.entries(contenders)) {
      for (let i = done; i < done + batch; i++) {
        const start = performance.now()
        await run(i)
        series[name]?.push((performance.now() - start) * 1000)
      }
    }
  }
  await before?.close()
  await store.close()
  await durable.close()
  await prepared.close()
  await raw.close()
  await bare.close()
  await knex.schema.dropTableIfExists(bareTable)
  await knex.schema.dropTableIfExists(verrouTable)
  return series
}

async function beforeContender(knex: Knex, lockTimeoutMs: number): Promise<{ run: (i: number) => Promise<void>; runWrite: (i: number) => Promise<void>; close: () => Promise<void> } | undefined> {
  const old = await beforeBuild()
  if (!old) return undefined
  const tableName = uniqueName('wl_before')
  await old.createLockTable(knex, { tableName })
  const store = new old.LockStore(knex, { tableName, lockTimeoutMs, renewalIntervalMs: 30_000 })
  return {
    async run(i) {
      const lock = await store.tryAcquireLock('bench-before', `k${i % 8}`)
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    async runWrite(i) {
      const lock = await store.tryAcquireReadWriteLock('bench-before-w', `k${i % 8}`, { write: true })
      if (!lock) throw new Error('refused while uncontended')
      await lock.release()
    },
    async close() {
      await store.close()
      await old.dropLockTable(knex, { tableName })
    },
  }
}
