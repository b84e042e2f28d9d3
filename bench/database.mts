// Every benchmark for one database, in this one process; prints one JSON object. bench/main.mts
// runs this once per database and prints the tables.
//
// Usage: node dist/bench/database.mjs DATABASE [--smoke] [--only=SECTION]
// (--only=uncontended: section 1 alone; --only=contention: sections 2 and 2b; --only=read-write: section 6; --only=many-keys: section 7; --only=wake: section 8;
// the JSON object then has `database` and that section's figures only)
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Knex } from 'knex'
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import { LockStore, ManualClock, createLockTable, dropLockTable, type Lock } from '../src/index.js'
import { connect, uniqueName, type Database } from '../test/targets.mjs'
import { acrossProcesses, type ProcessContender, type ProcessContention } from './processes.mjs'
import { newToken, rawContender } from './raw.mjs'
import { manyKeysSection } from './many-keys.mjs'
import { readWriteSection } from './read-write.mjs'
import { uncontended } from './uncontended.mjs'
import { wakeLatencySection } from './wake-latency.mjs'
import { beforeBuild, beforeDir } from './before.mjs'
import { median, p99 } from './stats.mjs'

const database = process.argv[2] as Database
const smoke = process.argv.includes('--smoke')
const only = process.argv.find((a) => a.startsWith('--only='))?.slice('--only='.length)
const sections = ['uncontended', 'contention', 'read-write', 'many-keys', 'wake']
if (only !== undefined && !sections.includes(only)) throw new Error(`--only takes ${sections.join(', ')}, got ${JSON.stringify(only)}`)
const LOCK_TIMEOUT = 120_000
const gc = (globalThis as { gc?: () => void }).gc ?? (() => undefined)

/** A raw single committed write: the round trip hand-offs are measured in. */
async function roundTrip(table: string): Promise<number> {
  const raw = await rawContender(database, table, LOCK_TIMEOUT)
  const times: number[] = []
  for (let i = 0; i < (smoke ? 10 : 100); i++) {
    const t = newToken()
    const start = performance.now()
    await raw.acquire('bench-rtt', 'k', t)
    times.push(performance.now() - start)
    await raw.release('bench-rtt', 'k', t)
  }
  await raw.close()
  return median(times)
}

/**
 * Eight tasks take turns: each runs `session` (which resolves once it holds the lock, with the
 * function that releases it) over and over for `seconds`. Hand-off: from the moment a holder
 * begins releasing to the moment the next holder has the lock.
 */
async function eightTasks(seconds: number, session: (task: number) => Promise<() => Promise<void>>): Promise<{ perSecond: number; handoff: number[] }> {
  const handoff: number[] = []
  let count = 0
  let releasedAt: number | undefined
  const end = performance.now() + seconds * 1000
  await Promise.all(Array.from({ length: 8 }, async (_, task) => {
    while (performance.now() < end) {
      const release = await session(task)
      if (releasedAt !== undefined) handoff.push(performance.now() - releasedAt)
      count++
      releasedAt = performance.now()
      await release()
    }
  }))
  return { perSecond: count / seconds, handoff }
}

