// What only a database that can announce releases to other processes offers (PostgreSQL's
// LISTEN/NOTIFY): an optional extension of the core Dialect (`Dialect.notifications`), typed
// here so that the core interface stays what every database must do.
import type { Knex } from 'knex'
import type { RowIdentity } from './dialect.js'

/**
 * What a listening store is told of a release: the lock `(name, key)` may be free now (with
 * `readWrite`, a holder of the read/write lock of that name and key left), and `addressed` when
 * the release picked this store as first in the waiting line. Only a hint to look at the row
 * again: it carries nothing that grants a lock, and may be forged or replayed.
 */
export type ReleaseHeard = (name: string, key: string, addressed: boolean, readWrite: boolean) => void

/** A dedicated connection listening for releases; see `ReleaseNotifications.listen`. */
export interface ReleaseSubscription {
  /** Ends the connection. */
  close(): Promise<void>
  /** Whether the open connection keeps the Node.js process running (it does at first). */
  keepProcessAlive(keep: boolean): void
}

/**
 * The line of stores, in all processes, that wait for each lock, oldest first. With it a release
 * wakes the one store whose turn it is rather than every listening process, which would all go
 * to the database for a lock only one can get. Places are hints, not a queue that decides who
 * gets the lock: the woken store still asks the row, and a release skips places whose listening
 * session is gone or that lapsed. A table without the line (dropped, or created by hand) works as
 * before: releases then wake every listening process.
 */
export interface WaitingLine {
  /** Whether `acquireNative` joins and leaves the line itself when the request carries `line`. */
  readonly inNativeAcquire: boolean
  /**
   * Puts store `waiter` in the line for `(name, key)`, or keeps its place if it is there, until
   * `expiresInMs` from now (by the database's clock) unless it joins again. The place counts only
   * while the store listens (see `ReleaseNotifications.listen`). Clears places of that lock that
   * no longer count on the way.
   */
  join(knex: Knex, table: string, waiter: string, name: string, key: string, expiresInMs: number): Promise<void>
  /** Takes store `waiter` out of the line for `(name, key)`. */
  leave(knex: Knex, table: string, waiter: string, name: string, key: string): Promise<void>
}

/** Telling other processes that a lock was released. */
export interface ReleaseNotifications {
  /** The line of waiting stores, where the database keeps one. */
  readonly line?: WaitingLine
  /** Deletes many rows (token-guarded) and announces their release, in one statement (`durable`: see `Dialect.release`). */
  releaseManyAndNotify(knex: Knex, table: string, rows: readonly RowIdentity[], durable?: boolean): Promise<void>
  /**
   * Deletes a read/write holder's row of `holders` (token-guarded) and announces it on the
   * channel of lock table `table`, in one statement; resolves whether the row was there.
   */
  releaseHolderAndNotify(knex: Knex, table: string, holders: string, row: RowIdentity, durable?: boolean): Promise<boolean>
  /** Announces that `(name, key)` was released by other means (a forced release). */
  notifyReleased(knex: Knex, table: string, name: string, key: string): Promise<void>
  /**
   * Opens a dedicated connection (outside knex's pool) that calls `onRelease` for every release
   * announced for `table` to every process, and for every release addressed to store `waiter`
   * (as first in the line; `addressed` is then true); `onIgnored` for a notification it could
   * not read (any session may send anything on these channels), and `onClosed` once if the
   * connection fails or ends. Never throws from a notification. `waiter` must be 16 hexadecimal
   * digits, unique to the store.
   */
  listen(
    knex: Knex, table: string, waiter: string, onRelease: ReleaseHeard, onIgnored: (why: string) => void, onClosed: (error: unknown) => void,
  ): Promise<ReleaseSubscription>
}

