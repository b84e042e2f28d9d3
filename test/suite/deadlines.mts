// Deadlines: a wait ends at its deadline or signal, and a statement at its bound, even while
// another session holds the lock table or the pool has no free connection. Each test lets the
// blocker go only after the call under test has settled: a call that waited for it would never
// settle, and the test would fail by its timeout.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import type { Knex } from 'knex'
import { LockDatabaseError, LockTimeoutError, ManualClock, type LockStore } from '../../src/index.js'
import { StatementTimeoutError } from '../../dialects/index.js'
import { isAcquire, kindOf, type Harness } from '../harness.mjs'
import { serverPort } from '../targets.mjs'
import { TcpProxy } from '../tcp-proxy.mjs'

/** Another session holds the whole lock table (or `table`) until `release()`. */
async function blockTable(h: Harness, table = h.tableName): Promise<{ release(): Promise<void> }> {
  const knex = h.connection({ poolMax: 1 }) // one connection: its session holds the lock
  switch (h.target.database) {
    case 'postgres': {
      const trx = await knex.transaction()
      await trx.raw('LOCK TABLE ?? IN ACCESS EXCLUSIVE MODE', [table])
      return { release: async () => { await trx.commit() } }
    }
    case 'mysql':
      await knex.raw('LOCK TABLES ?? WRITE', [table])
      return { release: async () => { await knex.raw('UNLOCK TABLES') } }
    case 'sqlite':
      await knex.raw('BEGIN IMMEDIATE') // the database's write lock
      return { release: async () => { await knex.raw('COMMIT') } }
  }
}

/** Resolves once `knex` has sent a statement of an acquisition (of a kind `of` accepts). */
function attempting(knex: Knex, of: (kind: string) => boolean = isAcquire): Promise<void> {
  return new Promise((resolve) => {
    const seen = (query: object): void => {
      if (!of(kindOf(query))) return
      knex.off('query', seen)
      resolve()
    }
    knex.on('query', seen)
  })
}

/** A store on a pool of its own (so that its statements can be watched), driven by `clock`. */
function storeOf(h: Harness, clock: ManualClock, options: Parameters<Harness['store']>[0] = {}, poolMax = 2): { store: LockStore; knex: Knex } {
  const knex = h.connection({ poolMax })
  return { store: h.clockedStore(clock, options, knex), knex }
}

