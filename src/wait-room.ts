import { backoffDelay, type Backoff } from './backoff.js'
import type { Clock } from './clock.js'
import { LockDatabaseError, LockStoreClosedError, LockTimeoutError } from './errors.js'
import { describeLock } from './held-locks.js'
import type { Lock } from './lock.js'
import type { LogLevel } from './logger.js'

/** What a WaitRoom needs from its store. */
export interface WaitRoomOptions {
  readonly timers: Clock
  readonly monotonicNow: () => number
  readonly backoff: Backoff
  readonly slowWaitWarningMs: number
  readonly log: (level: LogLevel, details: object, message: string) => void
  /** One non-waiting attempt (`tryAcquireLock`); `alone` when no other waiter waits for the lock. */
  readonly attempt: (name: string, key: string, alone: boolean) => Promise<Lock | null>
  /** Called when the first waiter arrives and when the last one leaves. */
  readonly occupied: (occupied: boolean) => void
  /** Called when the first waiter for lock `id` (`name`, `key`) arrives; returns what to call when the last one leaves. */
  readonly waitingFor: (id: string, name: string, key: string) => () => void
  /** Called when a wait ends, however it ends. */
  readonly ended: (name: string, key: string, waitedMs: number, outcome: 'acquired' | 'timeout' | 'aborted' | 'closed') => void
}

interface Waiter {
  /** Set once the waiter must give up; thrown by its loop. */
  stop: unknown
  /** A wake-up arrived while the waiter was not asleep; its next sleep returns at once. */
  woken: boolean
  /** Ends the current sleep early. */
  interrupt: (() => void) | undefined
  /** Resolves when the loop next falls asleep or ends: the work a sleep's timer started. */
  settled: { promise: Promise<void>; resolve: () => void } | undefined
  /** A lock being handed over to this waiter (see WaitRoom.handOver), or `null` if that failed. */
  claim: Promise<Lock | null> | undefined
  /** The database error of its last attempt, if that attempt failed: the cause of a timeout. */
  lastError: unknown
}

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
export class WaitRoom {
  readonly #o: WaitRoomOptions
  readonly #queues = new Map<string, Waiter[]>()
  readonly #stopWaitingFor = new Map<string, () => void>()
  #count = 0
  // Callers of stopAll() waiting for the last wait to end.
  #emptied: Array<() => void> = []
  // Keeps the process alive while anyone waits (the store's own timers do not): a pending
  // acquireLock must settle, never vanish with a process that found nothing left to do.
  #keepAlive: NodeJS.Timeout | undefined

