// The waiters of one store: a first-come-first-served queue per lock, whose head alone asks the
// database, backing off while the lock is busy; the others sleep until they are at the head.
import { backoffDelay, type Backoff } from './backoff.js'
import type { Clock, TimerHandle } from './clock.js'
import { LockDatabaseError, LockStoreClosedError, LockTimeoutError } from './errors.js'
import { describeLock } from './held-locks.js'
import type { Lock } from './lock.js'
import type { LogLevel } from './logger.js'
import type { LockRef } from './store-context.js'

/** How a wait ended. */
export type WaitOutcome = 'acquired' | 'timeout' | 'aborted' | 'closed'

/** What a wait resolves: a Lock, or a MultiLock. */
export interface Releasable {
  release(): Promise<void>
}

/** What a WaitRoom needs from its store. */
export interface WaitRoomOptions<T extends Releasable> {
  readonly timers: Clock
  readonly monotonicNow: () => number
  readonly backoff: Backoff
  readonly slowWaitWarningMs: number
  readonly log: (level: LogLevel, details: object, message: string) => void
  /**
   * One attempt (as `tryAcquireLock`); `alone` when no other waiter of the store waits for the
   * lock, `first` for the waiter's first attempt.
   */
  readonly attempt: (lock: LockRef, alone: boolean, first: boolean) => Promise<T | null>
  /** Called when the store's first waiter arrives (`true`) and when its last one leaves. */
  readonly occupied: (occupied: boolean) => void
  /** Called when the first waiter for `lock` arrives. */
  readonly waitingStarted: (lock: LockRef) => void
  /** Called when the last waiter for `lock` leaves. */
  readonly waitingEnded: (lock: LockRef) => void
  /** Called when a wait ends, however it ends. */
  readonly ended: (lock: LockRef, waitedMs: number, outcome: WaitOutcome) => void
}

interface Waiter<T> {
  readonly lock: LockRef
  /** Set once the waiter must give up; thrown by its loop. */
  stop: unknown
  /** A wake-up arrived while the waiter was not asleep; its next sleep returns at once. */
  woken: boolean
  /** Ends the current sleep early. */
  interrupt: (() => void) | undefined
  /** Resolves when the loop next falls asleep or ends: the work a sleep's timer started. */
  settled: { promise: Promise<void>; resolve: () => void } | undefined
  /** A lock being handed over to this waiter (see WaitRoom.handOver), or `null` if that failed. */
  claim: Promise<T | null> | undefined
  /** The database error of its last attempt, if that attempt failed: the cause of a timeout. */
  lastError: unknown
  /** Whether it has made an attempt. */
  attempted: boolean
}

/** One turn of a waiter's loop: the lock, or whether it made an attempt (and whether that failed). */
type Turn<T> = { lock: T } | { attempted: boolean; failed: boolean }

const MAX_TIMER_MS = 2 ** 31 - 1

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => { resolve = r })
  return { promise, resolve }
}

/**
 * The waiters of one store, in one first-come-first-served queue per lock. Only the head of a
 * queue asks the database, backing off while the lock is busy; the others sleep until they are
 * at the head. A release in this process wakes the head of that lock's queue at once (one
 * wake-up, however many wait), as does a release announced by another process.
 */
export class WaitRoom<T extends Releasable = Lock> {
  readonly #o: WaitRoomOptions<T>
  readonly #queues = new Map<string, Array<Waiter<T>>>()
  #count = 0
  // Callers of stopAll() waiting for the last wait to end.
  #emptied: Array<() => void> = []
  // Keeps the process alive while anyone waits (the store's own timers do not): a pending
  // acquireLock must settle, never vanish with a process that found nothing left to do.
  #keepAlive: NodeJS.Timeout | undefined

  constructor(options: WaitRoomOptions<T>) {
    this.#o = options
  }

  /** Wakes the first waiter for the lock `id`; `false` if nobody waits for it (or the first is giving up). */
  wake(id: string): boolean {
    const head = this.#queues.get(id)?.[0]
    if (!head || head.stop !== undefined) return false
    head.woken = true
    head.interrupt?.()
    return true
  }

  /**
   * Whether the first waiter for the lock `id` is asleep between attempts, so that the store may
   * hand it the lock directly with {@link handOver}.
   */
  canHandOver(id: string): boolean {
    const head = this.#queues.get(id)?.[0]
    return head !== undefined && head.interrupt !== undefined && head.stop === undefined && head.claim === undefined
  }

