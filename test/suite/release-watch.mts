// Wake-ups without announcements: a wait sees a release by another process, an expired lease or
// a row deleted by hand at its store's next look for releases, not at its next backoff attempt.
// Every waiter here has a backoff of ten minutes on a clock that moves only when the test says,
// so only a look can end its wait; the hang guard is real time.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { afterEach, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { ManualClock, type LockStore } from '../../src/index.js'
import { isAcquire, isLook, kindOf, type Harness } from '../harness.mjs'
import { killChildren, startWorker } from '../worker-process.mjs'

const PATIENT = { backoff: { initialDelayMs: 600_000, maxDelayMs: 600_000 } }
// A young wait looks every 50 ms; on PostgreSQL, once its listener is proven, every second.
const FIRST_LOOK_MS = 50

/** Settles with `outcome`, or fails after `ms` of real time: a wait that nothing woke. */
async function settles<T>(outcome: Promise<T>, what: string, ms = 10_000): Promise<T> {
  const guard = sleep(ms, 'hung' as const, { ref: false })
  const first = await Promise.race([outcome, guard])
  if (first === 'hung') throw new Error(`${what}: not woken within ${ms} ms of real time`)
  return first as T
}

/** Resolves once `store` has been refused once (its wait is asleep). */
function refusedOnce(store: LockStore): Promise<void> {
  return new Promise((resolve) => { const off = store.on('refused', () => { off(); setImmediate(resolve) }) })
}