/** 2. Eight workers in this process on one key: critical sections per second and hand-off latency. */
async function contention(table: string): Promise<Record<string, { perSecond: number; handoff: number[] }>> {
  const seconds = smoke ? 1 : 5
  const results: Record<string, { perSecond: number; handoff: number[] }> = {}
  // The floor: the raw driver's two statements per hand-off (release, then the next acquire) on
  // one connection, with a bare promise queue passing the turn between the eight tasks. No lock
  // library can hand off faster in one process.
  {
    const raw = await rawContender(database, table, LOCK_TIMEOUT)
    const turns: Array<() => void> = []
    let busy = false
    const take = (): Promise<void> => {
      if (!busy) { busy = true; return Promise.resolve() }
      return new Promise((resolve) => turns.push(resolve))
    }
    const give = (): void => {
      const next = turns.shift()
      if (next) next()
      else busy = false
    }
    results['raw driver + promise queue (floor)'] = await eightTasks(seconds, async () => {
      await take()
      const t = newToken()
      if (!(await raw.acquire('contended-raw', 'k', t))) throw new Error('the raw acquire was refused with the turn in hand')
      return async () => {
        await raw.release('contended-raw', 'k', t)
        give()
      }
    })
    await raw.close()
  }
  // worker-locks: eight stores (as eight workers would have), waiting API.
  {
    const knexes = Array.from({ length: 8 }, () => connect(database, { poolMax: 2 }))
    const stores = knexes.map((k) => new LockStore(k, { tableName: table, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 }))
    results['worker-locks, eight stores'] = await eightTasks(seconds, async (task) => {
      const lock = await stores[task]!.acquireLock('contended')
      return () => lock.release()
    })
    await Promise.all(stores.map((s) => s.close()))
    await Promise.all(knexes.map((k) => k.destroy()))
  }
  // worker-locks: eight stores on one knex instance, which know they share the database.
  {
    const knex = connect(database, { poolMax: 8 })
    const stores = Array.from({ length: 8 }, () => new LockStore(knex, { tableName: table, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 }))
    results['worker-locks, eight stores on one knex'] = await eightTasks(seconds, async (task) => {
      const lock = await stores[task]!.acquireLock('contended-one-knex')
      return () => lock.release()
    })
    await Promise.all(stores.map((s) => s.close()))
    await knex.destroy()
  }
  // worker-locks: eight tasks sharing one store (one service, eight concurrent jobs).
  {
    const knex = connect(database, { poolMax: 4 })
    const store = new LockStore(knex, { tableName: table, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
    results['worker-locks, one store'] = await eightTasks(seconds, async () => {
      const lock = await store.acquireLock('contended-one-store')
      return () => lock.release()
    })
    await store.close()
    // The same with the earlier build of --before, on a table its own createLockTable made.
    const old = await beforeBuild()
    if (old) {
      const oldTable = uniqueName('wl_before_c')
      await old.createLockTable(knex, { tableName: oldTable })
      const oldStore = new old.LockStore(knex, { tableName: oldTable, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
      results['worker-locks before, one store'] = await eightTasks(seconds, async () => {
        const lock = await oldStore.acquireLock('contended-one-store')
        return () => lock.release()
      })
      await oldStore.close()
      await old.dropLockTable(knex, { tableName: oldTable })
    }
    await knex.destroy()
  }
  // verrou: its retrying acquire, eight lock instances on one key.
  {
    const knex = connect(database, { poolMax: 8 })
    const verrouTable = uniqueName('verrou')
    const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: verrouTable }) } } })
    await verrou.createLock('warm', '2m').acquireImmediately()
    results.verrou = await eightTasks(seconds, async () => {
      const lock = verrou.createLock('contended', '2m')
      await lock.acquire()
      return () => lock.release()
    })
    await knex.schema.dropTableIfExists(verrouTable)
    await knex.destroy()
  }
  return results
}

