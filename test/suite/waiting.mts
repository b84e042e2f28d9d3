// acquireLock, withLock and tryWithLock: waiting for a lock, driven by ManualClock.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidLockNameError, LockStoreClosedError, LockTimeoutError, ManualClock, type Lock, type LockStore } from '../../src/index.js'
import { isAcquire, isLook, isRelease, kindOf, RecordingLogger, statementsDuring, type Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs

/** A lock held by one store, and another store (same clock) that will wait for it. */
async function heldByAnother(h: Harness): Promise<{ clock: ManualClock; waiter: LockStore; name: string; held: Lock }> {
  const clock = new ManualClock()
  const holder = h.clockedStore(clock)
  const waiter = h.clockedStore(clock)
  const name = h.lockName()
  const held = await holder.tryAcquireLock(name)
  assert.ok(held)
  return { clock, waiter, name, held }
}

/**
 * A lock held by a store (its waiters will be of the same store), and `others` more stores on the
 * same clock (that clock never moves unless the test moves it).
 */
async function heldInOneStore(h: Harness, others = 0): Promise<{ clock: ManualClock; store: LockStore; others: LockStore[]; name: string; held: Lock }> {
  const clock = new ManualClock()
  const store = h.clockedStore(clock)
  const more = Array.from({ length: others }, () => h.clockedStore(clock))
  const name = h.lockName()
  const held = await store.tryAcquireLock(name)
  assert.ok(held)
  return { clock, store, others: more, name, held }
}

/**
 * A lock held by a store (`holder`), whose own waiters will wait for it, and `others` more
 * stores, all on one clock that never moves unless the test moves it.
 */
async function heldForWaiters(h: Harness, others = 0) {
  const { clock, store: holder, others: more, name, held } = await heldInOneStore(h, others)
  return { clock, holder, waiters: holder, others: more, name, held }
}

/**
 * Starts a wait for `name` in `store` and resolves once its waiter has found the lock busy and
 * fallen asleep (refused: by the database, or for a lock the store holds, by the row's check).
 * The lock is boxed so that awaiting this does not await the wait.
 */
async function asleepWaiting(store: LockStore, name: string, signal?: AbortSignal): Promise<{ lock: Promise<Lock> }> {
  const refused = new Promise<void>((resolve) => {
    const stop = store.on('refused', (e) => { if (e.name === name) { stop(); resolve() } })
  })
  const lock = store.acquireLock(name, '', { signal })
  lock.catch(() => undefined) // awaited by the test; this keeps a failed assertion from leaving it unhandled
  await refused
  await asleep()
  return { lock }
}

/** Lets waiters that need no SQL to find their lock busy fall asleep. */
const asleep = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))


/** The kinds of the statements run on the harness's connection while `fn` runs. */
const statements = <T,>(h: Harness, fn: () => Promise<T>): Promise<{ result: T; kinds: string[] }> => statementsDuring(h.knex, fn)