  /**
   * Gives the first waiter for `id` (asleep, see {@link canHandOver}) the lock `claim` resolves:
   * it wakes, makes no attempt of its own until `claim` settles, then takes the lock, or goes on
   * trying as before if `claim` resolves `null`. `claim` must not reject.
   */
  handOver(id: string, claim: Promise<T | null>): void {
    const head = this.#queues.get(id)?.[0]
    if (!head) return
    head.claim = claim
    head.interrupt?.()
  }

  /** Makes every waiter give up with `reason`; resolves once every wait has ended. */
  stopAll(reason: unknown): Promise<void> {
    for (const queue of this.#queues.values()) for (const waiter of queue) this.#stop(waiter, reason)
    if (this.#count === 0) return Promise.resolve()
    return new Promise((resolve) => this.#emptied.push(resolve))
  }

  /**
   * Waits until this store holds `lock`, `timeoutMs` has passed (LockTimeoutError, with the last
   * attempt's database error as `cause` if it failed), or `signal` aborts (its reason). A lock
   * won just as the wait ends is released before rejecting. `timeoutMs` 0 makes exactly one
   * attempt (if no other waiter of the store is ahead) and resolves the lock if it wins.
   */
  async wait(lock: LockRef, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
    const o = this.#o
    const waiter: Waiter<T> = { lock, stop: undefined, woken: false, interrupt: undefined, settled: undefined, claim: undefined, lastError: undefined, attempted: false }
    this.#enter(waiter)
    const started = o.monotonicNow()
    const timedOut = (): LockTimeoutError =>
      new LockTimeoutError(lock.name, lock.key, timeoutMs, waiter.lastError === undefined ? undefined : { cause: waiter.lastError })
    const onAbort = (): void => this.#stop(waiter, signal?.reason)
    signal?.addEventListener('abort', onAbort, { once: true })
    const timeout = this.#startTimeout(waiter, timeoutMs, timedOut)
    let outcome: WaitOutcome = 'aborted'
    try {
      const won = await this.#loop(waiter, started, timeoutMs, timedOut)
      outcome = 'acquired'
      return won
    } catch (error) {
      if (error instanceof LockTimeoutError) outcome = 'timeout'
      else if (error instanceof LockStoreClosedError) outcome = 'closed'
      throw error
    } finally {
      o.ended(lock, o.monotonicNow() - started, outcome)
      if (timeout !== undefined) o.timers.clearTimeout(timeout)
      signal?.removeEventListener('abort', onAbort)
      this.#leave(waiter)
      waiter.settled?.resolve()
    }
  }

  // No timer for 0: it would fire while the one attempt is under way and throw its win away.
  #startTimeout(waiter: Waiter<T>, timeoutMs: number, timedOut: () => LockTimeoutError): TimerHandle | undefined {
    if (!Number.isFinite(timeoutMs) || timeoutMs === 0) return undefined
    return this.#o.timers.setTimeout(() => {
      this.#stop(waiter, timedOut())
      return waiter.settled?.promise
    }, timeoutMs)
  }

