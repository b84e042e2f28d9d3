// How the waiters of one store learn that a lock may be free, and what an attempt tells the
// others. One small interface, chosen once per store from what its database can do: in this
// process only (local.ts), or also across processes (postgres.ts). Whatever it hears is a hint
// to look at the row again; it never grants a lock.
import type { LineRequest, Strategy } from '../../dialects/index.js'
import type { LockRef } from '../store-context.js'

export interface Coordination {
  /** Whether a release of this store wakes only the first in the waiting line (see `Dialect.release`). */
  readonly wakesLine: boolean
  /** The store has asked the server which acquire statement it uses. */
  planned(strategy: Strategy): void
  /** The store's first waiter arrived (`true`), or its last one left (`false`). */
  occupied(occupied: boolean): void
  /** The first waiter of this store for `lock` arrived. */
  waitingStarted(lock: LockRef): void
  /** The last waiter of this store for `lock` left. */
  waitingEnded(lock: LockRef): void
  /**
   * A waiter's attempt for `lock` is about to be sent (`alone`: no other waiter of this store
   * waits for it). Resolves what the acquiring statement carries for the waiting line, if the
   * statement keeps it.
   */
  beforeAttempt(lock: LockRef, alone: boolean): Promise<LineRequest | undefined> | undefined
  /** How that attempt ended (`line`: what it carried). */
  afterAttempt(lock: LockRef, line: LineRequest | undefined, won: boolean): void
  /** A wait for `lock` ended, with the lock (`acquired`) or without. */
  waitEnded(lock: LockRef, acquired: boolean): void
  /** A release (or forced release) of `lock` by this store has committed: the lock is free. */
  released(lock: LockRef): void
  /** Stops listening and leaves the line; resolves once done. */
  close(): Promise<void>
}
