// What the parts of one LockStore share (its database, table, bookkeeping and clocks), so that
// each part is handed one object instead of a dozen callbacks. Internal.
import type { Knex } from 'knex'
import type { Dialect, ServerFacts, Strategy } from '../dialects/index.js'
import type { Coordination } from './coordination/coordination.js'
import { LockDatabaseError, LockTableError } from './errors.js'
import type { LockEvents } from './events.js'
import type { HeldLocks } from './held-locks.js'
import type { LockTable } from './lock-table.js'
import type { LogLevel } from './logger.js'

/** What the server can do and which acquire statement the store uses: asked once per store. */
export interface ServerPlan {
  readonly strategy: Strategy
  readonly facts: ServerFacts
}

/** A lock as the parts of a store name it: its id in the store, and its name and key. */
export interface LockRef {
  readonly id: string
  readonly name: string
  readonly key: string
}

// Names and keys never contain NUL (validation refuses it), so this join is unambiguous.
export const lockId = (name: string, key: string): string => `${name}\0${key}`

/** How waits and this process's release bus know a read/write key: never a plain lock's id, which has no leading NUL. */
export const readWriteKeyId = (name: string, key: string): string => `\0rw\0${name}\0${key}`

export interface StoreContext {
  readonly knex: Knex
  readonly dialect: Dialect
  readonly table: LockTable
  /** The read/write holders' table (`<table>_rw_holders`). */
  readonly holders: LockTable
  readonly tableName: string
  readonly instanceName: string
  /** The lease this store writes into the rows it acquires. */
  readonly lockTimeoutMs: number
  readonly held: HeldLocks
  readonly events: LockEvents
  readonly coordination: Coordination
  /** The time to write, in ms since the epoch, or `null` for the database's clock. */
  nowMs(): number | null
  /** A clock that never jumps, for deadlines and durations. */
  monotonicNow(): number
  log(level: LogLevel, details: object, message: string): void
  /** Keeps `work` for `close()` to wait for. */
  track(work: Promise<unknown>): void
  isClosed(): boolean
}

/**
 * Runs one database call on the table `on` names, turning its failure into a LockTableError when
 * the table (or a migrated column) is missing, else a LockDatabaseError that says what the store
 * could not do (`what` is a function when it would cost work to build: the hot path only needs
 * it on failure). Chained rather than async/await, to add no promise of its own on the hot path.
 */
export function databaseCall<T>(on: { readonly tableName: string; readonly dialect: Dialect }, what: string | (() => string), run: () => Promise<T>): Promise<T> {
  const fail = (error: unknown): never => {
    if (on.dialect.isMissingSchema(error)) throw new LockTableError(on.tableName, error)
    const action = typeof what === 'string' ? what : what()
    throw new LockDatabaseError(`worker-locks could not ${action} in table ${JSON.stringify(on.tableName)}`, error)
  }
  try {
    return run().catch(fail)
  } catch (error) {
    return Promise.reject(error).catch(fail)
  }
}
