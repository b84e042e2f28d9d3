/** What a Lock asks of the store that made it. Not part of the public API. */
export interface LockOwner {
  release(state: LockState): Promise<void>
  isStillValid(state: LockState): Promise<boolean>
}

/** The store's bookkeeping for one acquisition. It never references the Lock itself. */
export interface LockState {
  readonly id: string
  readonly name: string
  readonly key: string
  readonly token: string
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
  /** A random value unique to this acquisition; the database row carries it while it is ours. */
  readonly token: string
  readonly #owner: LockOwner
  readonly #state: LockState

  /** @internal Locks are made by `LockStore`; constructing one yourself holds nothing. */
  constructor(owner: LockOwner, state: LockState) {
    this.name = state.name
    this.key = state.key
    this.token = state.token
    this.#owner = owner
    this.#state = state
  }

  /**
   * Asks the database whether this lock is still ours: its row exists with our token and is not
   * older than the store's `lockTimeoutMs`. `false` after `release()`, after another worker took
   * the lock over, or once the row went stale. Call it in long loops before each step that must
   * not run twice.
   */
  isStillValid(): Promise<boolean> {
    return this.#owner.isStillValid(this.#state)
  }

  /**
   * Deletes the lock's row if it still carries our token (never another holder's), and stops
   * renewing. Safe to call more than once; a call after a failed one tries the delete again.
   * Rejects with a `LockDatabaseError` if the database fails; the lock then expires on its own.
   */
  release(): Promise<void> {
    return this.#owner.release(this.#state)
  }

  /** Releases the lock; this is what `await using lock = …` calls when the block ends. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release()
  }
}
