// Taking, refusing, releasing and re-taking locks; identity; contention inside and across stores.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { Lock, LockDatabaseError, LockStore, LockTableError, ManualClock } from '../../src/index.js'
import { database, findDialect } from '../../dialects/index.js'
import { isAcquire, statementsDuring, type Harness } from '../harness.mjs'

export function acquireSuite(h: Harness): void {
  it('resolves the requested strategy', async () => {
    const store = h.store()
    assert.equal(store.strategy, undefined)
    await store.init()
    assert.equal(store.strategy, h.target.strategy)
    assert.equal(store.dialect, h.target.database)
  })

  it('acquires, refuses while held, releases, and acquires again', async () => {
    const a = h.store()
    const b = h.store()
    const name = h.lockName()
    const lock = await a.tryAcquireLock(name, 'k')
    assert.ok(lock instanceof Lock)
    assert.equal(lock.name, name)
    assert.equal(lock.key, 'k')
    assert.match(lock.token, /^[0-9a-f-]{36}$/)
    assert.equal((await h.row(name, 'k'))?.token, lock.token)
    assert.equal(await b.tryAcquireLock(name, 'k'), null)
    assert.equal(await lock.isStillValid(), true)

    await lock.release()
    assert.equal(await h.row(name, 'k'), undefined)
    assert.equal(await lock.isStillValid(), false)
    await lock.release() // idempotent

    const again = await b.tryAcquireLock(name, 'k')
    assert.ok(again)
    assert.notEqual(again.token, lock.token)
    assert.equal(await a.tryAcquireLock(name, 'k'), null)
  })

  it('treats name and key as separate parts of the identity, with the empty key as default', async () => {
    const store = h.store()
    const name = h.lockName()
    const withDefault = await store.tryAcquireLock(name)
    assert.ok(withDefault)
    assert.equal(withDefault.key, '')
    assert.equal(await store.tryAcquireLock(name, ''), null)
    assert.ok(await store.tryAcquireLock(name, 'other'))
    assert.ok(await store.tryAcquireLock(`${name}-x`, ''))
  })

  it('compares names and keys exactly: case, trailing spaces and accents make different locks', async () => {
    const a = h.store()
    const b = h.store()
    const base = h.lockName('abc')
    const variants = [base, base.toUpperCase(), `${base} `, `à${base}`, `a\u0300${base}`]
    for (const name of variants) assert.ok(await a.tryAcquireLock(name, 'k'), `first acquire of ${JSON.stringify(name)}`)
    for (const name of variants) assert.equal(await b.tryAcquireLock(name, 'k'), null, `second acquire of ${JSON.stringify(name)}`)
    const keys = ['key', 'KEY', 'key ', 'kéy']
    for (const key of keys) assert.ok(await a.tryAcquireLock(base, key), `key ${JSON.stringify(key)}`)
  })

  it('stores 255-character names and keys, astral characters included, byte for byte', async () => {
    const store = h.store()
    const name = `${h.lockName()}-`.padEnd(200, 'n') + '😀'.repeat(55)
    const key = '🔒'.repeat(255)
    const lock = await store.tryAcquireLock(name, key)
    assert.ok(lock)
    const row = await h.knex(h.tableName).where({ lock_name: name, lock_key: key }).first('lock_name', 'lock_key')
    assert.ok(row)
    assert.equal(String(row.lock_name), name)
    assert.equal(String(row.lock_key), key)
    assert.equal(await h.store().tryAcquireLock(name, key), null)
  })

  it('gives exactly one of several concurrent calls in one store the lock', async () => {
    const store = h.store()
    for (let round = 0; round < 5; round++) {
      const name = h.lockName('race')
      const results = await Promise.all([1, 2, 3].map(() => store.tryAcquireLock(name, 'k')))
      assert.equal(results.filter((l) => l !== null).length, 1, `round ${round}`)
    }
  })

  it('takes a free lock in one statement (native; MySQL, without RETURNING, reads the fence in a second) and releases it in one', async () => {
    const store = h.store()
    await store.init()
    const dialect = findDialect(h.knex)!
    const { returning } = await dialect.detect(database(h.knex, dialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }))
    const name = h.lockName()
    const taking = await statementsDuring(h.knex, () => store.tryAcquireLock(name))
    const lock = taking.result
    assert.ok(lock)
    // The emulated path's transaction adds BEGIN and COMMIT, of kind "other".
    if (h.target.strategy === 'native') {
      assert.equal(taking.kinds.length, returning ? 1 : 2, taking.kinds.join(', '))
      assert.ok(isAcquire(taking.kinds[0] ?? ''), taking.kinds[0])
    } else {
      // Around them: the transaction's BEGIN and COMMIT, the prelude (PostgreSQL, MySQL) and the fence read back (MySQL).
      assert.deepEqual(taking.kinds.filter((kind) => kind === 'emulated-delete' || kind === 'emulated-insert'), ['emulated-delete', 'emulated-insert'])
    }
    const row = await h.knex(h.tableName).where({ lock_name: name, lock_key: '' }).first('fence')
    assert.equal(lock.fence, BigInt(row.fence))
    const releasing = await statementsDuring(h.knex, () => lock.release())
    assert.equal(releasing.kinds.length, 1, releasing.kinds.join(', '))
  })

  it('refuses a lock the same store holds while its row is valid, asking the database once', async () => {
    const store = h.store()
    const name = h.lockName()
    const held = await store.tryAcquireLock(name)
    assert.ok(held)
    const { result, queries } = await h.countQueries(h.knex, () => store.tryAcquireLock(name))
    assert.equal(result, null)
    assert.equal(queries, 1)
    assert.equal(held.lost, false)
    assert.equal(await held.isStillValid(), true)
  })

  it('acquires again a lock the same store holds once its row was forced out, and marks the old one lost', async () => {
    const store = h.store()
    const operator = h.store()
    const name = h.lockName()
    const events: string[] = []
    store.on('lost', (e) => events.push(`lost ${e.reason}`))
    store.on('released', () => events.push('released'))
    const old = await store.tryAcquireLock(name)
    assert.ok(old)
    assert.equal(await operator.forceRelease(name), true)
    const again = await store.tryAcquireLock(name)
    assert.ok(again, 'the row is gone: the attempt went to the database and won')
    assert.ok(again.fence > old.fence)
    assert.equal(old.lost, true)
    assert.equal((old.signal.reason as { reason?: string }).reason, 'taken-over')
    // Releasing the lost lock deletes nothing of the new one and reports no second end.
    await old.release()
    assert.equal((await h.row(name))?.token, again.token)
    assert.equal(await again.isStillValid(), true)
    assert.deepEqual(events, ['lost taken-over'])
  })

  it('acquires again a lock the same store holds once its lease ran out, and marks the old one expired', async () => {
    const store = h.store()
    const name = h.lockName()
    const old = await store.tryAcquireLock(name)
    assert.ok(old)
    await h.knex(h.tableName).where({ lock_name: name }).update({ last_renewed_ts: 0 })
    const again = await store.tryAcquireLock(name)
    assert.ok(again)
    assert.ok(again.fence > old.fence)
    assert.equal((old.signal.reason as { reason?: string }).reason, 'expired')
    assert.equal((await h.row(name))?.token, again.token, 'the stale row was taken over by its own store')
  })

  it('gives exactly one winner per round to stores on separate connections', async () => {
    const stores = [0, 1, 2, 3].map(() => h.store({}, h.connection({ poolMax: 2 })))
    for (let round = 0; round < 15; round++) {
      const name = h.lockName('contended')
      const locks = await Promise.all(stores.map((s) => s.tryAcquireLock(name, 'k')))
      const winners = locks.filter((l): l is Lock => l !== null)
      assert.equal(winners.length, 1, `round ${round}: ${winners.length} winners`)
      assert.equal((await h.row(name, 'k'))?.token, winners[0]?.token)
      await winners[0]?.release()
      const again = await Promise.all(stores.map((s) => s.tryAcquireLock(name, 'k')))
      assert.equal(again.filter((l) => l !== null).length, 1, `round ${round} after release`)
    }
  })

  it('lets a store with the same instance name take over at once (a restarted worker)', async () => {
    const clock = new ManualClock()
    const before = h.clockedStore(clock, { instanceName: 'worker-a' })
    const other = h.clockedStore(clock, { instanceName: 'worker-b' })
    const name = h.lockName()
    const old = await before.tryAcquireLock(name)
    assert.ok(old)
    assert.equal(await other.tryAcquireLock(name), null)

    const restarted = h.clockedStore(clock, { instanceName: 'worker-a' })
    const taken = await restarted.tryAcquireLock(name)
    assert.ok(taken)
    assert.equal(await taken.isStillValid(), true)
    assert.equal(await old.isStillValid(), false)
    assert.equal((await h.row(name))?.token, taken.token)
  })

  it('never lets a released or superseded Lock remove a newer one', async () => {
    const store = h.store()
    const name = h.lockName()
    const first = await store.tryAcquireLock(name)
    assert.ok(first)
    await first.release()
    const second = await store.tryAcquireLock(name)
    assert.ok(second)
    await first.release()
    await first[Symbol.asyncDispose]()
    assert.equal(await second.isStillValid(), true)
    assert.equal(await store.tryAcquireLock(name), null, 'the store still knows it holds the newer lock')
    assert.equal((await h.row(name))?.token, second.token)
  })

  it('releases on leaving an `await using` block', async () => {
    const store = h.store()
    const other = h.store()
    const name = h.lockName()
    {
      await using held = await store.tryAcquireLock(name)
      assert.ok(held)
      assert.equal(await other.tryAcquireLock(name), null)
    }
    assert.equal(await h.row(name), undefined)
    assert.ok(await other.tryAcquireLock(name))
  })

  it('releases every held lock on close() and refuses to acquire afterwards', async () => {
    const store = h.store()
    const other = h.store()
    const names = [h.lockName(), h.lockName(), h.lockName()]
    const locks = await Promise.all(names.map((n) => store.tryAcquireLock(n)))
    assert.ok(locks.every((l) => l !== null))
    await store.close()
    await store.close()
    for (const name of names) assert.ok(await other.tryAcquireLock(name), `${name} is free after close()`)
    await assert.rejects(store.tryAcquireLock(h.lockName()), { name: 'LockStoreClosedError', code: 'STORE_CLOSED' })
    assert.equal(await locks[0]?.isStillValid(), false)
  })

  it('releases a lock won while close() runs and tells the caller the store is closed', async () => {
    const store = h.store()
    const name = h.lockName()
    const pending = store.tryAcquireLock(name)
    const closing = store.close()
    await assert.rejects(pending, { name: 'LockStoreClosedError' })
    await closing
    assert.equal(await h.row(name), undefined)
  })

  it('takes over a row the database clock says is stale, and not a fresh one', async () => {
    const store = h.store({ lockTimeoutMs: 60_000, renewalIntervalMs: 10_000 })
    assert.equal(store.lockTimeoutMs, 60_000)
    const stale = h.lockName('stale')
    const fresh = h.lockName('fresh')
    const now = Date.now()
    await h.knex(h.tableName).insert([
      { lock_name: stale, lock_key: '', instance_name: 'elsewhere', token: 'old-token', last_renewed_ts: now - 5 * 60_000 },
      { lock_name: fresh, lock_key: '', instance_name: 'elsewhere', token: 'old-token', last_renewed_ts: now },
    ])
    const taken = await store.tryAcquireLock(stale)
    assert.ok(taken)
    assert.equal(await taken.isStillValid(), true)
    assert.equal(await store.tryAcquireLock(fresh), null)
  })

  it("stamps rows with this process's Date.now() under clock: 'local'", async () => {
    const store = h.store({ clock: 'local', lockTimeoutMs: 60_000, renewalIntervalMs: 10_000 })
    const name = h.lockName('local')
    const before = Date.now()
    assert.ok(await store.tryAcquireLock(name))
    const after = Date.now()
    const ts = (await h.row(name))?.last_renewed_ts ?? 0
    assert.ok(ts >= before && ts <= after, `${ts} within [${before}, ${after}]`)
    // A row stamped in the future by a worker whose clock runs ahead is fresh to this one.
    const ahead = h.lockName('ahead')
    await h.knex(h.tableName).insert({ lock_name: ahead, lock_key: '', instance_name: 'fast-clock', token: 't', last_renewed_ts: after + 10 * 60_000 })
    assert.equal(await store.tryAcquireLock(ahead), null)
  })

  it('gives up a lock whose acquiring statement outlasted the timeout', async () => {
    // A clock that jumps 7 s on every reading: the acquire seems to take longer than the 5 s lease.
    let now = 1_700_000_000_000
    const jumpy = { now: () => (now += 7_000), setTimeout: () => 0, clearTimeout: () => undefined }
    const store = h.store({ clock: jumpy, lockTimeoutMs: 5_000, renewalIntervalMs: 1_000 })
    const name = h.lockName('slow')
    assert.equal(await store.tryAcquireLock(name), null)
    assert.equal(await h.row(name), undefined, 'the row was deleted again')
  })

  it('says a missing table is missing, with the migrations to run, once and at once', async () => {
    const store = new LockStore(h.knex, { tableName: 'worker_locks_missing_table', strategy: h.target.strategy })
    const error = await store.tryAcquireLock('x').then(() => undefined, (e: unknown) => e)
    assert.ok(error instanceof LockTableError)
    assert.equal(error.code, 'TABLE_NOT_READY')
    assert.ok(error.cause instanceof Error, 'cause is the driver error')
    assert.match(error.message, /worker_locks_missing_table/)
    assert.match(error.message, /worker-locks migrate/)
    // Waiting does not retry it: it rejects as soon as the table is looked at.
    const waited = await store.acquireLock('x', '', { timeoutMs: 60_000 }).then(() => undefined, (e: unknown) => e)
    assert.ok(waited instanceof LockTableError)
    await store.close()
  })

  it('wraps other database failures in LockDatabaseError with the driver error as cause', async () => {
    const knex = h.connection()
    const store = new LockStore(knex, { tableName: h.tableName, strategy: h.target.strategy })
    await knex.destroy()
    const error = await store.tryAcquireLock('x').then(() => undefined, (e: unknown) => e)
    assert.ok(error instanceof LockDatabaseError)
    assert.equal(error.code, 'DATABASE_ERROR')
    assert.ok(error.cause instanceof Error, 'cause is the driver error')
    assert.match(error.message, new RegExp(h.tableName))
    await store.close()
  })
}