export function waitingSuite(h: Harness): void {
  describe('wake-ups', () => {
    it('hands a released lock to a waiter at once, without the clock moving', async () => {
      const { waiter, name, held } = await heldByAnother(h)
      const waiting = waiter.acquireLock(name)
      await held.release()
      const lock = await waiting
      assert.equal(lock.name, name)
      assert.ok(lock.fence > held.fence)
      assert.equal(await lock.isStillValid(), true)
    })

    it('gives the lock to a waiter of the same store when the holder releases it', async () => {
      const { store, name, held } = await heldInOneStore(h)
      const waiting = store.acquireLock(name)
      await held.release()
      assert.ok(await waiting)
    })
  })

  describe('releases within a store', () => {
    it('wakes every waiter of the process when a lock is released: a delete, then their own attempts; one wins, the next release goes to the other', async () => {
      const { holder, waiters, others: [other], name, held } = await heldForWaiters(h, 1)
      assert.ok(other)
      const waiting = await asleepWaiting(waiters, name)
      const elsewhere = await asleepWaiting(other, name)
      const events: string[] = []
      holder.on('released', (e) => events.push(`released ${e.name}`))
      for (const store of [waiters, other]) store.on('acquired', (e) => events.push(`acquired ${e.name}`))
      const both = [waiting.lock, elsewhere.lock].map((lock, i) => lock.then((l) => ({ l, i })))
      const { result: { l: first, i }, kinds } = await statements(h, async () => {
        await held.release()
        return Promise.race(both)
      })
      const steps = kinds.filter((k) => isAcquire(k) || isRelease(k)).map((k) => (isRelease(k) ? 'release' : 'acquire'))
      assert.deepEqual([...new Set(steps)], ['release', 'acquire'], steps.join(', '))
      assert.deepEqual(events, [`released ${name}`, `acquired ${name}`])
      assert.ok(first.fence > held.fence)
      assert.equal((await h.row(name))?.token, first.token)
      assert.equal(await held.isStillValid(), false)
      await first.release()
      const { l: second } = await (both[1 - i] as Promise<{ l: Lock }>)
      assert.ok(second.fence > first.fence)
      assert.equal((await h.row(name))?.token, second.token)
    })

    it('finds a lock of its own store that was taken over meanwhile lost at its first attempt, and waits for the new holder', async () => {
      const { store, others: [thief], name, held } = await heldInOneStore(h, 1)
      assert.ok(thief)
      // The row goes stale behind its holder's back (as if renewals had failed) and is taken over.
      await h.knex(h.tableName).where({ lock_name: name }).update({ last_renewed_ts: 0 })
      const stolen = await thief.tryAcquireLock(name)
      assert.ok(stolen)
      const { lock: waiting } = await asleepWaiting(store, name)
      assert.equal(held.lost, true, 'the waiter\'s check of the row found the old lock lost')
      assert.equal((held.signal.reason as { reason?: string }).reason, 'taken-over')
      let acquired: Lock | undefined
      void waiting.then((lock) => { acquired = lock })
      await held.release()
      assert.equal(acquired, undefined)
      assert.equal((await h.row(name))?.token, stolen.token, 'the thief still holds it')
      await stolen.release()
      assert.ok((await waiting).fence > stolen.fence)
    })
  })

  describe('timeouts, aborts and closing', () => {
    it('with timeoutMs 0 tries exactly once: a free lock is won every time, a held one refused after one attempt', async () => {
      const store = h.store()
      for (let i = 0; i < 20; i++) {
        const lock = await store.acquireLock(h.lockName('zero'), '', { timeoutMs: 0 })
        assert.equal(await lock.isStillValid(), true, `attempt ${i}`)
        await lock.release()
      }
      const name = h.lockName('zero-held')
      const held = await h.store().tryAcquireLock(name)
      assert.ok(held)
      let refused = 0
      store.on('refused', () => refused++)
      await assert.rejects(store.acquireLock(name, '', { timeoutMs: 0 }), (error: unknown) => error instanceof LockTimeoutError && error.cause === undefined)
      assert.equal(refused, 1)
    })

    it('takes the lock from a stuck holder once it times out', async () => {
      const clock = new ManualClock()
      const holder = h.clockedStore(new ManualClock(clock.now())) // never renews
      const waiter = h.clockedStore(clock)
      const name = h.lockName()
      assert.ok(await holder.tryAcquireLock(name))
      let acquired: Lock | undefined
      const refused = new Promise<void>((resolve) => waiter.on('refused', () => resolve()))
      const waiting = waiter.acquireLock(name).then((lock) => { acquired = lock })
      await refused // its first attempt, before the clock moves
      await clock.advance(TIMEOUT - 1)
      assert.equal(acquired, undefined, 'not before the timeout')
      await clock.advance(5_000 + 1) // at most one backoff later
      await waiting
      assert.ok(acquired)
    })

    it('rejects with LockTimeoutError after timeoutMs, holding nothing', async () => {
      const { clock, waiter, name, held } = await heldByAnother(h)
      const waiting = waiter.acquireLock(name, '', { timeoutMs: 3_000 })
      const outcome = waiting.then(() => 'acquired', (error: unknown) => error)
      await clock.advance(2_999)
      await clock.advance(1)
      const error = await outcome
      assert.ok(error instanceof LockTimeoutError)
      assert.equal(error.code, 'LOCK_TIMEOUT')
      assert.equal(error.timeoutMs, 3_000)
      await held.release()
      assert.ok(await waiter.tryAcquireLock(name), 'the waiter holds nothing, so it can take the lock now')
    })

    it('tries exactly once with timeoutMs 0', async () => {
      const clock = new ManualClock()
      const name = h.lockName()
      assert.ok(await h.clockedStore(clock).tryAcquireLock(name))
      await assert.rejects(h.clockedStore(clock).acquireLock(name, '', { timeoutMs: 0 }), LockTimeoutError)
      const free = await h.clockedStore(clock).acquireLock(h.lockName(), '', { timeoutMs: 0 })
      assert.ok(free)
    })

    it("rejects with the signal's reason when aborted, holding nothing, even if it just won the lock", async () => {
      const { clock, waiter, name } = await heldByAnother(h)
      const sleeping = new AbortController()
      const asleep = waiter.acquireLock(name, '', { signal: sleeping.signal })
      await clock.advance(50)
      sleeping.abort(new Error('no longer needed'))
      await assert.rejects(asleep, /no longer needed/)

      // Aborted while its first attempt, on a free lock, is on the wire: the won lock is released.
      const free = h.lockName()
      const racing = new AbortController()
      const attempt = waiter.acquireLock(free, '', { signal: racing.signal })
      racing.abort(new Error('too late'))
      await assert.rejects(attempt, /too late/)
      assert.equal(await h.row(free), undefined)
      await assert.rejects(waiter.acquireLock(free, '', { signal: racing.signal }), /too late/, 'an aborted signal rejects at once')
    })

    it('rejects waiters with LockStoreClosedError when their store closes', async () => {
      const clock = new ManualClock()
      const name = h.lockName()
      assert.ok(await h.clockedStore(clock).tryAcquireLock(name))
      const store = h.clockedStore(clock)
      const rejected = assert.rejects(store.acquireLock(name), LockStoreClosedError)
      await clock.advance(10)
      await store.close()
      await rejected
    })

    it('rejects bad wait options before any SQL', async () => {
      const store = h.store()
      for (const options of [{ timeoutMs: -1 }, { timeoutMs: 1.5 }, { timeoutMs: '5' }, { signal: {} }, { timeout: 5 }]) {
        await assert.rejects(store.acquireLock('x', '', options as never), (e: unknown) => e instanceof TypeError || e instanceof RangeError, JSON.stringify(options))
      }
      await assert.rejects(store.withLock('x', '', 'not a function' as never), TypeError)
    })
  })

  describe('fairness and scale', () => {
    it('keeps one holder at a time and growing fences while tasks of two stores pass locks around and give up', async () => {
      const clock = new ManualClock()
      const stores = [h.clockedStore(clock), h.clockedStore(clock)]
      const names = [h.lockName('pass'), h.lockName('pass')]
      let seed = 42
      const random = (): number => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31)
      // The clock runs fast against the database here (500 ms a turn of the event loop), so a
      // holder's lease may run out while its task still holds it: that task has been told (its
      // signal aborted) before anyone else can take the lock over, and only a holder not told is
      // an overlap.
      const holders = new Map<string, { task: number; lock: Lock }>()
      const fences = new Map<string, bigint>()
      const problems: string[] = []
      let acquired = 0
      let gaveUp = 0
      const task = async (t: number): Promise<void> => {
        for (let round = 0; round < 15; round++) {
          const name = names[random() < 0.5 ? 0 : 1] ?? ''
          const controller = new AbortController()
          // Some waits give up at a random moment: while asleep, while their attempt runs…
          if (random() < 0.25) {
            const ticks = Math.floor(random() * 4)
            void (async () => {
              for (let i = 0; i < ticks; i++) await asleep()
              controller.abort(new Error('gave up'))
            })()
          }
          let lock: Lock
          try {
            lock = await stores[t % 2]!.acquireLock(name, '', { signal: controller.signal })
          } catch (error) {
            if ((error as Error).message !== 'gave up') throw error
            gaveUp++
            continue
          }
          const holder = holders.get(name)
          if (holder && !holder.lock.signal.aborted) problems.push(`task ${t} got ${name} while task ${holder.task} held it`)
          const last = fences.get(name)
          if (last !== undefined && lock.fence <= last) problems.push(`fence ${lock.fence} after ${last} for ${name}`)
          holders.set(name, { task: t, lock })
          fences.set(name, lock.fence)
          acquired++
          const ticks = 1 + Math.floor(random() * 3)
          for (let i = 0; i < ticks; i++) await asleep()
          if (holders.get(name)?.lock === lock) holders.delete(name)
          await lock.release()
        }
      }
      let running = true
      // Moves time on, so that a waiter nobody wakes still finds the lock at its next backoff.
      const time = (async () => {
        while (running) {
          await asleep()
          await clock.advance(500)
        }
      })()
      await Promise.all(Array.from({ length: 8 }, (_, t) => task(t)))
      running = false
      await time
      assert.deepEqual(problems, [])
      assert.equal(acquired + gaveUp, 8 * 15)
      assert.ok(acquired > 60, `only ${acquired} acquisitions`)
      // A wait that gave up while its attempt was under way releases what that attempt wins, once it does.
      for (const store of stores) await store.close()
      for (const name of names) assert.equal(await h.row(name), undefined, 'nothing is left held')
    })

    it('serves 500 waiters on one key one after another, each once, in order', async () => {
      const clock = new ManualClock()
      const holder = h.clockedStore(clock)
      const store = h.clockedStore(clock)
      const name = h.lockName('crowd')
      const first = await holder.tryAcquireLock(name)
      assert.ok(first)
      const order: number[] = []
      const fences: bigint[] = [first.fence]
      const waiters = Array.from({ length: 500 }, (_, i) => store.acquireLock(name).then(async (lock) => {
        order.push(i)
        fences.push(lock.fence)
        await lock.release()
      }))
      await first.release()
      await Promise.all(waiters)
      assert.deepEqual(order, Array.from({ length: 500 }, (_, i) => i))
      for (let i = 1; i < fences.length; i++) assert.ok((fences[i] ?? 0n) > (fences[i - 1] ?? 0n))
    })

    it('keeps every wait within the backoff cap over hours, and warns about slow waits once per threshold', async () => {
      const clock = new ManualClock()
      const logger = new RecordingLogger()
      const holder = h.clockedStore(clock) // renews all along
      const knex = h.connection({ poolMax: 1 })
      const waiter = h.clockedStore(clock, { logger, backoff: { initialDelayMs: 100, maxDelayMs: 5_000 } }, knex)
      const name = h.lockName('patient')
      const held = await holder.tryAcquireLock(name)
      assert.ok(held)
      const statementTimes: number[] = []
      const lookTimes: number[] = []
      // Attempts apart from the looks for releases by other processes, which have a pace of their own.
      knex.on('query', (query: object) => { (isLook(kindOf(query)) ? lookTimes : statementTimes).push(clock.now()) })
      // The clock must not move before the first attempt has been refused, or its first sleep
      // would start late and look like a gap over the cap.
      await waiter.init()
      const refused = new Promise<void>((resolve) => { const off = waiter.on('refused', () => { off(); resolve() }) })
      const waiting = waiter.acquireLock(name)
      waiting.catch(() => undefined) // awaited below; this keeps a failed assertion from leaving it unhandled
      await refused
      await new Promise((resolve) => setImmediate(resolve)) // the refused waiter goes to sleep
      const hours = 1
      await clock.advance(hours * 3_600_000)
      // An emulated attempt is two statements at the same instant: count instants.
      const attempts = [...new Set(statementTimes)]
      const gaps = attempts.slice(1).map((t, i) => t - (attempts[i] ?? t))
      assert.ok(gaps.length > 600, `${gaps.length} attempts`)
      const problems = logger.entries.filter((e) => !e.message.includes('still waiting')).map((e) => e.message)
      assert.ok(gaps.every((g) => g >= 1 && g <= 5_000), `largest gap ${Math.max(...gaps)} at ${gaps.findIndex((g) => g > 5_000)}; log: ${JSON.stringify(problems)}`)
      assert.ok(gaps.slice(-100).every((g) => g >= 4_500), 'at the cap, jitter stays within ±10 %')
      const warnings = logger.at('warn').filter((m) => m.includes('still waiting'))
      assert.ok(warnings.length >= hours * 6 - 1 && warnings.length <= hours * 6, `${warnings.length} warnings`)
      // Looks come every 50 ms while the wait is young, every second once it is 20 s old (and on
      // PostgreSQL, where releases are heard, every second once the listener is proven).
      const lookGaps = lookTimes.slice(1).map((t, i) => t - (lookTimes[i] ?? t))
      assert.ok(lookGaps.every((g) => g >= 50 && g <= 1_000), `look gaps from ${Math.min(...lookGaps)} to ${Math.max(...lookGaps)} ms`)
      if (h.target.database !== 'postgres') assert.equal(lookGaps[0], 50, 'a young wait looks every 50 ms')
      assert.ok(lookGaps.slice(-100).every((g) => g === 1_000), 'an old wait looks once a second')
      assert.ok(lookTimes.length >= 3_500 && lookTimes.length <= 3_900, `${lookTimes.length} looks in ${hours} h`)
      await held.release()
      assert.ok(await waiting)
    })
  })

  describe('callback forms', () => {
    it('accepts the forms without a key: (name, fn), (name, options) and (name, fn, options), with the empty key', async () => {
      const store = h.store()
      const name = h.lockName('no-key')
      assert.equal(await store.withLock(name, (lock) => `${lock.name}/${lock.key}`), `${name}/`)
      assert.equal(await store.withLock(name, (lock) => lock.key, { timeoutMs: 1_000 }), '')
      const outcome = await store.tryWithLock(name, (lock) => lock.key)
      assert.deepEqual(outcome, { acquired: true, value: '' })
      const lock = await store.acquireLock(name, { timeoutMs: 0 })
      assert.equal(lock.key, '')
      assert.deepEqual((await h.row(name))?.token, lock.token)
      await assert.rejects(store.acquireLock(name, { timeoutMs: 0 }), LockTimeoutError, 'the options were read: one try')
      await lock.release()
      await assert.rejects(store.acquireLock(name, { timeoutMs: 0 } as never, { timeoutMs: 0 }), TypeError)
      await assert.rejects(store.withLock(name, 'k' as never), /needs a function/)
      await assert.rejects(store.acquireLock(name, null as never), InvalidLockNameError)
    })

    it('runs withLock callbacks under the lock and always releases', async () => {
      const store = h.store()
      const other = h.store()
      const name = h.lockName()
      const value = await store.withLock(name, 'k', async (lock) => {
        assert.equal(await other.tryAcquireLock(name, 'k'), null)
        assert.equal(lock.signal.aborted, false)
        return 42
      })
      assert.equal(value, 42)
      await assert.rejects(store.withLock(name, 'k', () => { throw new Error('work failed') }), /work failed/)
      assert.ok(await other.tryAcquireLock(name, 'k'), 'released after the failure too')
    })

    it('tells "busy, skipped" from a result with tryWithLock, without an exception', async () => {
      const store = h.store()
      const name = h.lockName()
      assert.deepEqual(await store.tryWithLock(name, '', () => 'done'), { acquired: true, value: 'done' })
      const held = await h.store().tryAcquireLock(name)
      assert.ok(held)
      let ran = false
      assert.deepEqual(await store.tryWithLock(name, '', () => { ran = true }), { acquired: false })
      assert.equal(ran, false)
    })
  })
}