export function releaseWatchSuite(h: Harness): void {
  // On PostgreSQL a release also announces itself; a hand-made change never does.
  const lookMs = h.target.database === 'postgres' ? 1_000 : FIRST_LOOK_MS
  afterEach(killChildren)

  it('wakes a wait when a holder in another process releases, at its next look', async () => {
    const name = h.lockName('watch-release')
    const worker = await startWorker(h, name)
    const clock = new ManualClock()
    const waiter = h.clockedStore(clock, PATIENT)
    const refused = refusedOnce(waiter)
    const outcome = waiter.acquireLock(name, { timeoutMs: 3_600_000 })
    await refused
    await worker.release()
    await clock.advance(FIRST_LOOK_MS)
    const lock = await settles(outcome, 'after the other process released')
    assert.equal((await h.row(name))?.token, lock.token)
    await lock.release()
  })

  it('wakes a reader when a writer in another process releases the read/write lock', async () => {
    const name = h.lockName('watch-rw')
    const worker = await startWorker(h, name, { WL_READ_WRITE: 'write' })
    const clock = new ManualClock()
    const waiter = h.clockedStore(clock, PATIENT)
    const refused = refusedOnce(waiter)
    const outcome = waiter.acquireReadWriteLock(name, '', { write: false, timeoutMs: 3_600_000 })
    await refused
    await worker.release()
    await clock.advance(FIRST_LOOK_MS)
    const lock = await settles(outcome, 'after the writer released')
    assert.equal(lock.mode, 'read')
    await lock.release()
  })

  it('wakes a reader kept out by a waiting writer once that writer gives up, while other readers hold', async () => {
    const name = h.lockName('watch-intent')
    const clock = new ManualClock()
    const reading = h.clockedStore(new ManualClock(clock.now()), { lockTimeoutMs: 3_600_000 })
    const held = await reading.tryAcquireReadWriteLock(name, '', { write: false })
    assert.ok(held)
    // A writer waits (refused by the reader): its intent keeps new readers out.
    const writer = h.clockedStore(new ManualClock(clock.now()), PATIENT)
    const giveUp = new AbortController()
    const writing = writer.acquireReadWriteLock(name, '', { write: true, timeoutMs: 3_600_000, signal: giveUp.signal })
    const writerEnded = assert.rejects(writing)
    const intents = h.connection().from(`${h.tableName}_rw_keys`).where({ lock_name: name }).whereNotNull('intent_token')
    await settles((async () => { while ((await intents.clone()).length === 0) await sleep(5) })(), 'the writer claiming its intent')
    const waiter = h.clockedStore(clock, PATIENT)
    const refused = refusedOnce(waiter)
    const outcome = waiter.acquireReadWriteLock(name, '', { write: false, timeoutMs: 3_600_000 })
    await refused
    await clock.advance(lookMs) // a look sees the reader and the intent: nothing to wake for
    giveUp.abort()
    await writerEnded // its intent is withdrawn before its wait settles
    assert.equal((await intents.clone()).length, 0)
    await clock.advance(lookMs) // the next look sees the reader alone: readers may come in
    const lock = await settles(outcome, 'after the waiting writer gave up')
    assert.equal(lock.mode, 'read')
    assert.equal(held.signal.aborted, false, 'the first reader still holds')
    await lock.release()
    await held.release()
  })

  it('wakes a wait when the holder stops renewing and its lease runs out, and when its row is deleted by hand', async () => {
    const clock = new ManualClock()
    // Their clocks never move: they never renew. One lease is clockedStore's 10 s, the other an hour.
    const stuck = h.clockedStore(new ManualClock(clock.now()))
    const kept = h.clockedStore(new ManualClock(clock.now()), { lockTimeoutMs: 3_600_000 })
    const expiring = h.lockName('watch-expiry')
    const deleted = h.lockName('watch-deleted')
    const first = await stuck.tryAcquireLock(expiring)
    assert.ok(first && await kept.tryAcquireLock(deleted))
    const waiter = h.clockedStore(clock, PATIENT)
    let refused = refusedOnce(waiter)
    const afterExpiry = waiter.acquireLock(expiring, { timeoutMs: 3_600_000 })
    await refused
    await clock.advance(10_000 - 1) // clockedStore's lease: still live
    await sleep(50) // an attempt a look might have started would settle by now
    assert.equal((await h.row(expiring))?.token, first.token, 'not taken before the lease ran out')
    await clock.advance(1_000) // the next look, once a wait 10 s old looks every 500 ms
    const taken = await settles(afterExpiry, 'after the lease ran out')
    assert.ok(taken.fence > first.fence)
    refused = refusedOnce(waiter)
    const afterDelete = waiter.acquireLock(deleted, { timeoutMs: 3_600_000 })
    await refused
    await h.connection().from(h.tableName).where({ lock_name: deleted, lock_key: '' }).delete()
    await clock.advance(lookMs)
    await settles(afterDelete, 'after the row was deleted by hand')
  })

  it('looks with one statement for all waits of a store, 20 times a second while they are young, and wakes none while their locks are held or change hands', async () => {
    const clock = new ManualClock()
    const holder = h.clockedStore(new ManualClock(clock.now()), { lockTimeoutMs: 3_600_000 })
    const names = Array.from({ length: 10 }, (_, i) => h.lockName(`watch-many-${i}`))
    for (const name of names) assert.ok(await holder.tryAcquireLock(name))
    const knex = h.connection({ poolMax: 1 })
    const waiter = h.clockedStore(clock, PATIENT, knex)
    await waiter.init()
    const kinds: string[] = []
    knex.on('query', (query: object) => { kinds.push(kindOf(query)) })
    let refusals = 0
    const allRefused = new Promise<void>((resolve) => { waiter.on('refused', () => { if (++refusals === names.length) setImmediate(resolve) }) })
    const waits = names.map((name) => waiter.acquireLock(name, { timeoutMs: 3_600_000 }))
    for (const wait of waits) wait.catch(() => undefined) // ended by close() below
    await allRefused
    kinds.length = 0
    await clock.advance(1_000)
    const looks = kinds.filter(isLook).length
    if (h.target.database === 'postgres') assert.ok(looks >= 1 && looks <= 20, `${looks} looks`)
    else assert.equal(looks, 20, 'one look every 50 ms for a second')
    assert.equal(kinds.filter(isAcquire).length, 0, `no attempts while nothing was released: ${kinds.join(', ')}`)
    assert.equal(kinds.length, looks, `one statement per look for ten waits: ${kinds.join(', ')}`)
    // Locks that change hands between two looks stay taken: waking their waits would only get them refused.
    const hand = h.connection()
    for (const name of names) await hand.from(h.tableName).where({ lock_name: name }).update({ token: randomUUID() })
    kinds.length = 0
    await clock.advance(1_000)
    assert.ok(kinds.length > 0, 'still looking')
    assert.equal(kinds.filter(isAcquire).length, 0, `no attempts after a change of holder: ${kinds.join(', ')}`)
    await waiter.close()
  })
}
