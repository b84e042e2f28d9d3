// Keeping a lock taken after its release (release({ keepForMs }), withLock's minHoldMs): a job
// started by several hosts on one schedule runs once per slot. Driven by ManualClock.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockLostError, ManualClock, type LockStore } from '../../src/index.js'
import type { Harness } from '../harness.mjs'

export function keepingSuite(h: Harness): void {
  /** The row of `name` as listLocks shows it to `store`. */
  const listed = async (store: LockStore, name: string) => (await store.listLocks({ name }))[0]

  it('release({ keepForMs }) leaves the lock taken by no one, not renewed, until keepForMs later, then anyone may take it', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock, { instanceName: 'host-a' })
    const b = h.clockedStore(clock)
    const name = h.lockName()
    const lock = await a.tryAcquireLock(name)
    assert.ok(lock)
    await clock.advance(1_000)
    await lock.release({ keepForMs: 5_000 })
    assert.equal(lock.signal.aborted, true)
    assert.equal((lock.signal.reason as LockLostError).reason, 'released')
    assert.equal(await lock.isStillValid(), false)
    const kept = await listed(b, name)
    assert.equal(kept?.instanceName, '')
    assert.equal(kept?.leaseMs, 5_000)
    assert.equal(kept?.stale, false)
    assert.notEqual((await h.row(name))?.token, lock.token)
    // An empty instanceName filter lists exactly the kept rows.
    const other = await a.tryAcquireLock(h.lockName())
    assert.ok(other)
    assert.deepEqual((await b.listLocks({ instanceName: '' })).filter((l) => l.name === name || l.name === other.name).map((l) => l.name), [name])
    await other.release()

    // Nobody may take it meanwhile: not another store, not the releasing store, not a restarted
    // worker with the same instance name (which could take over its own live row).
    await clock.advance(4_000) // two renewal intervals: nothing renews the kept row
    assert.equal((await listed(b, name))?.lastRenewedAt.getTime(), kept?.lastRenewedAt.getTime())
    assert.equal(await b.tryAcquireLock(name), null)
    assert.equal(await a.tryAcquireLock(name), null)
    assert.equal(await h.clockedStore(clock, { instanceName: 'host-a' }).tryAcquireLock(name), null)
    await clock.advance(1_000) // exactly keepForMs after the release: its last millisecond
    assert.equal(await b.tryAcquireLock(name), null)
    await clock.advance(1)
    const next = await b.tryAcquireLock(name)
    assert.ok(next)
    assert.ok(next.fence > lock.fence)
  })

  it('release({ keepForMs: 0 }) frees the lock at once, as release() does', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const name = h.lockName()
    const lock = await a.tryAcquireLock(name)
    assert.ok(lock)
    await lock.release({ keepForMs: 0 })
    assert.equal(await h.row(name), undefined)
    assert.ok(await h.clockedStore(clock).tryAcquireLock(name))
  })

  it('withLock with minHoldMs keeps a quick section\'s lock until minHoldMs after fn was called, and emits released once', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const b = h.clockedStore(clock)
    const name = h.lockName()
    const released: number[] = []
    a.on('released', ({ heldMs }) => released.push(heldMs))
    const value = await a.withLock(name, async () => {
      await clock.advance(1_000)
      return 'done'
    }, { minHoldMs: 5_000, timeoutMs: 0 })
    assert.equal(value, 'done')
    assert.deepEqual(released, [1_000])
    assert.equal((await listed(b, name))?.leaseMs, 4_000)
    await clock.advance(4_000)
    assert.equal(await b.tryAcquireLock(name), null)
    await clock.advance(1)
    assert.ok(await b.tryAcquireLock(name))
  })

  it('tryWithLock with minHoldMs keeps the lock when fn throws, and rethrows', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const name = h.lockName()
    await assert.rejects(a.tryWithLock(name, 'k', () => { throw new Error('job failed') }, { minHoldMs: 3_000 }), /job failed/)
    const [kept] = await a.listLocks({ name, key: 'k' })
    assert.equal(kept?.instanceName, '')
    assert.equal(kept?.leaseMs, 3_000)
    assert.deepEqual(await a.tryWithLock(name, 'k', () => 'again'), { acquired: false })
    await clock.advance(3_001)
    assert.deepEqual(await a.tryWithLock(name, 'k', () => 'again'), { acquired: true, value: 'again' })
  })

  it('a section that outlasts minHoldMs releases its lock as usual', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const name = h.lockName()
    await a.withLock(name, async () => { await clock.advance(6_000) }, { minHoldMs: 5_000 })
    assert.equal(await h.row(name), undefined)
  })

  it('keepForMs on a lock already lost leaves the new holder\'s row alone', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const b = h.clockedStore(clock, { instanceName: 'host-b' })
    const name = h.lockName()
    const lock = await a.tryAcquireLock(name)
    assert.ok(lock)
    assert.equal(await b.forceRelease(name, ''), true)
    const theirs = await b.tryAcquireLock(name)
    assert.ok(theirs)
    await lock.release({ keepForMs: 60_000 })
    const row = await h.row(name)
    assert.equal(row?.token, theirs.token)
    assert.equal(row?.instance_name, 'host-b')
  })

  it('refuses bad keepForMs and minHoldMs with a typed error before any SQL, keeping the lock held', async () => {
    const store = h.store()
    const name = h.lockName()
    const lock = await store.tryAcquireLock(name)
    assert.ok(lock)
    const bad: Array<[unknown, typeof TypeError | typeof RangeError]> = [
      [{ keepForMs: -1 }, RangeError], [{ keepForMs: 2 ** 31 }, RangeError], [{ keepForMs: 1.5 }, TypeError],
      [{ keepForMs: '5000' }, TypeError], [{ keepForMs: null }, TypeError], [{ keepFor: 5000 }, TypeError], [null, TypeError], [5000, TypeError],
    ]
    const { queries } = await h.countQueries(h.knex, async () => {
      for (const [options, type] of bad) await assert.rejects(lock.release(options as never), type, JSON.stringify(options))
      await assert.rejects(store.withLock(name, 'other', () => 1, { minHoldMs: -1 }), RangeError)
      await assert.rejects(store.withLock(name, () => 1, { minHoldMs: '1' } as never), TypeError)
      await assert.rejects(store.tryWithLock(name, 'other', () => 1, { timeoutMs: 5 } as never), /Unknown tryWithLock option "timeoutMs"/)
      await assert.rejects(store.tryWithLock(name, () => 1, { minHoldMs: 1.5 }), TypeError)
    })
    assert.equal(queries, 0)
    assert.equal(lock.signal.aborted, false)
    assert.equal((await h.row(name))?.token, lock.token)
  })
}