  constructor(options: WaitRoomOptions) {
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
  handOver(id: string, claim: Promise<Lock | null>): void {
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
   * Waits until this store holds the lock, `timeoutMs` has passed (LockTimeoutError, with the
   * last attempt's database error as `cause` if it failed), or `signal` aborts (its reason). A
   * lock won just as the wait ends is released before rejecting. `timeoutMs` 0 makes exactly one
   * attempt (once the waiters before it are done) and resolves the lock if it wins.
   */
  async wait(id: string, name: string, key: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<Lock> {
    const o = this.#o
    const waiter: Waiter = { stop: undefined, woken: false, interrupt: undefined, settled: undefined, claim: undefined, lastError: undefined }
    this.#enter(id, name, key, waiter)
    const started = o.monotonicNow()
    const deadline = started + timeoutMs
    const timedOut = (): LockTimeoutError =>
      new LockTimeoutError(name, key, timeoutMs, waiter.lastError === undefined ? undefined : { cause: waiter.lastError })
    const onAbort = (): void => this.#stop(waiter, signal?.reason)
    signal?.addEventListener('abort', onAbort, { once: true })
    // No timer for 0: it would fire while the one attempt is under way and throw its win away.
    const timeout = Number.isFinite(timeoutMs) && timeoutMs > 0
      ? o.timers.setTimeout(() => {
        this.#stop(waiter, timedOut())
        return waiter.settled?.promise
      }, timeoutMs)
      : undefined
    let grown = 0
    let warnedAt = started
    let outcome: 'acquired' | 'timeout' | 'aborted' | 'closed' = 'aborted'
    try {
      for (;;) {
        // A lock handed over comes before giving up: one won as the wait ends is released below.
        let lock: Lock | null = null
        let failed = false
        if (waiter.claim) {
          lock = await waiter.claim
          waiter.claim = undefined
        }
        if (!lock && waiter.stop !== undefined) throw waiter.stop
        const attempting = !lock && this.#queues.get(id)?.[0] === waiter
        if (attempting) {
          try {
            lock = await o.attempt(name, key, this.#queues.get(id)?.length === 1)
            waiter.lastError = undefined
          } catch (error) {
            // Never spin on a failing database: report, then back off like a refusal.
            if (!(error instanceof LockDatabaseError)) throw error
            failed = true
            waiter.lastError = error
            o.log('warn', { err: error, lockName: name, lockKey: key }, `worker-locks: an attempt to acquire ${describeLock(name, key)} failed while waiting; retrying after a pause.`)
          }
        }
        if (lock) {
          if (waiter.stop === undefined) {
            outcome = 'acquired'
            return lock
          }
          await lock.release().catch((error: unknown) =>
            o.log('warn', { err: error, lockName: name, lockKey: key }, 'worker-locks: could not release a lock won as its wait ended; it will expire.'))
          throw waiter.stop
        }
        if (attempting) {
          if (o.monotonicNow() >= deadline) throw timedOut()
          const delay = Math.min(backoffDelay(o.backoff, grown), deadline - o.monotonicNow())
          // Only a wait that ran its full length grows the next one; a wake-up never does.
          if (await this.#sleep(waiter, delay) === 'elapsed' || failed) grown++
        } else {
          // Others of this store wait for the lock first: one try now is no try at all.
          if (timeoutMs === 0) throw timedOut()
          await this.#sleep(waiter, o.slowWaitWarningMs)
        }
        const now = o.monotonicNow()
        if (now - warnedAt >= o.slowWaitWarningMs) {
          warnedAt = now
          o.log('warn', { lockName: name, lockKey: key, waitedMs: now - started },
            `worker-locks: still waiting for lock ${describeLock(name, key)} after ${Math.round(now - started)} ms.`)
        }
      }
    } catch (error) {
      if (error instanceof LockTimeoutError) outcome = 'timeout'
      else if (error instanceof LockStoreClosedError) outcome = 'closed'
      throw error
    } finally {
      o.ended(name, key, o.monotonicNow() - started, outcome)
      if (timeout !== undefined) o.timers.clearTimeout(timeout)
      signal?.removeEventListener('abort', onAbort)
      this.#leave(id, waiter)
      waiter.settled?.resolve()
    }
  }

  #stop(waiter: Waiter, reason: unknown): void {
    if (waiter.stop !== undefined) return
    waiter.stop = reason ?? new Error('aborted')
    waiter.interrupt?.()
  }

  #sleep(waiter: Waiter, ms: number): Promise<'elapsed' | 'woken'> {
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

  #enter(id: string, name: string, key: string, waiter: Waiter): void {
    const queue = this.#queues.get(id)
    if (queue) queue.push(waiter)
    else {
      this.#queues.set(id, [waiter])
      this.#stopWaitingFor.set(id, this.#o.waitingFor(id, name, key))
    }
    if (this.#count++ === 0) {
      this.#keepAlive = setInterval(() => undefined, MAX_TIMER_MS)
      this.#o.occupied(true)
    }
  }

  #leave(id: string, waiter: Waiter): void {
    const queue = this.#queues.get(id)
    if (!queue) return
    const index = queue.indexOf(waiter)
    if (index < 0) return
    queue.splice(index, 1)
    if (queue.length === 0) {
      this.#queues.delete(id)
      this.#stopWaitingFor.get(id)?.()
      this.#stopWaitingFor.delete(id)
    }
    // A new head starts trying at once; if the lock is ours it learns so without SQL.
    else if (index === 0) this.wake(id)
    if (--this.#count === 0) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = undefined
      this.#o.occupied(false)
      for (const resolve of this.#emptied.splice(0)) resolve()
    }
  }
}
