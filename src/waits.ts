// The waits of one store, for plain, read/write and multi-locks alike: the caller passes its
// attempt as a function. Waits for the same lock queue first come, first served; only the head
// attempts, backing off while the lock is busy, and a wake-up (see wakeups.ts) sends it back at
// once. A wait ends with the lock, at its deadline, when its signal aborts, or when the store closes.
import { stoppedAtBound, type Bound } from '../dialects/index.js'
import { backoffDelay, type Backoff } from './backoff.js'
import { MAX_TIMER_MS, type StoreClocks, type TimerHandle } from './clock.js'
import { LockDatabaseError, LockStoreClosedError, LockTimeoutError } from './errors.js'
import type { LockEvents } from './events.js'
import { describeLock } from './held-locks.js'
import type { Log } from './logger.js'
import type { Wakeups } from './wakeups.js'

/** One wait: what it waits for and how it tries. */
export interface WaitRequest<T> {
  /** Its lock among the store's waits: waits with the same id take turns, first come first served. */
  readonly id: string
  /** The ids (see wakeups.ts) whose release may let it in: the lock's, or each part's of a multi-lock. */
  readonly wakeIds: readonly string[]
  /** How events name the lock. */
  readonly name: string
  readonly key: string
  /** How a timeout's message names what was waited for (`lock "n" (key "k")`, the write side of …). */
  readonly what?: string
  readonly timeoutMs: number
  readonly signal: AbortSignal | undefined
  /**
   * One attempt within `bound`, whose signal aborts when the wait ends: what it won, or `null` if
   * the lock is busy. An attempt that wins after its wait ended is released.
   */
  attempt(bound: Bound): Promise<T | null>
}

export interface WaitsOptions {
  readonly clocks: StoreClocks
  readonly backoff: Backoff
  readonly slowWaitWarningMs: number
  readonly log: Log
  readonly events: LockEvents
  readonly wakeups: Wakeups
}

// What a waiter's `stop` holds when its deadline passed: the LockTimeoutError is made when thrown,
// with the cause known by then.
const TIMED_OUT = Symbol('timed out')

// How long a wait that ends with an attempt under way gives that attempt, cancelled with it, to
// say what held it up (it becomes the timeout's cause) before the wait settles anyway.
const REPORT_MS = 100

interface Waiter {
  readonly request: WaitRequest<unknown>
  /** Set once the waiter must give up (TIMED_OUT, or the reason to throw). */
  stop: unknown
  /** Resolves when `stop` is set; aborts the attempt under way. */
  readonly stopped: { promise: Promise<void>; resolve: () => void }
  readonly abort: AbortController
  /** A wake-up came while it was not asleep: its next sleep returns at once. */
  woken: boolean
  /** Ends the current sleep early. */
  interrupt: (() => void) | undefined
  /** Resolves when the loop next falls asleep or ends: what a sleep's timer started (for a ManualClock). */
  settled: { promise: Promise<void>; resolve: () => void } | undefined
  /** The database error of its last attempt, if it failed: the cause of a timeout. */
  lastError: unknown
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => { resolve = r })
  return { promise, resolve }
}

export class Waits {
  readonly #o: WaitsOptions
  readonly #queues = new Map<string, { waiters: Waiter[]; unsubscribe: Array<() => void> }>()
  #count = 0
  #emptied: Array<() => void> = []
  // Keeps the process alive while anyone waits (the store's timers do not): a pending wait must
  // settle, never vanish with a process that found nothing left to do.
  #keepAlive: NodeJS.Timeout | undefined

  constructor(options: WaitsOptions) {
    this.#o = options
  }