/** 3. One renewal tick with N held locks: statements and milliseconds, batched against per-lock. */
async function renewal(knex: Knex, table: string, n: number): Promise<{ statements: number; batchedMs: number; perLockMs: number }> {
  const clock = new ManualClock()
  const store = new LockStore(knex, { tableName: table, clock, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
  const locks: Lock[] = []
  for (let i = 0; i < n; i++) {
    const lock = await store.tryAcquireLock('renew', `k${i}`)
    if (!lock) throw new Error('refused while uncontended')
    locks.push(lock)
  }
  let statements = 0
  const count = (): void => { statements++ }
  knex.on('query', count)
  let start = performance.now()
  await clock.advance(30_000)
  const batchedMs = performance.now() - start
  knex.off('query', count)
  start = performance.now()
  for (const lock of locks) {
    await knex(table).where({ lock_name: lock.name, lock_key: lock.key, token: lock.token }).update({ last_renewed_ts: clock.now() })
  }
  const perLockMs = performance.now() - start
  await store.close()
  return { statements, batchedMs, perLockMs }
}

/** 4. 500 waiters on one key, served one after another: wall and CPU time. */
async function crowd(knex: Knex, table: string): Promise<{ waiters: number; wallMs: number; cpuMs: number }> {
  const waiters = smoke ? 50 : 500
  const holder = new LockStore(knex, { tableName: table, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
  const store = new LockStore(knex, { tableName: table, lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
  const first = await holder.tryAcquireLock('crowd')
  if (!first) throw new Error('refused while uncontended')
  const all = Array.from({ length: waiters }, () => store.acquireLock('crowd').then((lock) => lock.release()))
  await sleep(50) // all are queued and asleep
  const cpu = process.cpuUsage()
  const start = performance.now()
  await first.release()
  await Promise.all(all)
  const wallMs = performance.now() - start
  const used = process.cpuUsage(cpu)
  await holder.close()
  await store.close()
  return { waiters, wallMs, cpuMs: (used.user + used.system) / 1000 }
}

/** 5. Heap per held lock. */
async function memory(knex: Knex, table: string): Promise<number> {
  const n = smoke ? 500 : 10_000
  const store = new LockStore(knex, { tableName: table, clock: new ManualClock(), lockTimeoutMs: LOCK_TIMEOUT, renewalIntervalMs: 30_000 })
  const held: Lock[] = []
  gc()
  const before = process.memoryUsage().heapUsed
  for (let i = 0; i < n; i++) {
    const lock = await store.tryAcquireLock('memory', `k${i}`)
    if (lock) held.push(lock)
  }
  gc()
  const after = process.memoryUsage().heapUsed
  await store.close()
  return (after - before) / held.length
}

function summariseProcesses(result: ProcessContention) {
  const { perSecond, sameProcess, cpuMsPerSection, roundTripMs } = result
  return { perSecond, median: median(result.handoff), p99: p99(result.handoff), toOther: median(result.toOther), sameProcess, cpuMsPerSection, roundTripMs }
}

/** 2b: every contender across processes; the database's own lock queue where it has one. */
async function processes(): Promise<Record<string, ReturnType<typeof summariseProcesses>>> {
  const seconds = smoke ? 1 : 5
  const contenders: ProcessContender[] = [
    'worker-locks', ...(beforeDir() ? ['worker-locks before' as const] : []), 'verrou', ...(database === 'sqlite' ? [] : ['server' as const]),
  ]
  const out: Record<string, ReturnType<typeof summariseProcesses>> = {}
  for (const c of contenders) out[c === 'server' ? 'server lock queue' : c] = summariseProcesses(await acrossProcesses(database, c, seconds))
  return out
}

/** Runs `body` on a lock table of its own, dropped after. */
async function withLockTable(body: (knex: Knex, table: string) => Promise<void>): Promise<void> {
  const knex = connect(database, { poolMax: 4 })
  const table = uniqueName('wl_bench')
  await createLockTable(knex, { tableName: table })
  try {
    await body(knex, table)
  } finally {
    await dropLockTable(knex, { tableName: table })
    await knex.destroy()
  }
}

const uncontendedSamples = smoke ? 30 : database === 'sqlite' ? 5_000 : 1_500

/** Every section, printed as one JSON object. */
async function allSections(knex: Knex, table: string): Promise<void> {
  const result = {
    database,
    roundTripMs: await roundTrip(table),
    uncontended: await uncontended(database, knex, table, uncontendedSamples, LOCK_TIMEOUT),
    contention: await contention(table),
    processes: await processes(),
    renewal: Object.fromEntries(await Promise.all([])) as Record<string, unknown>,
    crowd: await crowd(knex, table),
    bytesPerLock: await memory(knex, table),
    readWrite: await readWriteSection(database, smoke),
    manyKeys: await manyKeysSection(database, smoke),
    wake: await wakeLatencySection(database, smoke),
  }
  for (const n of smoke ? [1, 100] : [1, 100, 10_000]) result.renewal[n] = await renewal(knex, table, n)
  console.log(JSON.stringify({
    ...result,
    uncontended: summariseSeries(result.uncontended),
    contention: Object.fromEntries(Object.entries(result.contention).map(([k, v]) => [k, { perSecond: v.perSecond, median: median(v.handoff), p99: p99(v.handoff) }])),
  }))
}

/** Median and p99 of each series. */
function summariseSeries(series: Record<string, number[]>): Record<string, { median: number; p99: number }> {
  return Object.fromEntries(Object.entries(series).map(([k, v]) => [k, { median: median(v), p99: p99(v) }]))
}

/** Section 1 alone. */
async function uncontendedOnly(knex: Knex, table: string): Promise<void> {
  const series = await uncontended(database, knex, table, uncontendedSamples, LOCK_TIMEOUT)
  console.log(JSON.stringify({ database, uncontended: summariseSeries(series) }))
}

/** Sections 2 and 2b alone. */
async function contentionOnly(_knex: Knex, table: string): Promise<void> {
  const inProcess = await contention(table)
  console.log(JSON.stringify({
    database, roundTripMs: await roundTrip(table), processes: await processes(),
    contention: Object.fromEntries(Object.entries(inProcess).map(([k, v]) => [k, { perSecond: v.perSecond, median: median(v.handoff), p99: p99(v.handoff) }])),
  }))
}

if (only === 'read-write') console.log(JSON.stringify({ database, readWrite: await readWriteSection(database, smoke) }))
else if (only === 'many-keys') console.log(JSON.stringify({ database, manyKeys: await manyKeysSection(database, smoke) }))
else if (only === 'wake') console.log(JSON.stringify({ database, wake: await wakeLatencySection(database, smoke) }))
else await withLockTable(only === 'uncontended' ? uncontendedOnly : only === 'contention' ? contentionOnly : allSections)
