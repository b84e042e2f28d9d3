import { performance } from 'node:perf_hooks'

/** An opaque handle returned by {@link Clock.setTimeout}. */
export type TimerHandle = unknown

/** The longest delay a Node.js timer can wait (about 24.8 days): every millisecond option stops here. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * A source of time and timers. A store given a Clock takes `now` from it (instead of the
 * database) and schedules its renewals with it, so a test can drive both with
 * {@link ManualClock}.
 */
export interface Clock {
  /** Milliseconds since the epoch. Must not go backwards. */
  now(): number
  /** Runs `callback` once, `delayMs` from now. If it returns a promise, the clock may wait for it. */
  setTimeout(callback: () => unknown, delayMs: number): TimerHandle
  /** Cancels a timer that has not run yet; ignores handles that already ran or are unknown. */
  clearTimeout(handle: TimerHandle): void
}

/**
 * The process clock. Its timers do not keep the process alive: a program that forgets
 * `store.close()` still exits, and its locks then time out.
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(callback, delayMs) {
    const timer = setTimeout(callback, delayMs)
    timer.unref()
    return timer
  },
  clearTimeout(handle) {
    clearTimeout(handle as NodeJS.Timeout)
  },
}

interface ManualTimer {
  readonly due: number
  readonly seq: number
  readonly callback: () => unknown
}

/**
 * A clock that moves only when told, for tests. Several stores may share one.
 *
 * ```ts
 * const clock = new ManualClock()
 * const store = new LockStore(knex, { clock })
 * await clock.advance(60_000) // runs every renewal due in that minute, in order
 * ```
 */
export class ManualClock implements Clock {
  #now: number
  #seq = 0
  #timers = new Map<number, ManualTimer>()
  #advancing: Promise<void> = Promise.resolve()

  /** @param startMs the initial time in milliseconds since the epoch. @default 1_700_000_000_000 */
  constructor(startMs = 1_700_000_000_000) {
    if (!Number.isSafeInteger(startMs) || startMs < 0) {
      throw new RangeError(`ManualClock startMs must be a non-negative safe integer, got ${String(startMs)}.`)
    }
    this.#now = startMs
  }

  now(): number {
    return this.#now
  }

  setTimeout(callback: () => unknown, delayMs: number): TimerHandle {
    const seq = ++this.#seq
    this.#timers.set(seq, { due: this.#now + Math.max(0, delayMs), seq, callback })
    return seq
  }

  clearTimeout(handle: TimerHandle): void {
    if (typeof handle === 'number') this.#timers.delete(handle)
  }

  /** How many timers are waiting to run. */
  get pendingTimers(): number {
    return this.#timers.size
  }

  /**
   * Moves time forward by `ms`, running every timer that falls due, in order of due time (and of
   * scheduling for equal times), including timers those timers schedule. Each timer's returned
   * promise is awaited before the next runs, so when this resolves the work they started (such
   * as renewals) has finished. Calls made while one is running queue behind it.
   */
  advance(ms: number): Promise<void> {
    if (!Number.isFinite(ms) || ms < 0) {
      return Promise.reject(new RangeError(`ManualClock.advance takes a non-negative number of milliseconds, got ${String(ms)}.`))
    }
    const run = this.#advancing.then(() => this.#advanceNow(ms))
    this.#advancing = run.catch(() => undefined)
    return run
  }

  async #advanceNow(ms: number): Promise<void> {
    const target = this.#now + ms
    for (let timer = this.#nextDue(target); timer; timer = this.#nextDue(target)) {
      this.#timers.delete(timer.seq)
      this.#now = Math.max(this.#now, timer.due)
      await timer.callback()
    }
    this.#now = target
  }

  #nextDue(limit: number): ManualTimer | undefined {
    let next: ManualTimer | undefined
    for (const timer of this.#timers.values()) {
      if (timer.due <= limit && (!next || timer.due < next.due || (timer.due === next.due && timer.seq < next.seq))) next = timer
    }
    return next
  }
}

/** The three uses of time in a store: the `now` it writes, its timers, and a clock that never jumps for deadlines. */
export interface StoreClocks {
  /** The time to write, in ms since the epoch, or `null` for the database's clock. */
  readonly nowMs: () => number | null
  readonly timers: Clock
  readonly monotonicNow: () => number
}

/** The clocks of a store with the `clock` option `option` (a test Clock is trusted never to jump). */
export function storeClocks(option: 'database' | 'local' | Clock): StoreClocks {
  if (typeof option === 'object') return { nowMs: () => option.now(), timers: option, monotonicNow: () => option.now() }
  return { nowMs: option === 'local' ? () => Date.now() : () => null, timers: systemClock, monotonicNow: () => performance.now() }
}