export function deadlinesSuite(h: Harness): void {
  // A cancel travels on a connection of its own and may arrive after the statement it was sent
  // for has ended anyway: it must not stop the next statement on that connection. A read/write
  // acquisition runs in a transaction (PostgreSQL's native strategy: one statement), whose
  // connection knex gives back when the transaction ends. A proxy holds the cancel back.
  it('keeps a cancel that comes late away from the next statements on the connection', {
    skip: h.target.database === 'sqlite' && 'SQLite cancels nothing (a bound caps its busy timeout)', timeout: 60_000,
  }, async () => {
    if (h.target.database === 'sqlite') return
    const proxy = await TcpProxy.start(serverPort(h.target.database))
    try {
      const knex = h.connection({ poolMax: 1, port: proxy.port })
      const store = h.store({}, knex)
      await store.init()
      const name = h.lockName('late-cancel')
      const blocker = await blockTable(h, `${h.tableName}_rw_keys`)
      const controller = new AbortController()
      const sent = attempting(knex, (kind) => kind.startsWith('rw-key') || kind === 'rw-acquire')
      const outcome = store.acquireReadWriteLock(name, '', { write: true, signal: controller.signal }).then(() => 'acquired', (error: unknown) => error)
      await sent
      proxy.delayConnections(300)
      controller.abort(new Error('gave up'))
      await blocker.release() // the statement ends on its own, before its cancel arrives
      assert.equal((await outcome as Error).message, 'gave up')
      proxy.delayConnections(0)
      // The lock the attempt won after its wait ended is released, then the session sleeps: on the one connection of the pool.
      const sleep = h.target.database === 'postgres' ? 'SELECT 0 AS cut FROM pg_sleep(0.6)' : 'SELECT SLEEP(0.6) AS cut'
      const rows = (await knex.raw(sleep) as { rows?: Array<{ cut: unknown }> } & Array<Array<{ cut: unknown }>>)
      assert.equal(Number(h.target.database === 'postgres' ? rows.rows?.[0]?.cut : rows[0]?.[0]?.cut), 0, 'the statement after ran to its end')
      await store.close()
      assert.deepEqual(await h.knex(`${h.tableName}_rw_holders`).where({ lock_name: name }).select('token'), [], 'nothing is held')
    } finally {
      await proxy.close()
    }
  })

  it('ends a wait at its deadline while another session holds the lock table, saying what held it up, and holds nothing', { timeout: 60_000 }, async () => {
    const clock = new ManualClock()
    const { store, knex } = storeOf(h, clock)
    await store.init()
    const name = h.lockName('blocked')
    const blocker = await blockTable(h)
    const sent = attempting(knex)
    const outcome = store.acquireLock(name, '', { timeoutMs: 2_000 }).then(() => 'acquired', (error: unknown) => error)
    await sent
    await clock.advance(2_000)
    const error = await outcome
    await blocker.release()
    assert.ok(error instanceof LockTimeoutError, String(error))
    // PostgreSQL and MySQL cancel the blocked statement; SQLite waited for the other writer only until the deadline.
    assert.ok(error.cause instanceof LockDatabaseError, `the cause says what held the attempt up: ${String(error.cause)}`)
    assert.ok(error.cause.cause instanceof StatementTimeoutError, `an attempt stopped at its bound, not one the database failed: ${String(error.cause.cause)}`)
    await store.close()
    assert.equal(await h.row(name), undefined, 'nothing is held')
  })

  it('ends a wait when its signal aborts while another session holds the lock table', { timeout: 60_000 }, async () => {
    const clock = new ManualClock()
    const { store, knex } = storeOf(h, clock)
    await store.init()
    const name = h.lockName('aborted')
    const blocker = await blockTable(h)
    const controller = new AbortController()
    const sent = attempting(knex)
    const outcome = store.acquireLock(name, '', { signal: controller.signal }).then(() => 'acquired', (error: unknown) => error)
    await sent
    controller.abort(new Error('gave up'))
    const error = await outcome
    await blocker.release()
    assert.equal((error as Error).message, 'gave up')
    await store.close()
    assert.equal(await h.row(name), undefined, 'nothing is held')
  })

  it('ends a wait at its deadline while the application holds every connection of the pool', { timeout: 60_000 }, async () => {
    const clock = new ManualClock()
    const { store, knex } = storeOf(h, clock, {}, 1)
    const name = h.lockName('pool')
    const trx = await knex.transaction() // the only connection
    const outcome = store.acquireLock(name, '', { timeoutMs: 2_000 }).then(() => 'acquired', (error: unknown) => error)
    await new Promise((resolve) => setImmediate(resolve))
    await clock.advance(2_000)
    const error = await outcome
    await trx.commit()
    assert.ok(error instanceof LockTimeoutError, String(error))
    assert.match(String((error.cause as Error | undefined)?.message), /no connection of knex's pool|still under way/)
    await store.close() // waits for the attempt still under way, and releases what it won
    assert.equal(await h.row(name), undefined, 'nothing is held')
    assert.ok(await h.store().tryAcquireLock(name))
  })

  it('bounds a try by statementTimeoutMs while another session holds the lock table', { timeout: 60_000 }, async () => {
    const { store } = storeOf(h, new ManualClock(), { statementTimeoutMs: 200 })
    await store.init()
    const name = h.lockName('bounded')
    const blocker = await blockTable(h)
    const outcome = store.tryAcquireLock(name).then(() => 'settled', (error: unknown) => error)
    const error = await outcome
    await blocker.release()
    assert.ok(error instanceof LockDatabaseError, String(error))
    assert.ok(await store.tryAcquireLock(name), 'nothing was left behind')
  })
}