  /**
   * Waits until `request.attempt` wins, the deadline passes (LockTimeoutError, with the last
   * attempt's database error as `cause`), or the signal aborts (its reason). A lock won just as
   * the wait ends is released first. `timeoutMs` 0 makes exactly one attempt, none when a wait
   * of the store for the same lock is ahead.
   */
  async wait<T extends { release(): Promise<void> }>(request: WaitRequest<T>): Promise<T> {
    const o = this.#o
    const waiter: Waiter = {
      request, stop: undefined, stopped: deferred(), abort: new AbortController(), woken: false, interrupt: undefined, settled: undefined, lastError: undefined,
    }
    this.#enter(waiter)
    const started = o.clocks.monotonicNow()
    const onAbort = (): void => this.#stop(waiter, request.signal?.reason)
    request.signal?.addEventListener('abort', onAbort, { once: true })
    // No timer for 0: it would fire during the one attempt and throw its win away.
    const timeout: TimerHandle | undefined = Number.isFinite(request.timeoutMs) && request.timeoutMs > 0
      ? o.clocks.timers.setTimeout(() => {
        this.#stop(waiter, TIMED_OUT)
        return waiter.settled?.promise
      }, request.timeoutMs)
      : undefined
    let outcome: 'acquired' | 'timeout' | 'aborted' | 'closed' = 'aborted'
    try {
      const won = await this.#loop(waiter, started) as T
      if (waiter.stop !== undefined) {
        await this.#undo(waiter, won)
        throw this.#reason(waiter)
      }
      outcome = 'acquired'
      return won
    } catch (error) {
      if (error instanceof LockTimeoutError) outcome = 'timeout'
      else if (error instanceof LockStoreClosedError) outcome = 'closed'
      throw error
    } finally {
      o.events.emit('waited', { name: request.name, key: request.key, waitedMs: o.clocks.monotonicNow() - started, outcome })
      if (timeout !== undefined) o.clocks.timers.clearTimeout(timeout)
      request.signal?.removeEventListener('abort', onAbort)
      this.#leave(waiter)
      waiter.settled?.resolve()
    }
  }

  /** Makes every wait give up with `reason`; resolves once all have ended. */
  stopAll(reason: unknown): Promise<void> {
    for (const { waiters } of this.#queues.values()) for (const waiter of waiters) this.#stop(waiter, reason)
    return this.#count === 0 ? Promise.resolve() : new Promise((resolve) => this.#emptied.push(resolve))
  }

  /** The error a stopped wait rejects with. */
  #reason(waiter: Waiter): unknown {
    if (waiter.stop !== TIMED_OUT) return waiter.stop
    const { name, key, timeoutMs, what } = waiter.request
    return new LockTimeoutError(name, key, timeoutMs, { what, ...(waiter.lastError === undefined ? {} : { cause: waiter.lastError }) })
  }

