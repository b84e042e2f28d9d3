// Holding a lock over time, driven by ManualClock: renewal, stale takeover, leaks, errors.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { ManualClock, createLockTable, dropLockTable, type Lock, type LockStore } from '../../src/index.js'
import { uniqueName } from '../targets.mjs'
import { RecordingLogger, type Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs
const RENEWAL = 2_000

async function collectGarbage(until: () => boolean): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc
  assert.ok(gc, 'run the tests with node --expose-gc')
  // until() may deref a WeakRef, which keeps its target alive to the end of the current job, so
  // each collection runs in a fresh job after the check.
  for (let i = 0; i < 50; i++) {
    await new Promise((resolve) => setImmediate(resolve))
    gc()
    await new Promise((resolve) => setImmediate(resolve))
    if (until()) return
  }
}

export function renewalSuite(h: Harness): void {
  it('keeps a renewed lock for many timeouts, refusing another worker throughout', async () => {
    const clock = new ManualClock()
    const holder = h.clockedStore(clock)
    const other = h.clockedStore(clock)
    const name = h.lockName()
    const lock = await holder.tryAcquireLock(name)
    assert.ok(lock)
    const firstTs = (await h.row(name))?.last_renewed_ts
    for (let step = 0; step < 20; step++) {
      await clock.advance(TIMEOUT / 2)
      assert.equal(await other.tryAcquireLock(name), null, `after ${(step + 1) * TIMEOUT / 2} ms`)
    }
    assert.equal(await lock.isStillValid(), true)
    assert.equal((await h.row(name))?.last_renewed_ts, (firstTs ?? 0) + 20 * (TIMEOUT / 2), "renewed at the last tick")
  })

  it('lets another worker take over from a stuck holder once the timeout has passed', async () => {
    const stuckClock = new ManualClock() // never advanced: the holder's renewals never run
    const clock = new ManualClock()
    const holder = h.clockedStore(stuckClock)
    const other = h.clockedStore(clock)
    const name = h.lockName()
    const lock = await holder.tryAcquireLock(name)
    assert.ok(lock)
    await clock.advance(TIMEOUT)
    assert.equal(await other.tryAcquireLock(name), null, 'exactly at the timeout it is not yet stale')
    await clock.advance(1)
    const taken = await other.tryAcquireLock(name)
    assert.ok(taken)
    assert.equal(await lock.isStillValid(), false)
    assert.equal(await taken.isStillValid(), true)
  })

  it('judges staleness by the lease the holder wrote, whatever the taker\'s own timeout', async () => {
    const stuckClock = new ManualClock() // never advanced: the holder writes its row once
    const clock = new ManualClock(stuckClock.now())
    const holder = h.store({ clock: stuckClock, lockTimeoutMs: 60_000, renewalIntervalMs: 15_000 })
    const renewing = h.store({ clock, lockTimeoutMs: 60_000, renewalIntervalMs: 15_000 })
    const hasty = h.store({ clock, lockTimeoutMs: 1_000, renewalIntervalMs: 250 })
    const name = h.lockName('lease')
    const renewedName = h.lockName('lease-renewed')
    const lock = await holder.tryAcquireLock(name)
    const renewed = await renewing.tryAcquireLock(renewedName)
    assert.ok(lock && renewed)
    // Long past the hasty store's own 1 s, within the holders' 60 s.
    await clock.advance(59_000)
    assert.equal(await hasty.tryAcquireLock(name), null, 'the holder\'s 60 s lease has not run out')
    assert.deepEqual((await hasty.listLocks({ name })).map((r) => [r.stale, r.leaseMs]), [[false, 60_000]])
    // The renewing holder keeps its lock as long as it renews on its own schedule.
    await clock.advance(120_000)
    assert.equal(await hasty.tryAcquireLock(renewedName), null, 'a holder renewing every 15 s keeps its lock')
    assert.equal(renewed.signal.aborted, false)
    // The stuck holder's own lease has run out now: anyone may take it, the hasty store too.
    assert.equal((await hasty.listLocks({ name }))[0]?.stale, true)
    const taken = await hasty.tryAcquireLock(name)
    assert.ok(taken && taken.fence > lock.fence)
    assert.equal(await lock.isStillValid(), false)
    // The row now carries the hasty store's 1 s lease, which others judge it by in turn.
    assert.deepEqual((await renewing.listLocks({ name })).map((r) => r.leaseMs), [1_000])
  })

  it('stops renewing a lock whose row was taken over, and leaves the new holder alone', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const stuckClock = new ManualClock()
    const holder = h.clockedStore(stuckClock, { logger })
    const name = h.lockName()
    const lock = await holder.tryAcquireLock(name)
    assert.ok(lock)
    await clock.advance(TIMEOUT + 1)
    const taken = await h.clockedStore(clock).tryAcquireLock(name)
    assert.ok(taken)
    await stuckClock.advance(RENEWAL) // the holder's renewal runs now and finds another token
    assert.equal((await h.row(name))?.token, taken.token)
    assert.ok(logger.at('warn').some((m) => m.includes('was lost')), 'the loss is logged')
    assert.ok(await holder.tryAcquireLock(`${name}-unrelated`), 'the store still works')
    assert.equal(await holder.tryAcquireLock(name), null, 'it asks the database, which says no')
  })

  it('reports renewal failures to the logger, retries sooner, and never rejects', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const tableName = uniqueName('wl_fail')
    await createLockTable(h.knex, { tableName })
    const store = h.clockedStore(clock, { logger, tableName })
    const lock = await store.tryAcquireLock(h.lockName())
    assert.ok(lock)
    await dropLockTable(h.knex, { tableName }) // every statement of this store now fails
    const failures = () => logger.at('warn').filter((m) => m.includes('renewing 1 lock(s) failed')).length
    await clock.advance(RENEWAL)
    assert.equal(failures(), 1)
    await clock.advance(RENEWAL / 4)
    assert.equal(failures(), 2, 'the retry comes a quarter interval later')
    assert.equal(lock.signal.aborted, false, 'failures inside the lease do not abort')
    // The table is gone, and the errors say so (a LockTableError is the LockError for that).
    await assert.rejects(lock.release(), { name: 'LockTableError' })
    await assert.rejects(store.close(), { name: 'LockTableError' })
    await createLockTable(h.knex, { tableName }) // the database is back
    await store.close() // and a second close() retries the delete
    await dropLockTable(h.knex, { tableName })
  })

  it('stops renewing a Lock that was garbage-collected unreleased, and logs it as an error', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const store = h.clockedStore(clock, { logger })
    const name = h.lockName('leak')
    await (async () => { assert.ok(await store.tryAcquireLock(name)) })()
    await collectGarbage(() => logger.at('error').length > 0)
    assert.equal(logger.at('error').length, 1, 'the leak was reported once')
    assert.match(logger.at('error')[0] ?? '', /garbage-collected without release/)
    const ts = (await h.row(name))?.last_renewed_ts
    await clock.advance(RENEWAL * 3)
    assert.equal((await h.row(name))?.last_renewed_ts, ts, 'no renewal after the leak')
    await clock.advance(TIMEOUT)
    assert.ok(await h.clockedStore(clock).tryAcquireLock(name), 'the row timed out')
  })

  it('does not keep an unreleased Lock alive through renewal bookkeeping', async () => {
    const clock = new ManualClock()
    const store: LockStore = h.clockedStore(clock)
    let ref: WeakRef<Lock> | undefined
    await (async () => {
      const lock = await store.tryAcquireLock(h.lockName('weak'))
      assert.ok(lock)
      ref = new WeakRef(lock)
    })()
    await clock.advance(RENEWAL) // a renewal pass must not pin it
    await collectGarbage(() => ref?.deref() === undefined)
    assert.equal(ref?.deref(), undefined)
  })

  it('collects a dropped Lock even when its signal has a listener that refers to it', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const store = h.clockedStore(clock, { logger })
    let ref: WeakRef<Lock> | undefined
    await (async () => {
      const lock = await store.tryAcquireLock(h.lockName('listener'))
      assert.ok(lock)
      lock.signal.addEventListener('abort', () => { void lock.release() })
      ref = new WeakRef(lock)
    })()
    await collectGarbage(() => ref?.deref() === undefined && logger.at('error').length > 0)
    assert.equal(ref?.deref(), undefined)
    assert.match(logger.at('error')[0] ?? '', /garbage-collected without release/)
  })

  it('renews with one timer per store, which runs out without a statement once nothing is held', async () => {
    const clock = new ManualClock()
    const store = h.clockedStore(clock)
    assert.equal(clock.pendingTimers, 0)
    const locks = await Promise.all([h.lockName(), h.lockName(), h.lockName()].map((n) => store.tryAcquireLock(n)))
    assert.equal(clock.pendingTimers, 1)
    await clock.advance(RENEWAL)
    assert.equal(clock.pendingTimers, 1)
    for (const lock of locks) await lock?.release()
    // Left to run out rather than cleared, so that taking and releasing locks one after another
    // does not set and clear a timer each time; it finds nothing to renew and sets no other.
    assert.equal(clock.pendingTimers, 1)
    const { queries } = await h.countQueries(h.knex, () => clock.advance(RENEWAL))
    assert.equal(queries, 0)
    assert.equal(clock.pendingTimers, 0)
    // The next lock starts the timer again.
    const again = await store.tryAcquireLock(h.lockName())
    assert.equal(clock.pendingTimers, 1)
    await again?.release()
  })
}