  /** Turns until the waiter holds the lock; throws why it gave up. */
  async #loop(waiter: Waiter<T>, started: number, timeoutMs: number, timedOut: () => LockTimeoutError): Promise<T> {
    const deadline = started + timeoutMs
    let grown = 0
    let warnedAt = started
    for (;;) {
      const turn = await this.#turn(waiter)
      if ('lock' in turn) return this.#keep(waiter, turn.lock)
      if (turn.attempted) {
        if (this.#o.monotonicNow() >= deadline) throw timedOut()
        const delay = Math.min(backoffDelay(this.#o.backoff, grown), deadline - this.#o.monotonicNow())
        // Only a wait that ran its full length grows the next one; a wake-up never does.
        if (await this.#sleep(waiter, delay) === 'elapsed' || turn.failed) grown++
      } else {
        // Others of this store wait for the lock first: one try now is no try at all.
        if (timeoutMs === 0) throw timedOut()
        await this.#sleep(waiter, this.#o.slowWaitWarningMs)
      }
      warnedAt = this.#warnIfSlow(waiter, started, warnedAt)
    }
  }

  /**
   * One turn: a lock handed over comes first, then (unless the waiter must give up) an attempt
   * if the waiter is at the head of its queue. A database error is reported and counts as a
   * refusal: a waiter never spins on a failing database.
   */
  async #turn(waiter: Waiter<T>): Promise<Turn<T>> {
    if (waiter.claim) {
      const handed = await waiter.claim
      waiter.claim = undefined
      if (handed) return { lock: handed }
    }
    if (waiter.stop !== undefined) throw waiter.stop
    const queue = this.#queues.get(waiter.lock.id)
    if (queue?.[0] !== waiter) return { attempted: false, failed: false }
    const first = !waiter.attempted
    waiter.attempted = true
    try {
      const won = await this.#o.attempt(waiter.lock, queue.length === 1, first)
      waiter.lastError = undefined
      return won ? { lock: won } : { attempted: true, failed: false }
    } catch (error) {
      if (!(error instanceof LockDatabaseError)) throw error
      waiter.lastError = error
      const { name, key } = waiter.lock
      this.#o.log('warn', { err: error, lockName: name, lockKey: key }, `worker-locks: an attempt to acquire ${describeLock(name, key)} failed while waiting; retrying after a pause.`)
      return { attempted: true, failed: true }
    }
  }

  /** The lock a turn won, unless the wait ended meanwhile: then it is released and the reason thrown. */
  async #keep(waiter: Waiter<T>, lock: T): Promise<T> {
    if (waiter.stop === undefined) return lock
    const { name, key } = waiter.lock
    await lock.release().catch((error: unknown) =>
      this.#o.log('warn', { err: error, lockName: name, lockKey: key }, 'worker-locks: could not release a lock won as its wait ended; it will expire.'))
    throw waiter.stop
  }

  #warnIfSlow(waiter: Waiter<T>, started: number, warnedAt: number): number {
    const now = this.#o.monotonicNow()
    if (now - warnedAt < this.#o.slowWaitWarningMs) return warnedAt
    const { name, key } = waiter.lock
    this.#o.log('warn', { lockName: name, lockKey: key, waitedMs: now - started },
      `worker-locks: still waiting for lock ${describeLock(name, key)} after ${Math.round(now - started)} ms.`)
    return now
  }

  #stop(waiter: Waiter<T>, reason: unknown): void {
    if (waiter.stop !== undefined) return
    waiter.stop = reason ?? new Error('aborted')
    waiter.interrupt?.()
  }

  #sleep(waiter: Waiter<T>, ms: number): Promise<'elapsed' | 'woken'> {
    waiter.settled?.resolve() // the work the previous timer started ends here
    waiter.settled = deferred()
    if (waiter.woken || waiter.stop !== undefined) {
      waiter.woken = false
      return Promise.resolve('woken')
    }
    const settled = waiter.settled
    return new Promise((resolve) => {
      const timer = this.#o.timers.setTimeout(() => {
        waiter.interrupt = undefined
        resolve('elapsed')
        return settled.promise
      }, Math.max(0, ms))
      waiter.interrupt = () => {
        waiter.interrupt = undefined
        this.#o.timers.clearTimeout(timer)
        waiter.woken = false
        resolve('woken')
      }
    })
  }

  #enter(waiter: Waiter<T>): void {
    const queue = this.#queues.get(waiter.lock.id)
    if (queue) queue.push(waiter)
    else {
      this.#queues.set(waiter.lock.id, [waiter])
      this.#o.waitingStarted(waiter.lock)
    }
    if (this.#count++ === 0) {
      this.#keepAlive = setInterval(() => undefined, MAX_TIMER_MS)
      this.#o.occupied(true)
    }
  }

  #leave(waiter: Waiter<T>): void {
    const id = waiter.lock.id
    const queue = this.#queues.get(id)
    const index = queue?.indexOf(waiter) ?? -1
    if (!queue || index < 0) return
    queue.splice(index, 1)
    if (queue.length === 0) {
      this.#queues.delete(id)
      this.#o.waitingEnded(waiter.lock)
    }
    // A new head starts trying at once.
    else if (index === 0) this.wake(id)
    if (--this.#count === 0) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = undefined
      this.#o.occupied(false)
      for (const resolve of this.#emptied.splice(0)) resolve()
    }
  }
}