  /**
   * Keeps an attempt's failure as the cause a timeout will give, except an attempt cut short at its
   * bound (the wait's deadline) after one that failed on its own: that failure says more (say, the
   * connection refused) than "no answer within 2 ms" does.
   */
  #failed(waiter: Waiter, error: LockDatabaseError): void {
    if (stoppedAtBound(error) && waiter.lastError instanceof LockDatabaseError && !stoppedAtBound(waiter.lastError)) return
    waiter.lastError = error
  }

  /** Releases what an attempt won after its wait ended. */
  async #undo(waiter: Waiter, won: unknown): Promise<void> {
    const { name, key } = waiter.request
    await (won as { release(): Promise<void> } | null)?.release().catch((error: unknown) => this.#o.log('warn', { err: error, lockName: name, lockKey: key },
      'worker-locks: could not release a lock won as its wait ended; it will expire.'))
  }

  /**
   * One attempt, which ends the moment the wait is stopped: then it is cancelled (its signal) and
   * given REPORT_MS to say what held it up; whatever it wins after that is released.
   */
  async #attempt(waiter: Waiter, remainingMs: number): Promise<unknown> {
    const attempt = waiter.request.attempt({ withinMs: Number.isFinite(remainingMs) ? Math.max(1, remainingMs) : undefined, signal: waiter.abort.signal })
    const result = attempt.then((won) => ({ won }), (error: unknown) => ({ error }))
    const first = await Promise.race([result, waiter.stopped.promise.then(() => undefined)])
    if (first !== undefined) {
      if ('error' in first) throw first.error
      return first.won
    }
    const late = await Promise.race([result, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), REPORT_MS).unref())])
    if (late === undefined) {
      void attempt.then((won) => this.#undo(waiter, won), () => undefined)
      waiter.lastError ??= new Error(`an attempt was still under way ${REPORT_MS} ms after the wait ended (a statement blocked by another session, no free connection in the pool, or a server that does not answer); it was cancelled`)
    } else if ('error' in late) {
      if (late.error instanceof LockDatabaseError) this.#failed(waiter, late.error)
    } else {
      await this.#undo(waiter, late.won)
    }
    throw this.#reason(waiter)
  }

  /** Attempts until it wins; sleeps between attempts (backoff) and while others of its queue are ahead. */
  async #loop(waiter: Waiter, started: number): Promise<unknown> {
    const { request } = waiter
    const now = (): number => this.#o.clocks.monotonicNow()
    const deadline = started + request.timeoutMs
    let grown = 0
    let warnedAt = started
    for (;;) {
      if (waiter.stop !== undefined) throw this.#reason(waiter)
      if (this.#queues.get(request.id)?.waiters[0] !== waiter) {
        if (request.timeoutMs === 0) { // another wait is ahead: one try now is none
          waiter.stop = TIMED_OUT
          throw this.#reason(waiter)
        }
        await this.#sleep(waiter, this.#o.slowWaitWarningMs)
      } else {
        let failed = false
        try {
          // timeoutMs 0 is one attempt, as long as a statement may take; any other wait bounds it by its deadline.
          const won = await this.#attempt(waiter, request.timeoutMs === 0 ? Infinity : deadline - now())
          waiter.lastError = undefined
          if (won) return won
        } catch (error) {
          if (waiter.stop !== undefined) throw error
          // A failing database counts as a refusal (and never makes a waiter spin); anything else ends the wait.
          if (!(error instanceof LockDatabaseError)) throw error
          this.#failed(waiter, error)
          failed = true
          this.#o.log('warn', { err: error, lockName: request.name, lockKey: request.key }, `worker-locks: an attempt to acquire ${describeLock(request.name, request.key)} failed while waiting; retrying after a pause.`)
        }
        if (now() >= deadline) {
          waiter.stop = TIMED_OUT
          throw this.#reason(waiter)
        }
        // Only a sleep that ran its full length (or a failure) grows the next one; a wake-up never does.
        if (await this.#sleep(waiter, Math.min(backoffDelay(this.#o.backoff, grown), deadline - now())) === 'elapsed' || failed) grown++
      }
      if (now() - warnedAt >= this.#o.slowWaitWarningMs) {
        warnedAt = now()
        this.#o.log('warn', { lockName: request.name, lockKey: request.key, waitedMs: warnedAt - started },
          `worker-locks: still waiting for lock ${describeLock(request.name, request.key)} after ${Math.round(warnedAt - started)} ms.`)
      }
    }
  }

  #stop(waiter: Waiter, reason: unknown): void {
    if (waiter.stop !== undefined) return
    waiter.stop = reason ?? new Error('aborted')
    waiter.abort.abort()
    waiter.stopped.resolve()
    waiter.interrupt?.()
  }

  #wake(id: string): void {
    const head = this.#queues.get(id)?.waiters[0]
    if (!head || head.stop !== undefined) return
    head.woken = true
    head.interrupt?.()
  }

  #sleep(waiter: Waiter, ms: number): Promise<'elapsed' | 'woken'> {
    waiter.settled?.resolve() // the work the previous timer started ends here
    const settled = (waiter.settled = deferred())
    if (waiter.woken || waiter.stop !== undefined) {
      waiter.woken = false
      return Promise.resolve('woken')
    }
    return new Promise((resolve) => {
      const timer = this.#o.clocks.timers.setTimeout(() => {
        waiter.interrupt = undefined
        resolve('elapsed')
        return settled.promise
      }, Math.max(0, ms))
      waiter.interrupt = () => {
        waiter.interrupt = undefined
        waiter.woken = false
        this.#o.clocks.timers.clearTimeout(timer)
        resolve('woken')
      }
    })
  }

  #enter(waiter: Waiter): void {
    const { id, wakeIds } = waiter.request
    const queue = this.#queues.get(id)
    if (queue) queue.waiters.push(waiter)
    else this.#queues.set(id, { waiters: [waiter], unsubscribe: wakeIds.map((wakeId) => this.#o.wakeups.subscribe(wakeId, () => this.#wake(id))) })
    if (this.#count++ === 0) this.#keepAlive = setInterval(() => undefined, MAX_TIMER_MS)
  }

  #leave(waiter: Waiter): void {
    const id = waiter.request.id
    const queue = this.#queues.get(id)
    const index = queue?.waiters.indexOf(waiter) ?? -1
    if (!queue || index < 0) return
    queue.waiters.splice(index, 1)
    if (queue.waiters.length === 0) {
      this.#queues.delete(id)
      for (const unsubscribe of queue.unsubscribe) unsubscribe()
    } else if (index === 0) this.#wake(id) // the new head tries at once
    if (--this.#count === 0) {
      clearInterval(this.#keepAlive)
      for (const resolve of this.#emptied.splice(0)) resolve()
    }
  }
}
