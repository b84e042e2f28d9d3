// Several read/write locks taken together, all or none.
import type { Lock } from './lock.js'

/**
 * The locks of one `tryAcquireMultiLock`/`acquireMultiLock`, held together: one `Lock` per
 * distinct `(name, key)` asked for, in the order asked (a pair asked for twice is one lock, in
 * write mode if either asked for it). Each part is renewed, can be lost, and carries its own
 * `fence`, as any lock.
 */
export class MultiLock {
  /** The parts, one per distinct `(name, key)`, in the order first asked for. */
  readonly locks: readonly Lock[]
  #controller: AbortController | undefined

  /** @internal Made by `LockStore`; constructing one yourself holds nothing. */
  constructor(locks: readonly Lock[]) {
    this.locks = locks
  }

  /**
   * Aborts as soon as any part's signal aborts (that part was lost, or released), with that
   * part's reason: the work the parts protect together must stop when one of them goes.
   */
  get signal(): AbortSignal {
    if (!this.#controller) {
      const controller = (this.#controller = new AbortController())
      const aborted = this.locks.find((lock) => lock.signal.aborted)
      if (aborted) controller.abort(aborted.signal.reason)
      else {
        for (const lock of this.locks) {
          lock.signal.addEventListener('abort', () => { if (!controller.signal.aborted) controller.abort(lock.signal.reason) }, { once: true })
        }
      }
    }
    return this.#controller.signal
  }

  /** Whether every part is still held, each asked of the database as `Lock#isStillValid` does. */
  async isStillValid(): Promise<boolean> {
    const valid = await Promise.all(this.locks.map((lock) => lock.isStillValid()))
    return valid.every(Boolean)
  }

  /**
   * Releases every part. Resolves once none of their tokens holds a row; rejects with the first
   * failure after trying them all (a part that could not be released expires on its own).
   */
  async release(): Promise<void> {
    const results = await Promise.allSettled(this.locks.map((lock) => lock.release()))
    const failed = results.find((result) => result.status === 'rejected')
    if (failed) throw failed.reason
  }

  /** Releases every part; what `await using` calls when the block ends. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release()
  }
}
