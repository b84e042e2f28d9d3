// The public API through a real connection pooler (PgBouncer), in transaction and in session
// pooling mode, with both strategies: one body per (mode × strategy) pair. In transaction mode
// each transaction of a client connection may run on another server connection, shared with
// other clients, so nothing may rest on session state (named prepared statements, LISTEN,
// session advisory locks); whatever does shows up here as an error, a warning, a lock that is
// not released, or state left behind on the pooler's server connections.
//
// .ci/pgbouncer starts the poolers; PGBOUNCER_TRANSACTION_URL and PGBOUNCER_SESSION_URL point
// at them. A pooler that is not set or does not answer is a failure under CI=true, and otherwise
// a loud warning and a skipped test. (DIALECTS without postgres skips them as asked.)
import assert from 'node:assert/strict'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import type { Knex } from 'knex'
import pg from 'pg'
import { LockDatabaseError, LockStore, ManualClock, createLockTable, dropLockTable, type Lock, type LockStoreOptions } from '../src/index.js'
import { RecordingLogger } from './harness.mjs'
import { connect, inCI, uniqueName, type StrategyName, type Target } from './targets.mjs'
import { connectPostgres, describeError, unreachable as serverUnreachable } from './topology-helpers.mjs'
import { killChildren, startWorker } from './worker-process.mjs'

type PoolMode = 'transaction' | 'session'

const POOLERS: ReadonlyArray<{ mode: PoolMode; variable: string }> = [
  { mode: 'transaction', variable: 'PGBOUNCER_TRANSACTION_URL' },
  { mode: 'session', variable: 'PGBOUNCER_SESSION_URL' },
]

/**
 * Warnings a store may log through each kind of pooler, each at most once per store; any other
 * warning or error fails the test. A store whose connections go through a pooler never LISTENs
 * (through a transaction pooler a LISTEN would stay on a server session others share): it says
 * so, once, and its waiters poll instead.
 */
const NOT_DELIVERED = /releases announced on table "[^"]+" are not delivered to this process \(its connections go through a pooler\)/
const EXPECTED_WARNINGS: Record<PoolMode, readonly RegExp[]> = {
  transaction: [NOT_DELIVERED],
  session: [NOT_DELIVERED],
}


/** A guard against a hang, not a judgement of speed: the slowest test takes seconds. */
const TEST_TIMEOUT_MS = 300_000

// Promises nobody handled, anywhere in this process: each test asserts there were none.
const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => { unhandled.push(reason) })

/** Why the pooler at `url` cannot be used, or undefined when it answers. */
async function unreachable(variable: string, url: string | undefined): Promise<string | undefined> {
  if (!url) return `${variable} is not set (.ci/pgbouncer start runs the poolers; .ci/run sets it)`
  return serverUnreachable(variable, url, connectPostgres)
}

/**
 * Runs `sql` on the pooler's admin console (PgBouncer's `pgbouncer` database), with pg itself:
 * the console takes only its SHOW commands, not the `select version()` knex sends first.
 */
async function adminQuery(url: string, sql: string): Promise<Array<Record<string, unknown>>> {
  const admin = new URL(url)
  admin.pathname = '/pgbouncer'
  const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 3000 })
  await client.connect()
  try {
    return (await client.query(sql)).rows as Array<Record<string, unknown>>
  } finally {
    await client.end()
  }
}

/** The database name of a connection URL. */
const databaseOf = (url: string): string => decodeURIComponent(new URL(url).pathname.slice(1))

