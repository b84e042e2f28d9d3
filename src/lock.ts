import { LockLostError, type LockLossReason } from './errors.js'
import { resolveReleaseOptions, type ReleaseOptions } from './keeping.js'

/** What a Lock asks of the store that made it. Not part of the public API. */
export interface LockOwner {
  /** `keepForMs` > 0: keep the row taken that much longer instead of deleting it. */
  release(state: LockState, keepForMs: number): Promise<void>
  isStillValid(state: LockState): Promise<boolean>
}

/** How a lock is held: a plain lock (`exclusive`), or a read/write lock's `read` or `write` side. */
export type LockMode = 'exclusive' | 'read' | 'write'

/** The store's bookkeeping for one acquisition. It never references the Lock itself. */
export interface LockState {
  readonly id: string
  readonly mode: LockMode
  readonly name: string
  readonly key: string
  readonly token: string
  readonly fence: bigint
  /**
   * The controller of the Lock's signal, made when someone first reads `lock.signal` (most
   * short-lived locks never need one) and held weakly: an abort listener that refers to the Lock
   * (a common pattern) must not let the store's bookkeeping keep a dropped Lock alive.
   */
  controller: WeakRef<AbortController> | undefined
  state: 'held' | 'released' | 'lost'
  /** How the lock ended, once it has; the signal's reason is made from it. */
  loss: LockLoss | undefined
}

/** How a lock ended; `message` is built only if someone needs it. */
export interface LockLoss {
  readonly reason: LockLossReason
  readonly message: () => string
  readonly cause: unknown
}

/** The error a lock's signal aborts with. */
export function lossError(state: LockState, loss: LockLoss): LockLostError {
  return new LockLostError(loss.reason, state.name, state.key, loss.message(), loss.cause === undefined ? undefined : { cause: loss.cause })
}

/**
 * A held lock, as returned by `LockStore#tryAcquireLock`. While you hold it (and have not
 * released it) its store renews it in the background. Release it when done, or hold it with
 * `await using` so that leaving the block releases it.
 */
export class Lock {
  /** The lock's name, exactly as passed to acquire. */
  readonly name: string
  /** The lock's key, exactly as passed to acquire. */
  readonly key: string
  /**
   * `exclusive` for a lock from `tryAcquireLock`/`acquireLock`; `read` or `write` for a
   * read/write lock, whose namespace is separate from the plain locks'.
   */
  readonly mode: LockMode
  /** A random value unique to this acquisition; the database row carries it while it is ours. */
  readonly token: string
  /**
   * The fencing token: larger than the fence of every earlier acquisition of the same
   * `(name, key)`, by any worker, even across restarts and after the row was deleted. Send it
   * with every write to the resource the lock protects; the resource keeps the highest fence it
   * has seen and refuses writes that carry a lower one, which stops a holder that lost the lock
   * without knowing it.
   */
  readonly fence: bigint
  readonly #owner: LockOwner
  readonly #state: LockState
  #controller: AbortController | undefined

  /** @internal Locks are made by `LockStore`; constructing one yourself holds nothing. */
  constructor(owner: LockOwner, state: LockState) {
    this.name = state.name
    this.key = state.key
    this.mode = state.mode
    this.token = state.token
    this.fence = state.fence
    this.#owner = owner
    this.#state = state
  }

  /**
   * Aborts as soon as the store knows the lock is no longer held: another worker took it over
   * or its row was deleted (found by a renewal), no renewal succeeded for `lockTimeoutMs`, or it
   * was released. Its `reason` is a `LockLostError` saying which. Pass it to the work the lock
   * protects (`fetch(url, { signal })`, timers, your own loops) so that work stops with it.
   */
  get signal(): AbortSignal {
    if (!this.#controller) {
      const controller = new AbortController()
      this.#controller = controller
      const loss = this.#state.loss
      if (loss) controller.abort(lossError(this.#state, loss))
      else this.#state.controller = new WeakRef(controller)
    }
    return this.#controller.signal
  }

  /** `true` once the lock was lost without being released (see {@link signal}). */
  get lost(): boolean {
    return this.#state.state === 'lost'
  }

  /**
   * Asks the database whether this lock is still ours: its row exists with our token and was
   * renewed within its lease (the store's `lockTimeoutMs`). `false` after `release()`, after
   * another worker took the lock over, or once the row went stale. Call it in long loops before each step that must
   * not run twice.
   */
  isStillValid(): Promise<boolean> {
    return this.#owner.isStillValid(this.#state)
  }

  /**
   * Gives up the lock: deletes its row if it still carries our token (never another holder's),
   * or, when a waiter of the same store is next, hands the row to that waiter; stops renewing,
   * and aborts {@link signal}. When it resolves, this lock's token no longer holds the row. Safe
   * to call more than once; a call after a failed one tries the delete again. Rejects with a
   * `LockDatabaseError` if the database fails (`LockTableError` if the table is gone); the lock
   * then expires on its own.
   *
   * With `{ keepForMs }` the lock is not freed but kept taken, by no one, for that much longer
   * (see {@link ReleaseOptions}): for a job that must run once per slot of a schedule. There is
   * no hand-over then, and no waiter is woken. A kept lock's row stays until its time ends.
   * @throws TypeError or RangeError for bad options, before any SQL runs; the lock stays held
   */
  release(options?: ReleaseOptions): Promise<void> {
    let keepForMs: number
    try {
      keepForMs = resolveReleaseOptions(options)
    } catch (error) {
      return Promise.reject(error)
    }
    return this.#owner.release(this.#state, keepForMs)
  }

  /** Releases the lock; this is what `await using lock = …` calls when the block ends. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release()
  }
}
