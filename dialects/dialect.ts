import type { Knex } from 'knex'

/** The database families worker-locks supports, as reported by `LockStore#dialect`. */
export type DialectName = 'postgres' | 'sqlite' | 'mysql'

/** One acquisition attempt. Every field has been validated by the caller. */
export interface AcquireRequest {
  readonly table: string
  readonly name: string
  readonly key: string
  readonly instanceName: string
  readonly token: string
  readonly lockTimeoutMs: number
  /**
   * The time to write, in milliseconds since the epoch, or `null` to read the database's own
   * clock inside the same statement (so that workers with skewed clocks agree).
   */
  readonly nowMs: number | null
}

/** Whether the one-statement acquire can run on the connected server, and what was seen. */
export interface NativeSupport {
  readonly supported: boolean
  /** The server and version that decided it, e.g. `SQLite 3.49.1`. */
  readonly server: string
  /** Why native is not possible; empty when it is. */
  readonly reason: string
}

/**
 * Everything that differs between databases. `src/` talks to databases only through this
 * interface; statements that are the same everywhere (release, renew, validity) live there.
 */
export interface Dialect {
  readonly name: DialectName
  /** An SQL expression for the database clock as whole milliseconds since the epoch. */
  readonly nowSql: string
  /** Most bound parameters one statement may carry on this database. */
  readonly maxBindings: number
  /** Asks the server whether the native acquire statement is available. */
  nativeSupport(knex: Knex): Promise<NativeSupport>
  /**
   * Runs the one-statement acquire. Resolves `true` only when this request's row was written
   * (inserted, or taken over from a stale row or from the same instance).
   */
  acquireNative(knex: Knex, request: AcquireRequest): Promise<boolean>
  /**
   * Transaction settings for the emulated path's delete and insert, or `null` to run them as two
   * autocommit statements. Both are correct: the insert's primary key alone decides who wins, and
   * the delete only removes a row that anyone may remove (stale, or this instance's own).
   */
  readonly emulatedTransaction: Knex.TransactionConfig | null
  /** The error says the primary key already exists: another worker won the insert. */
  isUniqueViolation(error: unknown): boolean
  /** The error says this transaction lost a race (deadlock, serialization failure) and may be retried. */
  isTransientConflict(error: unknown): boolean
}

/** Reads a driver error's code property whatever its type (string on pg and SQLite, string and number on mysql2). */
export function errorCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
}

/** The `now` value of a request as a knex binding: either the number or the dialect's clock expression. */
export function nowBinding(knex: Knex, dialect: Dialect, nowMs: number | null): Knex.Raw | number {
  return nowMs === null ? knex.raw(dialect.nowSql) : nowMs
}
