// Read/write locks and all-or-nothing multi-locks: many readers or one writer per (name, key), in
// a namespace of their own; fences per key; a waiting writer that keeps new readers out; renewal,
// takeover, close() and forceRelease as for plain locks. Time is driven by ManualClock.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  InvalidLockNameError, LockLostError, LockStoreClosedError, LockTimeoutError, ManualClock, MultiLock,
  type Lock, type LockStore, type MultiLockPart,
} from '../../src/index.js'
import { statementsDuring, type Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs
const RENEWAL = 2_000
// A waiting writer's intent lasts 2 * backoff.maxDelayMs + 1000 ms after its last attempt (default maxDelayMs 5000).
const INTENT = 2 * 5_000 + 1_000
// Tests that wait for something guard against hanging the run if it never comes.
const GUARD = { timeout: 60_000 }

const READ = { write: false } as const
const WRITE = { write: true } as const

/** Resolves once `condition` holds, checking between turns of the event loop; fails after 20 s. */
async function until(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`gave up waiting until ${what}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** The reason a lock's (or multi-lock's) signal aborted with, checked to be a LockLostError. */
function lossOf(signal: AbortSignal): LockLostError {
  assert.equal(signal.aborted, true, 'the signal is aborted')
  assert.ok(signal.reason instanceof LockLostError, 'the reason is a LockLostError')
  return signal.reason
}

/** How a promise stands right now (after letting pending reactions run). */
async function stateOf(promise: Promise<unknown>): Promise<'pending' | 'fulfilled' | 'rejected'> {
  let state: 'pending' | 'fulfilled' | 'rejected' = 'pending'
  promise.then(() => { state = 'fulfilled' }, () => { state = 'rejected' })
  await new Promise((resolve) => setImmediate(resolve))
  return state
}

export function readWriteSuite(h: Harness): void {
  const keysTable = (): string => `${h.tableName}_rw_keys`
  const holdersTable = (): string => `${h.tableName}_rw_holders`

  /** The intent token on a key row, or null (no row, or no intent). */
  const intentOf = async (name: string, key: string): Promise<string | null> => {
    const row = await h.knex(keysTable()).where({ lock_name: name, lock_key: key }).first('intent_token') as { intent_token: unknown } | undefined
    return row?.intent_token == null ? null : String(row.intent_token)
  }

  /** How many holder rows (read/write) carry `name`. */
  const holderRows = async (name: string): Promise<number> => {
    const [row] = await h.knex(holdersTable()).where({ lock_name: name }).count({ n: '*' }) as Array<{ n: unknown }>
    return Number(row?.n)
  }

  /**
   * Starts `store.acquireReadWriteLock(name, key, options)` and resolves once it has been refused
   * and is asleep between attempts (its timer is set on `clock`, so whatever it does after a
   * refusal, such as claiming its intent, has finished). The wait is boxed so that awaiting this
   * does not await it.
   */
  /**
   * Three stores on one ManualClock (the writers' on `writerClock` if given) and a reader of
   * `(name, 'k')` holding it: the start of every writer-priority scenario.
   */
  async function readerHolds(label: string, writerClock?: ManualClock) {
    const clock = new ManualClock()
    const readers = h.clockedStore(clock)
    const writers = h.clockedStore(writerClock ?? clock)
    const late = h.clockedStore(clock)
    const name = h.lockName(label)
    const r1 = await readers.tryAcquireReadWriteLock(name, 'k', READ)
    assert.ok(r1)
    return { clock, readers, writers, late, name, r1 }
  }

  async function asleepWaiting(store: LockStore, clock: ManualClock, name: string, key: string, options: Parameters<LockStore['acquireReadWriteLock']>[2]): Promise<{ lock: Promise<Lock>; refusals: () => number }> {
    let refusals = 0
    store.on('refused', (e) => { if (e.name === name && e.key === key) refusals++ })
    const lock = store.acquireReadWriteLock(name, key, options)
    lock.catch(() => undefined) // awaited by the test; a failed assertion must not leave it unhandled
    const timers = clock.pendingTimers // the timeout's timer, if any, is set by now
    await until(() => refusals >= 1 && clock.pendingTimers > timers, 'the waiter was refused and fell asleep')
    return { lock, refusals: () => refusals }
  }

  /** As {@link asleepWaiting}, for a multi-lock. */
  async function asleepMulti(store: LockStore, clock: ManualClock, parts: MultiLockPart[], options?: Parameters<LockStore['acquireMultiLock']>[1]): Promise<{ lock: Promise<MultiLock> }> {
    let refusals = 0
    store.on('refused', () => { refusals++ })
    const lock = store.acquireMultiLock(parts, options)
    lock.catch(() => undefined)
    const timers = clock.pendingTimers
    await until(() => refusals >= 1 && clock.pendingTimers > timers, 'the multi-lock waiter was refused and fell asleep')
    return { lock }
  }

  describe('read/write locks: exclusion', () => {
    it('refuses a second writer, in another store and in the same one', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('rw')
      const lock = await a.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(lock)
      assert.equal(lock.mode, 'write')
      assert.equal(lock.name, name)
      assert.equal(lock.key, 'k')
      assert.equal(await b.tryAcquireReadWriteLock(name, 'k', WRITE), null)
      assert.equal(await a.tryAcquireReadWriteLock(name, 'k', WRITE), null)
      assert.equal(await lock.isStillValid(), true)
      await lock.release()
      assert.equal(await lock.isStillValid(), false)
      const next = await b.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(next)
      assert.ok(next.fence > lock.fence)
    })

    it('lets readers share a key, across stores and within one', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('rw')
      const readers = [
        await a.tryAcquireReadWriteLock(name, 'k', READ),
        await a.tryAcquireReadWriteLock(name, 'k', READ),
        await b.tryAcquireReadWriteLock(name, 'k', READ),
      ]
      for (const reader of readers) {
        assert.ok(reader)
        assert.equal(reader.mode, 'read')
        assert.equal(await reader.isStillValid(), true)
      }
      assert.equal(new Set(readers.map((r) => r?.token)).size, 3, 'each reader has its own token')
      assert.equal(await holderRows(name), 3)
    })

    it('refuses a writer while read-locked, until the last reader has released', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('rw')
      const r1 = await a.tryAcquireReadWriteLock(name, 'k', READ)
      const r2 = await b.tryAcquireReadWriteLock(name, 'k', READ)
      assert.ok(r1 && r2)
      assert.equal(await b.tryAcquireReadWriteLock(name, 'k', WRITE), null)
      assert.equal(await a.tryAcquireReadWriteLock(name, 'k', WRITE), null, 'a reader cannot upgrade in place')
      await r1.release()
      assert.equal(await b.tryAcquireReadWriteLock(name, 'k', WRITE), null, 'one reader is left')
      await r2.release()
      assert.ok(await b.tryAcquireReadWriteLock(name, 'k', WRITE))
    })

    it('refuses a reader while write-locked, and lets it in after the release', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('rw')
      const w = await a.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(w)
      assert.equal(await b.tryAcquireReadWriteLock(name, 'k', READ), null)
      assert.equal(await a.tryAcquireReadWriteLock(name, 'k', READ), null)
      assert.ok(await b.tryAcquireReadWriteLock(name, 'other-key', READ), 'another key is free')
      await w.release()
      assert.ok(await b.tryAcquireReadWriteLock(name, 'k', READ))
    })

    it('gives read/write locks to stores that ask at the same moment, alongside plain locks and renewals', GUARD, async () => {
      const clock = new ManualClock()
      const stores = [h.clockedStore(clock), h.clockedStore(clock), h.clockedStore(clock)]
      const name = h.lockName('same-moment')
      const plain = await stores[0]!.tryAcquireLock(name, 'plain')
      assert.ok(plain)
      for (let round = 0; round < 5; round++) {
        // SQLite: a transaction held open across an await by one pooled connection made another
        // connection's statement wait in its synchronous busy handler, failing after the timeout.
        const results = await Promise.allSettled([
          ...stores.map((s, i) => s.tryAcquireReadWriteLock(name, `r${round}-${i}`, { write: i % 2 === 0 })),
          stores[1]!.tryAcquireMultiLock([{ name, key: `m${round}-a`, write: true }, { name, key: `m${round}-b`, write: false }]),
          stores[2]!.tryAcquireLock(name, `p${round}`),
          clock.advance(RENEWAL),
        ])
        assert.deepEqual(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], `round ${round}`)
        assert.ok(results.slice(0, 5).every((r) => r.status === 'fulfilled' && r.value !== null), `round ${round}: every lock was free`)
      }
      assert.equal(plain.signal.aborted, false)
    })

    it('keeps read/write locks apart from the plain lock of the same name and key', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('ns')
      const plain = await a.tryAcquireLock(name, 'k')
      assert.ok(plain)
      assert.equal(plain.mode, 'exclusive')
      const writer = await b.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(writer, 'the plain lock does not block the write side')
      assert.equal(await b.tryAcquireLock(name, 'k'), null, 'the plain lock is still held')
      await plain.release()
      const plainAgain = await b.tryAcquireLock(name, 'k')
      assert.ok(plainAgain, 'the write side does not block the plain lock')
      assert.equal(await a.tryAcquireReadWriteLock(name, 'k', READ), null, 'the write side is still held')
      assert.equal(await writer.isStillValid(), true)
      assert.equal(await plainAgain.isStillValid(), true)
    })
  })

  describe('read/write locks: holding over time', () => {
    it('times out a dropped lock (a holder that never renews): another store takes it after the lease, and not before', async () => {
      const stuckClock = new ManualClock() // never advanced: the holders' renewals never run
      const clock = new ManualClock()
      const holder = h.clockedStore(stuckClock)
      const other = h.clockedStore(clock)
      const name = h.lockName('dropped')
      const reader = await holder.tryAcquireReadWriteLock(name, 'r', READ)
      const writer = await holder.tryAcquireReadWriteLock(name, 'w', WRITE)
      assert.ok(reader && writer)
      await clock.advance(TIMEOUT)
      assert.equal(await other.tryAcquireReadWriteLock(name, 'r', WRITE), null, 'exactly at the lease the reader is not yet stale')
      assert.equal(await other.tryAcquireReadWriteLock(name, 'w', READ), null, 'exactly at the lease the writer is not yet stale')
      await clock.advance(1)
      const w = await other.tryAcquireReadWriteLock(name, 'r', WRITE)
      const r = await other.tryAcquireReadWriteLock(name, 'w', READ)
      assert.ok(w && r)
      assert.ok(w.fence > reader.fence)
      assert.ok(r.fence > writer.fence)
      assert.equal(await reader.isStillValid(), false)
      assert.equal(await writer.isStillValid(), false)
      assert.deepEqual((await other.listLocks({ name })).map((l) => [l.key, l.mode, l.instanceName]),
        [['r', 'write', other.instanceName], ['w', 'read', other.instanceName]], 'the stale holders were reaped')
    })

    it('keeps a renewed read/write lock for many lease lengths', async () => {
      const clock = new ManualClock()
      const holder = h.clockedStore(clock)
      const other = h.clockedStore(clock)
      const name = h.lockName('renewed')
      const w = await holder.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(w)
      for (let step = 0; step < 6; step++) {
        await clock.advance(TIMEOUT / 2)
        assert.equal(await other.tryAcquireReadWriteLock(name, 'k', READ), null, `after ${(step + 1) * TIMEOUT / 2} ms`)
      }
      assert.equal(await w.isStillValid(), true)
      assert.equal(w.signal.aborted, false)
    })

    it('tells the holder of a stale lock taken over: its signal aborts with taken-over at its next renewal', async () => {
      const stuckClock = new ManualClock()
      const clock = new ManualClock()
      const holder = h.clockedStore(stuckClock)
      const other = h.clockedStore(clock)
      const name = h.lockName('taken')
      const reader = await holder.tryAcquireReadWriteLock(name, 'k', READ)
      assert.ok(reader)
      const lost: string[] = []
      holder.on('lost', (e) => lost.push(`${e.name} ${e.reason}`))
      let aborts = 0
      reader.signal.addEventListener('abort', () => aborts++)
      await clock.advance(TIMEOUT + 1)
      const writer = await other.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(writer)
      assert.equal(reader.signal.aborted, false, 'not known yet')
      await stuckClock.advance(RENEWAL)
      assert.equal(lossOf(reader.signal).reason, 'taken-over')
      assert.equal(reader.lost, true)
      assert.equal(aborts, 1)
      assert.deepEqual(lost, [`${name} taken-over`])
      // Its release afterwards removes nothing of the new holder.
      await reader.release()
      assert.equal(await writer.isStillValid(), true)
    })

    it('releases read and write locks on close(), so that others take them at once', async () => {
      const clock = new ManualClock()
      const closing = h.clockedStore(clock)
      const other = h.clockedStore(clock)
      const name = h.lockName('shutdown')
      const reader = await closing.tryAcquireReadWriteLock(name, 'r', READ)
      const writer = await closing.tryAcquireReadWriteLock(name, 'w', WRITE)
      const multi = await closing.tryAcquireMultiLock([{ name, key: 'm1', write: true }, { name, key: 'm2', write: false }])
      assert.ok(reader && writer && multi)
      assert.equal(await other.tryAcquireReadWriteLock(name, 'r', WRITE), null)
      await closing.close()
      for (const lock of [reader, writer, ...multi.locks]) assert.equal(lossOf(lock.signal).reason, 'released')
      assert.equal(lossOf(multi.signal).reason, 'released')
      assert.equal(await holderRows(name), 0, 'every holder row was deleted')
      for (const key of ['r', 'w', 'm1', 'm2']) assert.ok(await other.tryAcquireReadWriteLock(name, key, WRITE), key)
      await assert.rejects(closing.tryAcquireReadWriteLock(name, 'x', READ), LockStoreClosedError)
      await assert.rejects(closing.tryAcquireMultiLock([{ name, key: 'x', write: false }]), LockStoreClosedError)
      await assert.rejects(closing.acquireReadWriteLock(name, 'x', READ), LockStoreClosedError)
      await assert.rejects(closing.acquireMultiLock([{ name, key: 'x', write: false }]), LockStoreClosedError)
    })

    it('renews 50 read/write locks and 50 plain locks of a store with two statements per tick', async () => {
      const clock = new ManualClock()
      const store = h.clockedStore(clock)
      const name = h.lockName('renewal-cost')
      const held: Lock[] = []
      const multi = await store.tryAcquireMultiLock(Array.from({ length: 25 }, (_, i) => ({ name, key: `m${i}`, write: i % 2 === 0 })))
      assert.ok(multi)
      held.push(...multi.locks)
      for (let i = 0; i < 25; i++) {
        const lock = await store.tryAcquireReadWriteLock(name, `s${i}`, { write: i % 2 === 1 })
        assert.ok(lock)
        held.push(lock)
      }
      for (let i = 0; i < 50; i++) {
        const lock = await store.tryAcquireLock(name, `p${i}`)
        assert.ok(lock)
        held.push(lock)
      }
      const before = await h.knex(holdersTable()).where({ lock_name: name }).max({ ts: 'last_renewed_ts' }) as Array<{ ts: unknown }>
      const { sql } = await statementsDuring(h.knex, () => clock.advance(RENEWAL))
      assert.equal(sql.length, 2, `one statement for the plain locks, one for the read/write holders:\n${sql.join('\n')}`)
      const after = await h.knex(holdersTable()).where({ lock_name: name }).min({ ts: 'last_renewed_ts' }) as Array<{ ts: unknown }>
      assert.equal(Number(after[0]?.ts), Number(before[0]?.ts) + RENEWAL, 'every holder row was renewed')
      for (const lock of held) assert.equal(lock.signal.aborted, false)
      // With read/write locks only: one statement.
      for (const lock of held.filter((l) => l.mode === 'exclusive')) await lock.release()
      const { sql: rwOnly } = await statementsDuring(h.knex, () => clock.advance(RENEWAL))
      assert.equal(rwOnly.length, 1)
    })
  })

  describe('read/write locks: fences', () => {
    it('gives successive grants of one key, readers and writers alike, strictly increasing fences', async () => {
      const stuckClock = new ManualClock()
      const clock = new ManualClock()
      const a = h.clockedStore(clock)
      const b = h.clockedStore(clock)
      const operator = h.clockedStore(clock)
      const stuck = h.clockedStore(stuckClock)
      const name = h.lockName('fence')
      const fences: bigint[] = []
      const take = async (lock: Lock | null | Promise<Lock | null>): Promise<Lock> => {
        const l = await lock
        assert.ok(l)
        fences.push(l.fence)
        return l
      }
      const r1 = await take(a.tryAcquireReadWriteLock(name, 'k', READ))
      const r2 = await take(b.tryAcquireReadWriteLock(name, 'k', READ))
      const r3 = await take(a.tryAcquireReadWriteLock(name, 'k', READ))
      for (const r of [r1, r2, r3]) await r.release()
      const w1 = await take(b.tryAcquireReadWriteLock(name, 'k', WRITE))
      await w1.release()
      const multi = await b.tryAcquireMultiLock([{ name, key: 'other', write: true }, { name, key: 'k', write: false }])
      assert.ok(multi)
      fences.push(multi.locks[1]!.fence)
      await multi.release()
      // After a forced release and a stale takeover the sequence goes on.
      await take(a.tryAcquireReadWriteLock(name, 'k', WRITE))
      assert.equal(await operator.forceRelease(name, 'k'), true)
      await take(stuck.tryAcquireReadWriteLock(name, 'k', WRITE))
      await clock.advance(TIMEOUT + 1)
      await take(b.tryAcquireReadWriteLock(name, 'k', READ))
      await take(a.tryAcquireReadWriteLock(name, 'k', READ))
      for (let i = 1; i < fences.length; i++) assert.ok(fences[i]! > fences[i - 1]!, `grant ${i}: ${fences[i]} after ${fences[i - 1]}`)
      assert.equal(fences.length, 9)
    })

    it('reports a holder\'s fence in listLocks', async () => {
      const store = h.store()
      const name = h.lockName('fence-list')
      const w = await store.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(w)
      assert.deepEqual((await store.listLocks({ name })).map((l) => l.fence), [w.fence])
    })
  })

  describe('read/write locks: a waiting writer keeps new readers out', () => {
    it('refuses new readers while a writer waits, and gives the writer the lock when the last reader leaves', GUARD, async () => {
      const { clock, readers, writers, late, name, r1 } = await readerHolds('priority')
      const w = await asleepWaiting(writers, clock, name, 'k', WRITE)
      assert.notEqual(await intentOf(name, 'k'), null, 'the writer left its intent on the key')
      assert.equal(await late.tryAcquireReadWriteLock(name, 'k', READ), null, 'a new reader from another store is refused')
      assert.equal(await readers.tryAcquireReadWriteLock(name, 'k', READ), null, 'and so is one from the reader\'s own store')
      assert.ok(await late.tryAcquireReadWriteLock(name, 'other', READ), 'other keys are not affected')
      assert.ok(await late.tryAcquireLock(name, 'k'), 'nor is the plain lock of the same name and key')
      assert.equal(await stateOf(w.lock), 'pending')
      await r1.release() // wakes the writer: no clock advance
      const writer = await w.lock
      assert.equal(writer.mode, 'write')
      assert.ok(writer.fence > r1.fence)
      assert.equal(await intentOf(name, 'k'), null, 'the writer\'s way in cleared its intent')
      await writer.release()
      assert.ok(await late.tryAcquireReadWriteLock(name, 'k', READ), 'readers are let in again')
    })

    it('lets new readers in while a writer waits with blockNewReaders: false', GUARD, async () => {
      const { clock, writers, late, name, r1 } = await readerHolds('no-priority')
      const w = await asleepWaiting(writers, clock, name, 'k', { write: true, blockNewReaders: false })
      assert.equal(await intentOf(name, 'k'), null, 'no intent was written')
      const r2 = await late.tryAcquireReadWriteLock(name, 'k', READ)
      assert.ok(r2, 'a new reader gets in while the writer waits')
      await r1.release()
      await r2.release() // the last reader's release wakes the writer
      assert.equal((await w.lock).mode, 'write')
    })

    // How a writer's wait ends without the lock: the options it waits with, and how to end it.
    const endings: Array<[string, (clock: ManualClock, controller: AbortController) => { options: object; end: () => Promise<unknown>; error: RegExp | typeof LockTimeoutError }]> = [
      ['times out', (clock) => ({ options: { timeoutMs: 1_000 }, end: () => clock.advance(1_000), error: LockTimeoutError })],
      ['is aborted', (_clock, controller) => ({ options: { signal: controller.signal }, end: async () => { controller.abort(new Error('gave up')) }, error: /gave up/ })],
    ]
    for (const [how, ending] of endings) {
      it(`withdraws a writer's intent when its wait ${how}: a new reader gets in at once`, GUARD, async () => {
        const { clock, writers, late, name } = await readerHolds('intent-ended')
        const { options, end, error } = ending(clock, new AbortController())
        const w = await asleepWaiting(writers, clock, name, 'k', { write: true, ...options })
        assert.equal(await late.tryAcquireReadWriteLock(name, 'k', READ), null)
        await end()
        await assert.rejects(w.lock, error)
        // Well within the intent's lifetime: only its withdrawal lets the reader in.
        assert.ok(await late.tryAcquireReadWriteLock(name, 'k', READ), 'the intent was withdrawn')
        assert.equal(await intentOf(name, 'k'), null)
      })
    }

    it('lets a writer\'s intent lapse once it stops trying: readers get in after the intent\'s lifetime', GUARD, async () => {
      const writerClock = new ManualClock() // never advanced: the writer never tries again
      const { clock, writers, late, name } = await readerHolds('intent-lapse', writerClock)
      const w = await asleepWaiting(writers, writerClock, name, 'k', WRITE)
      await clock.advance(INTENT)
      assert.equal(await late.tryAcquireReadWriteLock(name, 'k', READ), null, 'at the end of its lifetime the intent still stands')
      await clock.advance(1)
      assert.ok(await late.tryAcquireReadWriteLock(name, 'k', READ), 'the intent lapsed')
      await writers.close()
      await assert.rejects(w.lock, LockStoreClosedError)
    })

    it('does not let two waiting multi-locks keep each other out with their intents (write a + read b against write b + read a)', GUARD, async () => {
      const clock = new ManualClock()
      const readers = h.clockedStore(clock)
      const one = h.clockedStore(clock)
      const two = h.clockedStore(clock)
      const name = h.lockName('crossed')
      const held = await readers.tryAcquireMultiLock([{ name, key: 'a', write: false }, { name, key: 'b', write: false }])
      assert.ok(held)
      const m1 = await asleepMulti(one, clock, [{ name, key: 'a', write: true }, { name, key: 'b', write: false }], { timeoutMs: 60_000 })
      const m2 = await asleepMulti(two, clock, [{ name, key: 'b', write: true }, { name, key: 'a', write: false }], { timeoutMs: 60_000 })
      // The releases wake both; one of them gets in without the clock moving. (Moving it now
      // could outrun an attempt under way, which would give up a win that took "longer" than the lease.)
      await held.release()
      await until(async () => await stateOf(m1.lock) !== 'pending' || await stateOf(m2.lock) !== 'pending', 'a multi-lock got in')
      const states = [await stateOf(m1.lock), await stateOf(m2.lock)]
      assert.deepEqual(states.filter((s) => s === 'fulfilled').length, 1, `exactly one multi-lock got in: ${states.join(', ')}`)
      const [first, second] = states[0] === 'fulfilled' ? [m1, m2] : [m2, m1]
      await (await first.lock).release() // wakes the other
      const other = await second.lock
      assert.equal(other.locks.length, 2)
      await other.release()
    })
  })

  describe('multi-locks', () => {
    it('takes every part or none: a conflict on one part leaves nothing held', async () => {
      const a = h.store()
      const b = h.store()
      const name = h.lockName('multi')
      const blocker = await b.tryAcquireReadWriteLock(name, 'k2', WRITE)
      assert.ok(blocker)
      const refused = await a.tryAcquireMultiLock([
        { name, key: 'k1', write: true }, { name, key: 'k2', write: false }, { name, key: 'k3', write: false },
      ])
      assert.equal(refused, null)
      assert.deepEqual((await a.listLocks({ name })).map((l) => [l.key, l.mode]), [['k2', 'write']], 'only the blocker holds anything')
      const rest = await b.tryAcquireMultiLock([{ name, key: 'k1', write: true }, { name, key: 'k3', write: true }])
      assert.ok(rest, 'the parts that were free are free')
      await rest.release()
      await blocker.release()
      const all = await a.tryAcquireMultiLock([
        { name, key: 'k1', write: true }, { name, key: 'k2', write: false }, { name, key: 'k3', write: false },
      ])
      assert.ok(all)
      assert.deepEqual(all.locks.map((l) => [l.key, l.mode]), [['k1', 'write'], ['k2', 'read'], ['k3', 'read']])
    })

    it('merges a (name, key) listed twice into one part, in write mode if either asks, and keeps the order given', async () => {
      const store = h.store()
      const other = h.store()
      const name = h.lockName('merged')
      const multi = await store.tryAcquireMultiLock([
        { name, key: 'c', write: false },
        { name, key: 'a', write: false },
        { name, key: 'b', write: false },
        { name, key: 'a', write: true },
        { name, key: 'c', write: false },
        { name, write: false },
      ])
      assert.ok(multi)
      assert.ok(multi instanceof MultiLock)
      assert.deepEqual(multi.locks.map((l) => [l.name, l.key, l.mode]), [[name, 'c', 'read'], [name, 'a', 'write'], [name, 'b', 'read'], [name, '', 'read']])
      assert.deepEqual((await store.listLocks({ name })).map((l) => [l.key, l.mode, l.holders]),
        [['', 'read', 1], ['a', 'write', 1], ['b', 'read', 1], ['c', 'read', 1]], 'one holder row per distinct key')
      assert.equal(await other.tryAcquireReadWriteLock(name, 'a', READ), null, 'a is held for writing')
      assert.ok(await other.tryAcquireReadWriteLock(name, 'c', READ), 'c is held for reading')
    })

    it('aborts the multi-lock\'s signal when one part is force-released and a renewal runs; release() frees the rest', async () => {
      const clock = new ManualClock()
      const store = h.clockedStore(clock)
      const operator = h.clockedStore(clock)
      const name = h.lockName('multi-lost')
      const multi = await store.tryAcquireMultiLock([{ name, key: 'k1', write: true }, { name, key: 'k2', write: false }])
      assert.ok(multi)
      const signal = multi.signal
      assert.equal(signal.aborted, false)
      assert.equal(await multi.isStillValid(), true)
      assert.equal(await operator.forceRelease(name, 'k2'), true)
      assert.equal(signal.aborted, false, 'not known before a renewal')
      await clock.advance(RENEWAL)
      const loss = lossOf(signal)
      assert.equal(loss.reason, 'taken-over')
      assert.equal(loss.lockKey, 'k2')
      assert.equal(multi.locks[0]!.signal.aborted, false, 'the other part is still held')
      assert.equal(await multi.locks[0]!.isStillValid(), true)
      assert.equal(await multi.isStillValid(), false)
      assert.equal(await operator.tryAcquireReadWriteLock(name, 'k1', READ), null)
      await multi.release()
      assert.equal(await holderRows(name), 0)
      assert.ok(await operator.tryAcquireMultiLock([{ name, key: 'k1', write: true }, { name, key: 'k2', write: true }]))
    })

    it('releases every part with release(), and with `await using`', async () => {
      const store = h.store()
      const other = h.store()
      const name = h.lockName('multi-release')
      const parts = [{ name, key: 'x', write: true }, { name, key: 'y', write: true }]
      const multi = await store.tryAcquireMultiLock(parts)
      assert.ok(multi)
      await multi.release()
      for (const lock of multi.locks) assert.equal(lossOf(lock.signal).reason, 'released')
      assert.equal(await multi.isStillValid(), false)
      await multi.release() // idempotent
      {
        await using held = await store.tryAcquireMultiLock(parts)
        assert.ok(held)
        assert.equal(await other.tryAcquireReadWriteLock(name, 'y', READ), null)
        assert.equal(await holderRows(name), 2)
      }
      assert.equal(await holderRows(name), 0, 'leaving the block released every part')
      assert.ok(await other.tryAcquireMultiLock(parts))
    })

    it('waits with acquireMultiLock until every part is free, woken by the releases of this process', GUARD, async () => {
      const clock = new ManualClock()
      const a = h.clockedStore(clock)
      const b = h.clockedStore(clock)
      const name = h.lockName('multi-wait')
      const r = await a.tryAcquireReadWriteLock(name, 'k1', READ)
      const w = await a.tryAcquireReadWriteLock(name, 'k2', WRITE)
      assert.ok(r && w)
      const waiting = await asleepMulti(b, clock, [{ name, key: 'k2', write: false }, { name, key: 'k1', write: true }])
      await w.release()
      assert.equal(await stateOf(waiting.lock), 'pending', 'k1 is still read-locked')
      await r.release()
      const multi = await waiting.lock
      assert.deepEqual(multi.locks.map((l) => [l.key, l.mode]), [['k2', 'read'], ['k1', 'write']])
    })

    it('settles many concurrent overlapping multi-locks in opposite orders from several stores, with exclusion throughout', GUARD, async () => {
      const name = h.lockName('mesh')
      const keys = ['a', 'b', 'c', 'd']
      const separate = h.target.database !== 'sqlite'
      const backoff = { initialDelayMs: 2, maxDelayMs: 40 }
      const stores = Array.from({ length: 6 }, (_, i) => h.store({ backoff }, separate && i % 2 === 1 ? h.connection({ poolMax: 2 }) : h.knex))
      const readers = new Map<string, number>(keys.map((k) => [k, 0]))
      const writers = new Map<string, number>(keys.map((k) => [k, 0]))
      const violations: string[] = []
      let wins = 0
      const run = async (store: LockStore, s: number): Promise<void> => {
        for (let i = 0; i < 20; i++) {
          const ordered = s % 2 === 0 ? keys : [...keys].reverse()
          const parts = ordered.filter((_, j) => (i + s + j) % 3 !== 0).map((key, j) => ({ name, key, write: (i + j + s) % 2 === 0 }))
          const multi = await store.acquireMultiLock(parts, { timeoutMs: 30_000 })
          wins++
          for (const lock of multi.locks) {
            const r = readers.get(lock.key)!
            const w = writers.get(lock.key)!
            if (w > 0 || (lock.mode === 'write' && r > 0)) violations.push(`${lock.key}: ${lock.mode} granted with ${r} reader(s) and ${w} writer(s)`)
            if (lock.mode === 'write') writers.set(lock.key, w + 1)
            else readers.set(lock.key, r + 1)
          }
          await new Promise((resolve) => setImmediate(resolve))
          for (const lock of multi.locks) {
            const counts = lock.mode === 'write' ? writers : readers
            counts.set(lock.key, counts.get(lock.key)! - 1)
          }
          await multi.release()
        }
      }
      const results = await Promise.allSettled(stores.map((store, s) => run(store, s)))
      assert.deepEqual(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [])
      assert.deepEqual(violations, [])
      assert.equal(wins, 6 * 20)
      assert.equal(await holderRows(name), 0, 'every holder row was released')
      assert.deepEqual(await stores[0]!.listLocks({ name }), [])
    })
  })

  describe('multi-locks over many fresh keys', () => {
    it('takes 200 fresh keys in O(N) statements, well within a 5 s lease', async () => {
      const store = h.store({ lockTimeoutMs: 5_000 })
      const name = h.lockName('fresh')
      const parts = Array.from({ length: 200 }, (_, i) => ({ name, key: `k${i}`, write: i % 2 === 0 }))
      const { result: multi, sql } = await statementsDuring(h.knex, () => store.tryAcquireMultiLock(parts))
      assert.ok(sql.length <= 5 * 200 + 20, `${sql.length} statements`)
      assert.ok(multi, 'uncontended: acquired')
      assert.equal(multi.locks.length, 200)
      await multi.release()
    })
  })

  describe('read/write locks: listing and forceRelease', () => {
    it('lists one entry per holder with its mode and the key\'s holder count', async () => {
      const a = h.store({ instanceName: 'rw-list-a' })
      const b = h.store({ instanceName: 'rw-list-b' })
      const name = h.lockName('rw-list')
      const plain = await a.tryAcquireLock(name, 'k1')
      const r1 = await a.tryAcquireReadWriteLock(name, 'k1', READ)
      const r2 = await b.tryAcquireReadWriteLock(name, 'k1', READ)
      const w = await b.tryAcquireReadWriteLock(name, 'k2', WRITE)
      assert.ok(plain && r1 && r2 && w)
      const rows = await a.listLocks({ name })
      const shown = rows.map((l) => [l.key, l.mode, l.holders, l.instanceName, l.fence, l.stale])
      assert.deepEqual(shown.filter((s) => s[0] === 'k1' && s[1] === 'exclusive'), [['k1', 'exclusive', 1, 'rw-list-a', plain.fence, false]])
      assert.deepEqual(shown.filter((s) => s[0] === 'k1' && s[1] === 'read').sort((x, y) => String(x[3]).localeCompare(String(y[3]))),
        [['k1', 'read', 2, 'rw-list-a', r1.fence, false], ['k1', 'read', 2, 'rw-list-b', r2.fence, false]])
      assert.deepEqual(shown.filter((s) => s[0] === 'k2'), [['k2', 'write', 1, 'rw-list-b', w.fence, false]])
      assert.equal(rows.length, 4)
      assert.deepEqual(rows.map((l) => l.key), ['k1', 'k1', 'k1', 'k2'], 'sorted by name and key')
      assert.deepEqual((await a.listLocks({ name, key: 'k2' })).map((l) => l.mode), ['write'])
      assert.deepEqual((await a.listLocks({ instanceName: 'rw-list-b' })).map((l) => [l.key, l.mode]), [['k1', 'read'], ['k2', 'write']])
    })

    it('force-releases every holder of a key, and the plain lock, whose holders learn at their next renewal; a waiting writer gets in at once', GUARD, async () => {
      const clock = new ManualClock()
      const a = h.clockedStore(clock)
      const b = h.clockedStore(clock)
      const operator = h.clockedStore(clock)
      const waiter = h.clockedStore(clock)
      const name = h.lockName('rw-forced')
      const plain = await a.tryAcquireLock(name, 'k')
      const r1 = await a.tryAcquireReadWriteLock(name, 'k', READ)
      const r2 = await b.tryAcquireReadWriteLock(name, 'k', READ)
      const kept = await b.tryAcquireReadWriteLock(name, 'kept', READ)
      assert.ok(plain && r1 && r2 && kept)
      const w = await asleepWaiting(waiter, clock, name, 'k', WRITE)
      assert.equal(await operator.forceRelease(name, 'k'), true)
      const writer = await w.lock // woken by the forced release, without the clock moving
      assert.equal(writer.mode, 'write')
      assert.deepEqual((await operator.listLocks({ name })).map((l) => [l.key, l.mode]), [['k', 'write'], ['kept', 'read']])
      await clock.advance(RENEWAL)
      for (const lock of [plain, r1, r2]) assert.equal(lossOf(lock.signal).reason, 'taken-over', lock.mode)
      assert.equal(kept.signal.aborted, false)
      await writer.release()
      assert.equal(await operator.forceRelease(name, 'k'), false, 'nothing left to remove')
    })
  })

  describe('read/write locks: waiting', () => {
    it('resolves acquireReadWriteLock when a holder in this process releases, without the clock moving', GUARD, async () => {
      const clock = new ManualClock()
      const holder = h.clockedStore(clock)
      const waiter = h.clockedStore(clock)
      const name = h.lockName('rw-wait')
      const w = await holder.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(w)
      const elsewhere = await asleepWaiting(waiter, clock, name, 'k', READ)
      const sameStore = await asleepWaiting(holder, clock, name, 'k', READ)
      await w.release() // wakes every store waiting for the key: readers may all get in
      await until(async () => await stateOf(elsewhere.lock) !== 'pending' && await stateOf(sameStore.lock) !== 'pending', 'both waiting readers got in')
      const [r1, r2] = await Promise.all([elsewhere.lock, sameStore.lock])
      assert.equal(r1.mode, 'read')
      assert.equal(r2.mode, 'read')
      assert.ok(r1.fence > w.fence && r2.fence > w.fence)
    })

    it('tries exactly once with timeoutMs: 0', async () => {
      const clock = new ManualClock()
      const holder = h.clockedStore(clock)
      const waiter = h.clockedStore(clock)
      const name = h.lockName('rw-once')
      const w = await holder.tryAcquireReadWriteLock(name, 'k', WRITE)
      assert.ok(w)
      let refusals = 0
      waiter.on('refused', () => refusals++)
      const timers = clock.pendingTimers
      await assert.rejects(waiter.acquireReadWriteLock(name, 'k', { write: false, timeoutMs: 0 }),
        (e: Error) => e instanceof LockTimeoutError && e.message.includes(`the read side of read/write lock "${name}" (key "k")`))
      await assert.rejects(waiter.acquireMultiLock([{ name, key: 'k', write: true }], { timeoutMs: 0 }),
        (e: Error) => e instanceof LockTimeoutError && e.message.includes(`the write side of read/write lock "${name}" (key "k")`))
      assert.equal(refusals, 2, 'one attempt each')
      // On PostgreSQL the waits listened for releases: that connection lingers on one timer of the clock.
      assert.equal(clock.pendingTimers, timers + (h.target.database === 'postgres' ? 1 : 0), 'no timer left behind but the listener\'s linger')
      const free = await waiter.acquireReadWriteLock(name, 'free', { write: true, timeoutMs: 0 })
      assert.equal(free.mode, 'write')
    })

    it('rejects a wait with LockStoreClosedError when the store is closed, and withdraws its intent', GUARD, async () => {
      const clock = new ManualClock()
      const readers = h.clockedStore(clock)
      const writers = h.clockedStore(clock)
      const late = h.clockedStore(clock)
      const name = h.lockName('rw-closed')
      const r1 = await readers.tryAcquireReadWriteLock(name, 'k', READ)
      const j = await readers.tryAcquireReadWriteLock(name, 'j', READ)
      assert.ok(r1 && j)
      const w = await asleepWaiting(writers, clock, name, 'k', WRITE)
      const multi = await asleepMulti(writers, clock, [{ name, key: 'i', write: false }, { name, key: 'j', write: true }])
      await writers.close()
      await assert.rejects(w.lock, LockStoreClosedError)
      await assert.rejects(multi.lock, LockStoreClosedError)
      assert.ok(await late.tryAcquireReadWriteLock(name, 'k', READ), 'the closed store\'s intents were withdrawn')
      assert.ok(await late.tryAcquireReadWriteLock(name, 'j', READ))
      assert.equal(await holderRows(name), 4)
    })

    it('runs withReadWriteLock\'s function under the lock and releases it, whatever the function does', GUARD, async () => {
      const store = h.store()
      const other = h.store()
      const name = h.lockName('rw-with')
      const value = await store.withReadWriteLock(name, 'k', WRITE, async (lock) => {
        assert.equal(lock.mode, 'write')
        assert.equal(await other.tryAcquireReadWriteLock(name, 'k', READ), null)
        return 'done'
      })
      assert.equal(value, 'done')
      assert.equal(await holderRows(name), 0)
      await assert.rejects(store.withReadWriteLock(name, 'k', READ, () => { throw new Error('job failed') }), /job failed/)
      assert.equal(await holderRows(name), 0)
    })
  })

  describe('read/write locks: bad input', () => {
    it('refuses bad arguments with a typed error before any SQL, keeping what is held', async () => {
      const store = h.store()
      const name = h.lockName('rw-bad')
      const held = await store.tryAcquireReadWriteLock(name, 'k', WRITE)
      const multi = await store.tryAcquireMultiLock([{ name, key: 'm1', write: false }, { name, key: 'm2', write: true }])
      assert.ok(held && multi)
      const tooMany = Array.from({ length: 1_001 }, (_, i) => ({ name, key: `many${i}`, write: false }))
      const cases: Array<[string, () => Promise<unknown>, typeof TypeError | typeof RangeError | typeof InvalidLockNameError]> = [
        ['no options', () => store.tryAcquireReadWriteLock(name, 'x', undefined as never), TypeError],
        ['null options', () => store.tryAcquireReadWriteLock(name, 'x', null as never), TypeError],
        ['missing write', () => store.tryAcquireReadWriteLock(name, 'x', {} as never), TypeError],
        ['string write', () => store.tryAcquireReadWriteLock(name, 'x', { write: 'true' } as never), TypeError],
        ['numeric write', () => store.tryAcquireReadWriteLock(name, 'x', { write: 1 } as never), TypeError],
        ['unknown option', () => store.tryAcquireReadWriteLock(name, 'x', { write: true, mode: 'write' } as never), TypeError],
        ['wait option on a try', () => store.tryAcquireReadWriteLock(name, 'x', { write: true, timeoutMs: 5 } as never), TypeError],
        ['wait without write', () => store.acquireReadWriteLock(name, 'x', { timeoutMs: 5 } as never), TypeError],
        ['wait, unknown option', () => store.acquireReadWriteLock(name, 'x', { write: true, timeout: 5 } as never), TypeError],
        ['wait, bad blockNewReaders', () => store.acquireReadWriteLock(name, 'x', { write: true, blockNewReaders: 'no' } as never), TypeError],
        ['wait, negative timeout', () => store.acquireReadWriteLock(name, 'x', { write: true, timeoutMs: -1 }), RangeError],
        ['with, no function', () => store.withReadWriteLock(name, 'x', WRITE, 'fn' as never), TypeError],
        ['with, missing write', () => store.withReadWriteLock(name, 'x', {} as never, () => 1), TypeError],
        ['empty name', () => store.tryAcquireReadWriteLock('', 'x', WRITE), InvalidLockNameError],
        ['numeric name', () => store.tryAcquireReadWriteLock(42 as never, 'x', WRITE), InvalidLockNameError],
        ['key with NUL', () => store.acquireReadWriteLock(name, 'a\0b', WRITE), InvalidLockNameError],
        ['name too long', () => store.tryAcquireReadWriteLock('n'.repeat(256), 'x', READ), InvalidLockNameError],
        ['multi: empty list', () => store.tryAcquireMultiLock([]), RangeError],
        ['multi: not an array', () => store.tryAcquireMultiLock({ name, write: true } as never), TypeError],
        ['multi: a string', () => store.tryAcquireMultiLock(name as never), TypeError],
        ['multi: entry without write', () => store.tryAcquireMultiLock([{ name, key: 'x', write: true }, { name, key: 'y' }] as never), TypeError],
        ['multi: null entry', () => store.tryAcquireMultiLock([null] as never), TypeError],
        ['multi: unknown field', () => store.tryAcquireMultiLock([{ name, write: true, mode: 'x' }] as never), TypeError],
        ['multi: bad name', () => store.tryAcquireMultiLock([{ name, key: 'x', write: true }, { name: '', write: true }]), InvalidLockNameError],
        ['multi: bad key', () => store.tryAcquireMultiLock([{ name, key: '\uD800', write: true }]), InvalidLockNameError],
        ['multi: over 1000 entries', () => store.tryAcquireMultiLock(tooMany), RangeError],
        ['multi wait: empty list', () => store.acquireMultiLock([]), RangeError],
        ['multi wait: over 1000 entries', () => store.acquireMultiLock(tooMany), RangeError],
        ['multi wait: unknown option', () => store.acquireMultiLock([{ name, write: true }], { write: true } as never), TypeError],
        ['multi wait: bad blockNewReaders', () => store.acquireMultiLock([{ name, write: true }], { blockNewReaders: 0 } as never), TypeError],
        ['multi wait: bad timeout', () => store.acquireMultiLock([{ name, write: true }], { timeoutMs: 1.5 }), TypeError],
        ['keepForMs on a read/write lock', () => held.release({ keepForMs: 1_000 }), TypeError],
      ]
      const { queries } = await h.countQueries(h.knex, async () => {
        for (const [label, call, type] of cases) await assert.rejects(call(), type, label)
      })
      assert.equal(queries, 0)
      assert.equal(held.signal.aborted, false)
      assert.equal(multi.signal.aborted, false)
      assert.equal(await held.isStillValid(), true)
      assert.equal(await multi.isStillValid(), true)
      assert.equal(await holderRows(name), 3)
    })
  })
}
