import { LockLostError, type LockLossReason } from './errors.js'
import { optionsObject, wholeMs } from './validate.js'

/** How a lock is held: a plain lock (`exclusive`), or a read/write lock's `read` or `write` side. */
export type LockMode = 'exclusive' | 'read' | 'write'

/** Options of `Lock#release`. */
export interface ReleaseOptions {
  /**
   * Instead of freeing the lock now, keep it taken for this many more milliseconds: for that
   * long no worker can acquire it (this store and a restarted worker with the same `instanceName`
   * included), and after it anyone can. Nobody renews it meanwhile; `listLocks` shows it with an
   * empty `instanceName`. Plain locks only.
   * @default 0 (free the lock at once)
   */
  keepForMs?: number
}

/** How a lock ended; `message` is built only if someone needs it. */
export interface LockLoss {
  readonly reason: LockLossReason
  readonly message: () => string
  readonly cause: unknown
}

/** The store's bookkeeping for one acquisition. It holds its Lock only weakly, so a dropped one can be collected. */
export interface HeldLock {
  /** Its id among the store's held locks: a plain lock's `lockId`, a read/write holder's own. */
  readonly id: string
  readonly mode: LockMode
  readonly name: string
  readonly key: string
  readonly token: string
  readonly fence: bigint
  /** The Lock, set once it exists. */
  ref: WeakRef<Lock> | undefined
  /**
   * The controller of the Lock's signal, made when someone first reads `lock.signal`, and held
   * weakly: an abort listener that refers to the Lock must not keep a dropped Lock alive.
   */
  controller: WeakRef<AbortController> | undefined
  state: 'held' | 'released' | 'lost'
  loss: LockLoss | undefined
  releasing: Promise<void> | undefined
  /** Monotonic time at which the last write that succeeded (acquire or renewal) was sent. */
  renewedAt: number
  /** Monotonic time at which the lock was acquired. */
  readonly acquiredAt: number
}

/** What a Lock asks of the store that made it. Not part of the public API. */
export interface LockOwner {
  release(record: HeldLock, keepForMs: number): Promise<void>
  isStillValid(record: HeldLock): Promise<boolean>
}

/** The error a lock's signal aborts with. */
export function lossError(record: HeldLock, loss: LockLoss): LockLostError {
  return new LockLostError(loss.reason, record.name, record.key, loss.message(), loss.cause === undefined ? undefined : { cause: loss.cause })
}

/**
 * A held lock. While you hold it (and have not released it) its store renews it in the
 * background. Release it when done, or hold it with `await using` so that leaving the block
 * releases it.
 */
export class Lock {
  /** The lock's name, exactly as passed to acquire. */
  readonly name: string
  /** The lock's key, exactly as passed to acquire. */
  readonly key: string
  /** `exclusive` for a plain lock; `read` or `write` for a read/write lock, a namespace of its own. */
  readonly mode: LockMode
  /** A random value unique to this acquisition; the database row carries it while it is ours. */
  readonly token: string
  /**
   * The fencing token: larger than the fence of every earlier acquisition of the same
   * `(name, key)`, by any worker, even across restarts and after the row was deleted. Send it
   * with every write to the resource the lock protects, and let the resource refuse lower ones:
   * that stops a holder that lost the lock without knowing it.
   */
  readonly fence: bigint
  readonly #owner: LockOwner
  readonly #record: HeldLock
  #controller: AbortController | undefined

  /** @internal Locks are made by `LockStore`; constructing one yourself holds nothing. */
  constructor(owner: LockOwner, record: HeldLock) {
    this.name = record.name
    this.key = record.key
    this.mode = record.mode
    this.token = record.token
    this.fence = record.fence
    this.#owner = owner
    this.#record = record
    record.ref = new WeakRef(this)
  }

  /**
   * Aborts as soon as the store knows the lock is no longer held: another worker took it over
   * or its row was deleted (found by a renewal), no renewal succeeded for `lockTimeoutMs`, or it
   * was released. Its `reason` is a `LockLostError` saying which. Pass it to the work the lock
   * protects (`fetch(url, { signal })`, timers, your own loops) so that work stops with it.
   */
  get signal(): AbortSignal {
    if (!this.#controller) {
      const controller = (this.#controller = new AbortController())
      const loss = this.#record.loss
      if (loss) controller.abort(lossError(this.#record, loss))
      else this.#record.controller = new WeakRef(controller)
    }
    return this.#controller.signal
  }

  /** `true` once the lock was lost without being released (see {@link signal}). */
  get lost(): boolean {
    return this.#record.state === 'lost'
  }

  /**
   * Asks the database whether this lock is still ours: its row exists with our token and was
   * renewed within its lease. `false` after `release()`, after another worker took the lock
   * over, or once the row went stale. Call it in long loops before each step that must not run twice.
   */
  isStillValid(): Promise<boolean> {
    return this.#owner.isStillValid(this.#record)
  }

  /**
   * Gives up the lock: deletes its row if it still carries our token (never another holder's),
   * stops renewing, and aborts {@link signal}. When it resolves, this lock's token no longer
   * holds the row, and waiters of this process are woken. Safe to call more than once; a call
   * after a failed one tries again. Rejects with a `LockDatabaseError` if the database fails
   * (`LockTableError` if the table is gone); the lock then expires on its own.
   *
   * With `{ keepForMs }` the lock is not freed but kept taken, by no one, for that much longer
   * (see {@link ReleaseOptions}): for a job that must run once per slot of a schedule.
   * @throws TypeError or RangeError for bad options, before any SQL runs; the lock stays held
   */
  release(options?: ReleaseOptions): Promise<void> {
    try {
      const o = optionsObject(options, 'Lock#release', ['keepForMs'])
      return this.#owner.release(this.#record, wholeMs('Lock#release option keepForMs', o.keepForMs, 0))
    } catch (error) {
      return Promise.reject(error)
    }
  }

  /** Releases the lock; this is what `await using lock = …` calls when the block ends. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release()
  }
}
