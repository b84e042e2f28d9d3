/** Stable codes carried by every {@link LockError}; safe to switch on. */
export type LockErrorCode =
  | 'INVALID_LOCK_NAME'
  | 'UNSUPPORTED_DATABASE'
  | 'STORE_CLOSED'
  | 'DATABASE_ERROR'
  | 'LOCK_LOST'
  | 'LOCK_TIMEOUT'
  | 'TABLE_NOT_READY'
  | 'DATABASE_READ_ONLY'

/**
 * Base class of every error worker-locks raises itself. `code` is stable across versions;
 * messages are for people and may change. Option mistakes are reported as the built-in
 * `TypeError`/`RangeError` instead, like any misuse of a JavaScript API.
 */
export class LockError extends Error {
  /** Which kind of failure this is. */
  readonly code: LockErrorCode

  constructor(code: LockErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

/** A lock name or key is not a string, is empty (names only), too long, or holds a NUL or a lone surrogate. */
export class InvalidLockNameError extends LockError {
  constructor(message: string) {
    super('INVALID_LOCK_NAME', message)
  }
}

/** The knex client is not one worker-locks supports, or the requested strategy cannot run on this server. */
export class UnsupportedDatabaseError extends LockError {
  constructor(message: string) {
    super('UNSUPPORTED_DATABASE', message)
  }
}

/** The store was closed; it acquires nothing more. */
export class LockStoreClosedError extends LockError {
  constructor() {
    super('STORE_CLOSED', 'This LockStore has been closed; create a new one to acquire locks again.')
  }
}

/** The database failed a statement for a reason other than contention. The driver's error is `cause`. */
export class LockDatabaseError extends LockError {
  constructor(message: string, cause: unknown) {
    const detail = cause instanceof Error ? cause.message : String(cause)
    super('DATABASE_ERROR', `${message}: ${detail}`, { cause })
  }
}

/**
 * Why a held lock ended: `released` by `release()` or `store.close()`; `taken-over` when its row
 * was deleted or now carries another holder's token; `expired` when no renewal succeeded for
 * `lockTimeoutMs`, so another worker may have taken it.
 */
export type LockLossReason = 'released' | 'taken-over' | 'expired'

/** The reason of an aborted `lock.signal`: the lock is no longer held. */
export class LockLostError extends LockError {
  /** How the lock ended. */
  readonly reason: LockLossReason
  /** The lock's name. */
  readonly lockName: string
  /** The lock's key. */
  readonly lockKey: string

  constructor(reason: LockLossReason, lockName: string, lockKey: string, message: string, options?: { cause?: unknown }) {
    super('LOCK_LOST', message, options)
    this.reason = reason
    this.lockName = lockName
    this.lockKey = lockKey
  }
}

/**
 * A wait (`acquireLock`, `withLock`, the read/write and multi-lock waits) ran out of `timeoutMs`
 * without the lock. Nothing is held. `cause`, when there is one, says what held the last attempt
 * up: a `LockDatabaseError` (the database could not be asked, a statement blocked by another
 * session and cancelled, no free connection in the pool), or an error saying an attempt was still
 * under way; a lock that was simply busy has none. The message says so too.
 */
export class LockTimeoutError extends LockError {
  /** The lock's name. */
  readonly lockName: string
  /** The lock's key. */
  readonly lockKey: string
  /** How long the caller asked to wait, in milliseconds. */
  readonly timeoutMs: number

  /** @param options.what how the message names what was waited for @default `lock "name" (key "key")` */
  constructor(lockName: string, lockKey: string, timeoutMs: number, options?: { cause?: unknown; what?: string }) {
    const cause = options?.cause
    const failed = cause === undefined ? '' : `; the last attempt failed: ${cause instanceof Error ? cause.message : String(cause)}`
    const what = options?.what ?? `lock ${JSON.stringify(lockName)} (key ${JSON.stringify(lockKey)})`
    super('LOCK_TIMEOUT', `Timed out after ${timeoutMs} ms waiting for ${what}${failed}.`, cause === undefined ? undefined : { cause })
    this.lockName = lockName
    this.lockKey = lockKey
    this.timeoutMs = timeoutMs
  }
}

/**
 * The lock table does not exist, or lacks a column a shipped migration adds: run the migrations
 * (`worker-locks migrate`, `knex migrate:latest` with `migrationsDirectory`, or
 * `createLockTable`). Waiting does not retry it: it does not go away by itself. The driver's
 * error is `cause`.
 */
export class LockTableError extends LockError {
  /** The table that is missing or not migrated. */
  readonly tableName: string

  constructor(tableName: string, cause: unknown) {
    const detail = cause instanceof Error ? cause.message : String(cause)
    super('TABLE_NOT_READY', `The lock table ${JSON.stringify(tableName)} is missing or not fully migrated (${detail}); run "worker-locks migrate", your knex migrations with migrationsDirectory, or createLockTable().`, { cause })
    this.tableName = tableName
  }
}

/**
 * The server takes no writes, so no lock can be taken there: a PostgreSQL hot standby
 * (`standby` true), or a server, session or SQLite connection set read-only. `init()`, the first
 * acquire and `createLockTable` say so before any lock work; a statement that fails later because
 * the server became read-only says so too (its driver error is `cause`). Waits reject at once.
 */
export class ReadOnlyDatabaseError extends LockError {
  /** Whether the server is a standby (in recovery): connect to the primary instead. */
  readonly standby: boolean

  constructor(message: string, standby: boolean, options?: { cause?: unknown }) {
    super('DATABASE_READ_ONLY', message, options)
    this.standby = standby
  }
}
