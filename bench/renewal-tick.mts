// The cost of one renewal tick with N held locks, per database: worker-locks' batched renewal
// (one statement for all locks) against renewing each lock with its own UPDATE, as Synapse does.
// Prints a markdown table; the ratio in one run is the figure (absolute times on a shared
// machine are noise).
//
// Run: npm run bench:renewal [-- N]   (DIALECTS=sqlite,postgres,mysql picks databases)
import { performance } from 'node:perf_hooks'
import { LockStore, ManualClock, createLockTable, dropLockTable, type Lock } from '../src/index.js'
import { connect, resolveMatrix, uniqueName, type Database } from '../test/targets.mjs'

const N = Number(process.argv[2] ?? 10_000)
const ROUNDS = 5
const INTERVAL = 30_000

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN

async function measure(database: Database): Promise<string> {
  const knex = connect(database, { poolMax: 4 })
  const tableName = uniqueName('wl_bench')
  await createLockTable(knex, { tableName })
  try {
    const clock = new ManualClock()
    const store = new LockStore(knex, { tableName, clock, lockTimeoutMs: 120_000, renewalIntervalMs: INTERVAL })
    const locks: Lock[] = []
    for (let i = 0; i < N; i++) {
      const lock = await store.tryAcquireLock('bench', `key-${i}`)
      if (!lock) throw new Error('a fresh key was refused')
      locks.push(lock)
    }
    let statements = 0
    knex.on('query', () => { statements++ })
    const batched: number[] = []
    const perLock: number[] = []
    for (let round = 0; round < ROUNDS; round++) {
      // Interleaved, so that drift on the machine hits both alike.
      statements = 0
      let start = performance.now()
      await clock.advance(INTERVAL)
      batched.push(performance.now() - start)
      const batchedStatements = statements
      statements = 0
      start = performance.now()
      const now = clock.now()
      for (const lock of locks) {
        await knex(tableName).where({ lock_name: lock.name, lock_key: lock.key, token: lock.token }).update({ last_renewed_ts: now })
      }
      perLock.push(performance.now() - start)
      if (round === 0) console.error(`${database}: ${batchedStatements} statement(s) per batched tick, ${statements} per-lock`)
    }
    const live = locks.filter((l) => !l.signal.aborted).length
    if (live !== N) throw new Error(`${N - live} locks were lost during the benchmark`)
    await store.close()
    const b = median(batched)
    const p = median(perLock)
    return `| ${database} | ${N} | 1 | ${b.toFixed(1)} | ${N} | ${p.toFixed(1)} | ${(p / b).toFixed(1)}× |`
  } finally {
    await dropLockTable(knex, { tableName })
    await knex.destroy()
  }
}

const { targets, missing } = await resolveMatrix()
for (const m of missing) console.error(`skipped ${m.database}: ${m.reason}`)
const rows: string[] = []
for (const database of new Set(targets.map((t) => t.database))) rows.push(await measure(database))
console.log(`Renewal tick, ${N} held locks, median of ${ROUNDS} (Node ${process.version})\n`)
console.log('| database | locks | batched statements | batched ms | per-lock statements | per-lock ms | per-lock / batched |')
console.log('| --- | --- | --- | --- | --- | --- | --- |')
for (const row of rows) console.log(row)