/** The pool of `url`'s database and user, as the pooler reports it. */
async function poolOf(url: string): Promise<{ poolSize: number; clients: number; servers: number }> {
  const database = databaseOf(url)
  const user = decodeURIComponent(new URL(url).username)
  const configured = (await adminQuery(url, 'SHOW DATABASES')).find((row) => row.name === database)
  const pool = (await adminQuery(url, 'SHOW POOLS')).find((row) => row.database === database && row.user === user)
  assert.ok(configured && pool, `the pooler at ${url} serves database ${database} for ${user}`)
  const count = (...columns: string[]): number => columns.reduce((sum, column) => sum + Number(pool[column] ?? 0), 0)
  return {
    poolSize: Number(configured.pool_size),
    clients: count('cl_active', 'cl_waiting'),
    servers: count('sv_active', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login'),
  }
}

/** One (pooling mode × strategy) pair: its lock table, and the connections and stores of the running test. */
class PoolerRun {
  readonly mode: PoolMode
  readonly url: string
  /** For test/worker-process.mts: the database, the strategy and the table a child process uses. */
  readonly target: Target
  readonly tableName = uniqueName('wl_pool')
  #knexes: Knex[] = []
  #stores: Array<{ store: LockStore; logger: RecordingLogger }> = []
  #names = 0

  constructor(mode: PoolMode, url: string, strategy: StrategyName) {
    this.mode = mode
    this.url = url
    this.target = { id: `postgres/${strategy}`, database: 'postgres', strategy }
    before(async () => {
      // Fresh server connections for this pair: what an earlier pair, or an earlier run against
      // the same pooler, left on them is not this pair's doing.
      await adminQuery(url, `RECONNECT ${databaseOf(url)}`)
      // The table is created and dropped through the pooler too, on a connection that is not
      // kept: an idle client of a session pooler would hold a server connection for the run.
      await this.#once((knex) => createLockTable(knex, { tableName: this.tableName }))
    })
    // A rejection left over from a test that failed half-way is that test's, not the next one's.
    beforeEach(() => { unhandled.length = 0 })
    afterEach(async () => {
      killChildren()
      await this.#closeAll()
    })
    after(() => this.#once((knex) => dropLockTable(knex, { tableName: this.tableName })))
  }

  async #once(work: (knex: Knex) => Promise<void>): Promise<void> {
    const knex = connect('postgres', { postgresUrl: this.url, poolMax: 1 })
    try {
      await work(knex)
    } finally {
      await knex.destroy()
    }
  }

  /** A knex instance of its own (its own pool of client connections) through the pooler; destroyed after the test. */
  connection(poolMax = 2): Knex {
    const knex = connect('postgres', { postgresUrl: this.url, poolMax })
    this.#knexes.push(knex)
    return knex
  }

  /** A store on this pair's table and strategy, on a knex instance of its own unless given one, with a recording logger. */
  store(options: LockStoreOptions = {}, knex: Knex = this.connection()): LockStore {
    const logger = new RecordingLogger()
    const store = new LockStore(knex, { tableName: this.tableName, strategy: this.target.strategy, logger, ...options })
    this.#stores.push({ store, logger })
    return store
  }

  /** The logger of a store made by {@link store}. */
  loggerOf(store: LockStore): RecordingLogger {
    const entry = this.#stores.find((s) => s.store === store)
    assert.ok(entry, 'a store of this run')
    return entry.logger
  }

  /** A lock name no other test uses. */
  lockName(label = 'lock'): string {
    return `${label}-${++this.#names}`
  }

  /**
   * Closes every store of the test (which must succeed) and its connections, then asserts that
   * no store logged a warning or an error (but those of {@link EXPECTED_WARNINGS}, once each)
   * and that no promise was left rejected unhandled. Every test ends with it.
   */
  async closeAndCheck(): Promise<void> {
    const stores = this.#stores
    const closing = await Promise.allSettled(stores.map(({ store }) => store.close()))
    await this.#closeAll()
    const failedCloses = closing.flatMap((c) => (c.status === 'rejected' ? [describeError(c.reason)] : []))
    assert.deepEqual(failedCloses, [], 'every store closed, its locks released')
    const unexpected: string[] = []
    for (const [index, { logger }] of stores.entries()) {
      const seen = new Map<RegExp, number>()
      for (const entry of logger.entries) {
        if (entry.level !== 'warn' && entry.level !== 'error') continue
        const expected = EXPECTED_WARNINGS[this.mode].find((pattern) => pattern.test(entry.message))
        if (expected && entry.level === 'warn') {
          seen.set(expected, (seen.get(expected) ?? 0) + 1)
          if (seen.get(expected) === 1) continue
        }
        const err = (entry.details as { err?: unknown }).err
        unexpected.push(`store ${index + 1} ${entry.level}: ${entry.message}${err === undefined ? '' : ` (${describeError(err)})`}`)
      }
    }
    assert.deepEqual(unexpected, [], 'no store logged a warning or an error')
    assert.deepEqual(unhandled.splice(0).map(describeError), [], 'no promise was left rejected unhandled')
  }

  async #closeAll(): Promise<void> {
    await Promise.allSettled(this.#stores.map(({ store }) => store.close()))
    this.#stores = []
    await Promise.allSettled(this.#knexes.map((k) => k.destroy()))
    this.#knexes = []
  }
}

/** Resolves on the first `refused` event of `store` for lock `name`. */
function refusedOnce(store: LockStore, name: string): Promise<void> {
  return new Promise((resolve) => {
    const off = store.on('refused', (event) => {
      if (event.name !== name) return
      off()
      resolve()
    })
  })
}

function poolerSuite(run: PoolerRun): void {
  const options = { timeout: TEST_TIMEOUT_MS }

  it('acquires, refuses another store, releases, acquires again; lists and force-releases', options, async () => {
    const a = run.store()
    const b = run.store()
    const name = run.lockName()
    const lock = await a.tryAcquireLock(name, 'k')
    assert.ok(lock)
    assert.equal(await b.tryAcquireLock(name, 'k'), null)
    assert.equal(await lock.isStillValid(), true)
    await lock.release()
    assert.equal(await lock.isStillValid(), false)

    const again = await b.tryAcquireLock(name, 'k')
    assert.ok(again)
    assert.ok(again.fence > lock.fence)
    assert.equal(await again.isStillValid(), true)
    assert.equal(await a.tryAcquireLock(name, 'k'), null)
    const listed = await a.listLocks({ name })
    assert.deepEqual(listed.map((l) => [l.name, l.key, l.instanceName, l.fence, l.mode, l.stale]),
      [[name, 'k', b.instanceName, again.fence, 'exclusive', false]])

    assert.equal(await a.forceRelease(name, 'k'), true)
    assert.equal(await again.isStillValid(), false)
    assert.deepEqual(await a.listLocks({ name }), [])
    const third = await a.tryAcquireLock(name, 'k')
    assert.ok(third && third.fence > again.fence)
    await third.release()
    await run.closeAndCheck()
  })

  it('keeps a lock through many renewals (ManualClock), refusing another store throughout', options, async () => {
    const clock = new ManualClock()
    // Both on the one clock: a store judges staleness by its own clock.
    const timings = { clock, lockTimeoutMs: 10_000, renewalIntervalMs: 2_000 }
    const holder = run.store(timings)
    const other = run.store(timings)
    const renewed: number[] = []
    holder.on('renewed', ({ count }) => renewed.push(count))
    const name = run.lockName('renewal')
    const lock = await holder.tryAcquireLock(name)
    assert.ok(lock)
    // Ten renewal intervals: twice the lease, so only renewals can have kept it.
    for (let step = 1; step <= 10; step++) {
      await clock.advance(2_000)
      assert.equal(await other.tryAcquireLock(name), null, `after ${step * 2_000} ms`)
    }
    assert.ok(renewed.length >= 5 && renewed.every((count) => count === 1), `renewed: ${JSON.stringify(renewed)}`)
    assert.equal(lock.lost, false)
    assert.equal(lock.signal.aborted, false)
    assert.equal(await lock.isStillValid(), true)
    const [row] = await other.listLocks({ name })
    assert.ok(row && !row.stale && row.ageMs <= 2_000, `renewed within the last interval: ${JSON.stringify(row, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`)
    await lock.release()
    await run.closeAndCheck()
  })

  it('waits for a lock another process holds and gets it, with a larger fence, once that process releases', options, async () => {
    const name = run.lockName('cross')
    // The child process (test/fixtures/hold-lock) connects through the same pooler.
    const worker = await startWorker(run, name, { POSTGRES_URL: run.url })
    // Through a pooler the store never listens: its waiters poll.
    const store = run.store()
    const [held] = await store.listLocks({ name })
    assert.ok(held && held.instanceName !== store.instanceName, 'the other process holds it')

    const refused = refusedOnce(store, name)
    const waiting = store.acquireLock(name, '', { timeoutMs: 60_000 })
    const ready = Promise.all([refused, run.loggerOf(store).waitFor('are not delivered')])
    await Promise.race([ready, waiting]) // a wait that fails at once fails here
    await worker.release()
    const lock = await waiting
    assert.ok(lock.fence > held.fence, `${lock.fence} > ${held.fence}`)
    assert.equal(await lock.isStillValid(), true)
    const saidDeaf = run.loggerOf(store).entries.filter((e) => NOT_DELIVERED.test(e.message)).length
    assert.equal(saidDeaf, 1, 'the waiting store says once that notifications cannot reach it')
    await lock.release()
    worker.child.stdin?.end()
    assert.equal((await worker.exited).code, 0, 'the other process ended cleanly')
    await run.closeAndCheck()
  })

  it('shares a read lock between readers, keeps a writer out until they release; multi-locks', options, async () => {
    const [a, b, c] = [run.store(), run.store(), run.store()]
    const name = run.lockName('rw')
    const first = await a.tryAcquireReadWriteLock(name, 'k', { write: false })
    const second = await b.tryAcquireReadWriteLock(name, 'k', { write: false })
    assert.ok(first && second, 'readers share')
    assert.deepEqual([first.mode, second.mode], ['read', 'read'])
    assert.equal(await c.tryAcquireReadWriteLock(name, 'k', { write: true }), null, 'no writer while a reader holds')
    assert.deepEqual((await c.listLocks({ name })).map((l) => [l.mode, l.holders]), [['read', 2], ['read', 2]])

    const refused = refusedOnce(c, name)
    const writing = c.acquireReadWriteLock(name, 'k', { write: true, timeoutMs: 60_000 })
    await Promise.race([refused, writing])
    await first.release()
    assert.equal(await c.tryAcquireReadWriteLock(name, 'k', { write: true }), null, 'one reader still holds')
    await second.release()
    const writer = await writing
    assert.equal(writer.mode, 'write')
    assert.equal(await a.tryAcquireReadWriteLock(name, 'k', { write: false }), null, 'no reader while the writer holds')
    await writer.release()

    // All or nothing, across names.
    const [x, y] = [run.lockName('multi-x'), run.lockName('multi-y')]
    const both = await a.tryAcquireMultiLock([{ name: x, write: true }, { name: y, write: false }])
    assert.ok(both)
    assert.equal(await b.tryAcquireMultiLock([{ name: y, write: false }, { name: x, write: false }]), null, 'x is written')
    assert.equal((await b.listLocks({ name: y })).length, 1, 'the refused multi-lock took nothing, not even y')
    const reader = await b.tryAcquireMultiLock([{ name: y, write: false }])
    assert.ok(reader, 'y is shared')
    await both.release()
    assert.equal(await c.tryAcquireMultiLock([{ name: x, write: true }, { name: y, write: true }]), null, 'y is read')
    await reader.release()
    const all = await c.tryAcquireMultiLock([{ name: x, write: true }, { name: y, write: true }])
    assert.ok(all)
    assert.equal(await all.isStillValid(), true)
    await all.release()
    await run.closeAndCheck()
  })

  it('runs many acquire/release cycles from stores on their own connections, one holder at a time', options, async () => {
    // More client connections (6 stores × 2, two loops each) than the transaction pooler has
    // server connections (4), so that consecutive statements of one client land on different
    // server connections, and one server connection serves several clients.
    const STORES = 6
    const LOOPS = 2
    const CYCLES = 100 // per loop: 6 × 2 × 100 = 1,200 attempts on 3 keys
    const KEYS = 3
    const name = run.lockName('contended')
    const holder = new Map<string, string>()
    const lastFence = new Map<string, bigint>()
    const lost: string[] = []
    let acquired = 0
    let refused = 0
    let poolDuringRun: Awaited<ReturnType<typeof poolOf>> | undefined
    const stores = Array.from({ length: STORES }, () => run.store())
    for (const store of stores) store.on('lost', (e) => lost.push(`${e.name}/${e.key}: ${e.reason}`))

    const cycle = async (store: LockStore, who: string, c: number): Promise<void> => {
      const key = `k${c % KEYS}`
      const lock: Lock | null = await store.tryAcquireLock(name, key)
      if (!lock) {
        refused++
        return
      }
      assert.equal(holder.get(key), undefined, `${who} got ${key} while ${holder.get(key)} holds it`)
      holder.set(key, who)
      assert.ok(lock.fence > (lastFence.get(key) ?? 0n), `fences of ${key} grow`)
      lastFence.set(key, lock.fence)
      acquired++
      if (c % 10 === 0) assert.equal(await lock.isStillValid(), true)
      holder.delete(key) // before the release: once released, another store may take it at once
      await lock.release()
    }
    await Promise.all(stores.flatMap((store, s) => Array.from({ length: LOOPS }, async (_, l) => {
      for (let c = 0; c < CYCLES; c++) {
        await cycle(store, `store ${s + 1} loop ${l + 1}`, c + s + l)
        if (s === 0 && l === 0 && c === CYCLES / 2) poolDuringRun = await poolOf(run.url)
      }
    })))

    assert.equal(acquired + refused, STORES * LOOPS * CYCLES)
    assert.ok(acquired > 0 && refused > 0, `contended: ${acquired} acquired, ${refused} refused`)
    assert.deepEqual(lost, [])
    assert.deepEqual(await stores[0]!.listLocks({ name }), [], 'every lock released')
    assert.ok(poolDuringRun)
    if (run.mode === 'transaction') {
      assert.ok(poolDuringRun.clients > poolDuringRun.servers,
        `the pooler shares server connections: ${poolDuringRun.clients} clients on ${poolDuringRun.servers} servers`)
    }
    await run.closeAndCheck()
  })

  it('cancels statements cut short by statementTimeoutMs through the pooler, which stays up', options, async () => {
    // A transaction on a direct connection keeps the lock table locked, so that each attempt
    // waits until its bound and the store sends the server a cancel, through the pooler. (A
    // client that hangs up on its cancel too early makes PgBouncer 1.18 exit on a fatal error.)
    const store = run.store({ statementTimeoutMs: 200 })
    await store.init()
    const direct = connect('postgres', { poolMax: 1 })
    try {
      const trx = await direct.transaction()
      try {
        await trx.raw('LOCK TABLE ?? IN ACCESS EXCLUSIVE MODE', [run.tableName])
        for (let i = 0; i < 3; i++) {
          const error = await store.tryAcquireLock(run.lockName('cancelled')).then(() => undefined, (e: unknown) => e)
          assert.ok(error instanceof LockDatabaseError, `attempt ${i + 1} was cut short by its bound: ${String(error)}`)
        }
      } finally {
        await trx.commit()
      }
    } finally {
      await direct.destroy()
    }
    const fresh = run.connection(1)
    assert.deepEqual((await fresh.raw('SELECT 1 AS one')).rows, [{ one: 1 }], 'the pooler still answers after the cancels')
    assert.ok(await store.tryAcquireLock(run.lockName('after')), 'the store works through the pooler again')
    await run.closeAndCheck()
  })

  it("leaves no session state on the pooler's server connections", options, async () => {
    // Every server connection of the pool, each held by one of as many concurrent transactions
    // (a pool has no more than poolSize), reports what a client left on it: named prepared
    // statements, LISTEN channels, session advisory locks. (A session pooler discards them when
    // its client disconnects; a transaction pooler hands them to the next client.)
    const { poolSize } = await poolOf(run.url)
    const knex = run.connection(poolSize)
    const reports: Array<{ pid: number; statements: string[]; channels: string[]; advisory: number }> = []
    let allIn: () => void = () => undefined
    const everyoneReported = new Promise<void>((resolve) => { allIn = resolve })
    await Promise.all(Array.from({ length: poolSize }, () => knex.transaction(async (trx) => {
      const { rows } = await trx.raw(`SELECT pg_backend_pid() AS pid,
          ARRAY(SELECT name::text FROM pg_prepared_statements ORDER BY 1) AS statements,
          ARRAY(SELECT pg_listening_channels()::text ORDER BY 1) AS channels,
          (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory`) as
        { rows: Array<{ pid: number; statements: string[]; channels: string[]; advisory: string }> }
      const row = rows[0]!
      reports.push({ pid: row.pid, statements: row.statements, channels: row.channels, advisory: Number(row.advisory) })
      if (reports.length === poolSize) allIn()
      await everyoneReported // keeps this server connection until every one has reported
    })))
    assert.equal(new Set(reports.map((r) => r.pid)).size, poolSize, 'every server connection of the pool reported')
    const leftOver = reports.filter((r) => r.statements.length > 0 || r.channels.length > 0 || r.advisory > 0)
    assert.deepEqual(leftOver, [], JSON.stringify(leftOver))
    await run.closeAndCheck()
  })
}

const postgresWanted = !process.env.DIALECTS?.trim() || process.env.DIALECTS.split(',').map((s) => s.trim()).includes('postgres')
if (!postgresWanted) {
  it('PgBouncer pooling: skipped, DIALECTS leaves out postgres', { skip: 'DIALECTS leaves out postgres' }, () => undefined)
} else {
  for (const { mode, variable } of POOLERS) {
    const url = process.env[variable]
    const reason = await unreachable(variable, url)
    if (reason !== undefined || url === undefined) {
      if (inCI) {
        it(`PgBouncer ${mode} pooling: pooler is reachable (CI=true)`, () => {
          throw new Error(`the ${mode}-mode pooler could not be used and CI=true forbids skipping it: ${reason}`)
        })
      } else {
        console.warn(`\n*** SKIPPED PgBouncer ${mode} pooling: ${reason}\n*** Run .ci/pgbouncer start and set ${variable}; CI=true makes this a failure.\n`)
        it(`PgBouncer ${mode} pooling: skipped, pooler not reachable`, { skip: reason }, () => undefined)
      }
      continue
    }
    for (const strategy of ['native', 'emulated'] as const) {
      describe(`postgres/${strategy} through PgBouncer in ${mode} pooling mode`, () => poolerSuite(new PoolerRun(mode, url, strategy)))
    }
  }
}
