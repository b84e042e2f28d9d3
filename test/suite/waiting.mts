// acquireLock, withLock and tryWithLock: waiting for a lock, driven by ManualClock.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidLockNameError, LockStoreClosedError, LockTimeoutError, ManualClock, type Lock, type LockStore } from '../../src/index.js'
import { isAcquire, isHandOver, isLineStatement, isRelease, kindOf, RecordingLogger, statementsDuring, type Harness } from '../harness.mjs'

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
 * A trigger that makes the database reject any UPDATE changing a row's token in the harness's
 * table (renewals, which keep the token, still work). Each database spells it its own way.
 */
function refuseTokenChanges(h: Harness): { install(): Promise<void>; remove(): Promise<void> } {
  const table = h.tableName
  const name = `${table}_refuse`
  switch (h.target.database) {
    case 'postgres':
      return {
        async install() {
          await h.knex.raw(`CREATE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'token changes refused'; END $$`, [name])
          await h.knex.raw('CREATE TRIGGER ?? BEFORE UPDATE ON ?? FOR EACH ROW WHEN (NEW.token <> OLD.token) EXECUTE FUNCTION ??()', [name, table, name])
        },
        async remove() {
          await h.knex.raw('DROP TRIGGER IF EXISTS ?? ON ??', [name, table])
          await h.knex.raw('DROP FUNCTION IF EXISTS ??()', [name])
        },
      }
    case 'mysql':
      return {
        install: async () => {
          await h.knex.raw(`CREATE TRIGGER ?? BEFORE UPDATE ON ?? FOR EACH ROW BEGIN
            IF NEW.token <> OLD.token THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'token changes refused'; END IF; END`, [name, table])
        },
        remove: async () => { await h.knex.raw('DROP TRIGGER IF EXISTS ??', [name]) },
      }
    case 'sqlite':
      return {
        install: async () => {
          await h.knex.raw(`CREATE TRIGGER ?? BEFORE UPDATE OF token ON ?? FOR EACH ROW WHEN NEW.token <> OLD.token
            BEGIN SELECT RAISE(ABORT, 'token changes refused'); END`, [name, table])
        },
        remove: async () => { await h.knex.raw('DROP TRIGGER IF EXISTS ??', [name]) },
      }
    default:
      throw new Error(`refuseTokenChanges has no trigger for ${String(h.target.database)}: add one with the new database`)
  }
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


/** The SQL text of every statement on the lock table run on the harness's connection while `fn` runs. */
// Without PostgreSQL's background joins and leaves of the waiting line.
const statements = <T,>(h: Harness, fn: () => Promise<T>): Promise<{ result: T; kinds: string[] }> =>
  statementsDuring(h.knex, fn, (kind) => !isLineStatement(kind))

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

  describe('hand-over within a store', () => {
    it(`hands a released lock straight to an asleep waiter of the same store: one UPDATE, a larger fence, then on to other stores`, async () => {
      const { holder, waiters, others: [other], name, held } = await heldForWaiters(h, 1)
      assert.ok(other)
      const waiting = await asleepWaiting(waiters, name)
      const elsewhere = await asleepWaiting(other, name)
      const events: string[] = []
      holder.on('released', (e) => events.push(`released ${e.name}`))
      waiters.on('acquired', (e) => events.push(`acquired ${e.name}`))
      waiters.on('refused', (e) => events.push(`refused ${e.name}`))
      const { result: lock, kinds } = await statements(h, async () => {
        await held.release()
        return waiting.lock
      })
      assert.deepEqual(kinds.filter((k) => isAcquire(k) || isRelease(k)), [], 'the row was neither deleted nor inserted')
      assert.equal(kinds.filter(isHandOver).length, 1)
      assert.deepEqual(events, [`released ${name}`, `acquired ${name}`], 'the waiter made no attempt of its own')
      assert.ok(lock.fence > held.fence)
      const row = await h.row(name)
      assert.equal(row?.token, lock.token)
      assert.equal(row.instance_name, waiters.instanceName, 'the row is its store\'s')
      assert.equal(await lock.isStillValid(), true)
      assert.equal(await held.isStillValid(), false)
      // No waiter of its own is left: the lock goes on to the other store's waiter.
      await lock.release()
      const next = await elsewhere.lock
      assert.ok(next.fence > lock.fence)
      assert.equal((await h.row(name))?.instance_name, other.instanceName)
    })

    it(`releases a lock handed to a waiter of the same store whose wait ended meanwhile, leaving it free`, async () => {
      const { waiters, name, held } = await heldForWaiters(h)
      const controller = new AbortController()
      const waiting = await asleepWaiting(waiters, name, controller.signal)
      const outcome = waiting.lock.then(() => 'acquired', (error: unknown) => error)
      const { kinds } = await statements(h, async () => {
        const releasing = held.release() // starts the hand-over
        controller.abort(new Error('gave up'))
        await releasing
        return outcome
      })
      assert.equal(kinds.filter(isHandOver).length, 1, 'the lock was handed over')
      assert.equal(((await outcome) as Error).message, 'gave up')
      assert.equal(await h.row(name), undefined, 'the handed-over lock was released, not left held')
      assert.ok(await waiters.tryAcquireLock(name))
    })

    it(`answers tryAcquireLock with null while a lock is being handed to a waiter of the same store, and close() waits for the hand-over`, async () => {
      const { waiters, name, held } = await heldForWaiters(h)
      const waiting = await asleepWaiting(waiters, name)
      const releasing = held.release() // starts the hand-over
      assert.equal(await waiters.tryAcquireLock(name), null, 'the lock is on its way to the waiter')
      await releasing
      assert.ok((await waiting.lock).fence > held.fence)

      // Closing while a hand-over is under way: the waiter is told the store closed, and the row
      // handed to it is deleted before close() resolves.
      const second = await heldForWaiters(h)
      const waiting2 = await asleepWaiting(second.waiters, second.name)
      const outcome2 = waiting2.lock.then((l) => l, (error: unknown) => error)
      const releasing2 = second.held.release()
      await second.waiters.close()
      assert.equal(await h.row(second.name), undefined, 'close() waited for the handed-over row to be deleted')
      await releasing2
      assert.ok(await outcome2 instanceof LockStoreClosedError)
      assert.equal(await h.row(second.name), undefined)
    })

    it(`falls back to deleting the row when a hand-over to the same store fails, and the waiter takes the lock itself`, async () => {
      const { waiters, name, held } = await heldForWaiters(h)
      const waiting = await asleepWaiting(waiters, name)
      // Make the database refuse any change of a row's token for a moment: the hand-over fails.
      const trigger = refuseTokenChanges(h)
      await trigger.install()
      try {
        const { kinds } = await statements(h, async () => {
          await held.release()
          return waiting.lock
        })
        assert.equal(kinds.filter(isHandOver).length, 1, 'a hand-over was tried')
        assert.ok(kinds.some(isRelease), 'then the row was deleted')
      } finally {
        await trigger.remove()
      }
      const lock = await waiting.lock
      assert.ok(lock.fence > held.fence)
      assert.equal((await h.row(name))?.token, lock.token)
      assert.equal(await held.isStillValid(), false)
    })

    it('finds a lock of its own store that was taken over meanwhile lost at its next attempt, and waits for the new holder', async () => {
      const { clock, store, others: [thief], name, held } = await heldInOneStore(h, 1)
      assert.ok(thief)
      // The row goes stale behind its holder's back (as if renewals had failed) and is taken over.
      await h.knex(h.tableName).where({ lock_name: name }).update({ last_renewed_ts: 0 })
      const stolen = await thief.tryAcquireLock(name)
      assert.ok(stolen)
      let acquired: Lock | undefined
      const { lock: waiting } = await asleepWaiting(store, name)
      void waiting.then((lock) => { acquired = lock })
      assert.equal(held.lost, false, 'the first attempt sent nothing: the store\'s own release would hand the lock over')
      const refusedAgain = new Promise<void>((resolve) => { const stop = store.on('refused', () => { stop(); resolve() }) })
      await clock.advance(1_000) // the next attempt, at the backoff's pace, checks the row
      await refusedAgain
      assert.equal(held.lost, true, 'the waiter\'s check of the row found the old lock lost')
      assert.equal((held.signal.reason as { reason?: string }).reason, 'taken-over')
      const { kinds } = await statements(h, () => held.release())
      assert.equal(kinds.filter(isHandOver).length, 0, 'a lost lock is not handed over')
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
          // Some waits give up at a random moment: while asleep, while a lock is handed to them…
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
      const { kinds } = await statements(h, () => Promise.all(Array.from({ length: 8 }, (_, t) => task(t))))
      running = false
      await time
      assert.deepEqual(problems, [])
      assert.ok(kinds.some(isHandOver), 'some locks were handed over')
      assert.equal(acquired + gaveUp, 8 * 15)
      assert.ok(acquired > 60, `only ${acquired} acquisitions`)
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
      // Attempts only: on PostgreSQL the waiter also keeps its place in the waiting line.
      knex.on('query', (query: { sql: string }) => { if (!isLineStatement(kindOf(query))) statementTimes.push(clock.now()) })
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
