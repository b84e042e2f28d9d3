import type { Knex } from 'knex'
import type { Db, StatementResult } from './executor.js'
import type { ReadWriteSql } from './read-write.js'

/** The database families worker-locks supports, as reported by `LockStore#dialect`. */
export type DialectName = 'postgres' | 'sqlite' | 'mysql'

/** The two ways of taking a lock: one native statement, or a delete of a stale row and an insert. */
export type Strategy = 'native' | 'emulated'

/** One acquisition attempt. Every field has been validated by the caller. */
export interface AcquireRequest {
  readonly table: string
  readonly name: string
  readonly key: string
  readonly instanceName: string
  readonly token: string
  /**
   * The lease this acquisition writes into the row (`lease_ms`). Whether an existing row may be
   * taken over is judged by the lease written in that row, never by this one.
   */
  readonly leaseMs: number
  /** The time to write, in ms since the epoch, or `null` for the database's clock in the same statement. */
  readonly nowMs: number | null
}

/** The identity of one held row: what token-guarded statements match on. */
export interface RowIdentity {
  readonly name: string
  readonly key: string
  readonly token: string
}

/** What an INSERT writes into `fence` (see `Dialect.insertFence`). */
export interface FenceSql {
  /** The SQL expression for `table`; `lock` gives the SQL of the lock's name and key. */
  sql(table: string, quote: (name: string) => string, lock: { readonly name: string; readonly key: string }): string
  /** Whether the expression uses `lock.name` and `lock.key` (once each, in that order). */
  readonly bindsLock: boolean
}

/** What a server can do, asked once per store. */
export interface ServerFacts {
  /** The server and version, e.g. `SQLite 3.49.1`. */
  readonly server: string
  /** Whether the one-statement acquire can run; `reason` says why not. */
  readonly native: boolean
  readonly reason: string
  /** Whether writes return their fence (`RETURNING`) instead of a `SELECT` after them. */
  readonly returning: boolean
  /** Why worker-locks cannot run on this server or session at all; empty when it can. */
  readonly unsupported: string
  /** Why this server or session takes no writes (saying "standby" or "read-only"); empty when it does. */
  readonly readOnly: string
  /** Whether the server is a standby (PostgreSQL in recovery). */
  readonly standby: boolean
  /**
   * Whether a read/write acquisition may run as the one statement of `readWrite.acquireInOne`:
   * on PostgreSQL, where the session's transactions run at READ COMMITTED (the routine's checks
   * must see holders committed while it waited for a key row).
   */
  readonly readWriteInOne: boolean
}

/**
 * Everything that differs between databases. `src/` talks to databases only through this
 * interface; statements that read the same everywhere (renew, status, list) are built there.
 */
export interface Dialect {
  readonly name: DialectName
  /** An SQL expression for the database clock as whole milliseconds since the epoch. */
  readonly nowSql: string
  /** Asks the server what it supports. */
  detect(db: Db): Promise<ServerFacts>
  /** The native acquire: the new fence when our row was written (inserted, or taken over from a stale row or our own instance), `null` when refused. */
  acquireNative(db: Db, request: AcquireRequest, facts: ServerFacts): Promise<bigint | null>
  /**
   * What an INSERT writes into `fence`, or `undefined` where a trigger fills it. A fence is drawn
   * only while the acquisition excludes every other acquisition of the same lock until it
   * commits, so fences grow in the order the database grants the lock.
   */
  readonly insertFence: FenceSql | undefined
  /** What an UPDATE that gives a row to a new holder writes into `fence` (the row is `t`), or `undefined` where a trigger does it. */
  takeoverFenceSql(table: string, quote: (name: string) => string): string | undefined
  /**
   * Deletes our row (token-guarded) and, where the database can, tells other processes in the
   * same statement, delivered once it has committed. Resolves whether the row was ours. With
   * `durable` false the commit need not wait for the disk where the database can do that for one
   * transaction (PostgreSQL).
   */
  release(db: Db, table: string, row: RowIdentity, durable: boolean): Promise<boolean>
  /** Runs first in the emulated transaction, taking locks in the order the native statement takes them, so stores of both strategies cannot deadlock. */
  emulatedPrelude?(db: Db, table: string, name: string, key: string): Promise<void>
  /** Settings of the emulated path's transaction, or `null` for two autocommit statements (both are correct: the primary key decides). */
  readonly emulatedTransaction: Knex.TransactionConfig | null
  /** Restricts a query on the lock table to `rows`, passed as one bound parameter however many there are. */
  restrictToRows(query: Knex.QueryBuilder, table: string, rows: readonly RowIdentity[]): Knex.QueryBuilder
  /** Cross-process release notifications, where the database has them (PostgreSQL's LISTEN/NOTIFY). */
  readonly notifications?: ReleaseNotifications
  /** The rows of a `knex.raw` result (each driver shapes it differently). */
  rowsOf(result: unknown): readonly Record<string, unknown>[]
  /**
   * What of the shipped migrations' objects beyond the lock table's columns is missing (tables,
   * triggers the database itself needs), or `''` when all are there. Asked once per store.
   * @default nothing more to check
   */
  missingObjects?(db: Db, table: string): Promise<string>
  /** The lock table, or a column a shipped migration adds, does not exist. */
  isMissingSchema(error: unknown): boolean
  /** The primary key already exists: another worker won the insert. */
  isUniqueViolation(error: unknown): boolean
  /** This transaction lost a race (deadlock, serialization failure) and may be retried. */
  isTransientConflict(error: unknown): boolean
  /** The statement was refused because the server, session or file takes no writes. */
  isReadOnly(error: unknown): boolean
  /** How read/write locks lock a key and draw its fence here (see `read-write.ts`). */
  readonly readWrite: ReadWriteSql
}

/**
 * What a listening connection hears: a release of the lock `(name, key)` (`readWrite`: of a
 * read/write holder of that name and key), its probe (see `ReleaseSubscription.probe`), or
 * something it ignored and why. Anyone may NOTIFY: a release heard is a hint to look at the row
 * again, never a grant.
 */
export type Heard =
  | { readonly kind: 'release'; readonly name: string; readonly key: string; readonly readWrite: boolean }
  | { readonly kind: 'probe' }
  | { readonly kind: 'ignored'; readonly why: string }

/** A dedicated connection (outside knex's pool) listening for a table's releases. Its socket never keeps the process alive. */
export interface ReleaseSubscription {
  /** Notifies the connection's own channel through knex's pool: `heard({ kind: 'probe' })` once it arrives. */
  probe(): Promise<void>
  close(): Promise<void>
}

/** Telling other processes that a lock was released. */
export interface ReleaseNotifications {
  /** Deletes many rows (token-guarded) and announces their release, in one statement. */
  releaseManyAndNotify(db: Db, table: string, rows: readonly RowIdentity[], durable: boolean): Promise<void>
  /** Deletes a read/write holder's row of `holders` (token-guarded) and announces it on lock table `table`'s channel; whether the row was there. */
  releaseHolderAndNotify(db: Db, table: string, holders: string, row: RowIdentity, durable: boolean): Promise<boolean>
  /** Announces that `(name, key)` was freed by other means (a forced release). */
  notifyReleased(db: Db, table: string, name: string, key: string): Promise<void>
  /**
   * Opens a connection listening for `table`'s releases: `heard` for each notification (never
   * throws from one), `closed` once if it fails or ends. `undefined`, having sent no LISTEN, when
   * the connection is not a server session of its own (a pooler in between), where a LISTEN would
   * stay on a server session that others share and this connection may never read again.
   */
  subscribe(knex: Knex, table: string, heard: (heard: Heard) => void, closed: (error: unknown) => void): Promise<ReleaseSubscription | undefined>
}

/** A driver error's code property, whatever its type. */
export function errorCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
}

/** The `now` of a request as a knex binding: the number, or the dialect's clock expression. */
export function nowBinding(knex: Knex, dialect: Dialect, nowMs: number | null): Knex.Raw | number {
  return nowMs === null ? knex.raw(dialect.nowSql) : nowMs
}

/** A fence as the driver returned it (number, numeric string, or bigint). */
export function toFence(value: unknown): bigint {
  if (typeof value === 'bigint') return value
  if (typeof value === 'number' || typeof value === 'string') return BigInt(value)
  throw new TypeError(`worker-locks: the database returned a fence of type ${typeof value}`)
}

/** The fence of a statement that ended in `RETURNING fence`: `null` when it wrote no row. */
export const returnedFence = (result: StatementResult): bigint | null => {
  const row = result.rows[0]
  return row === undefined ? null : toFence(row.fence)
}

/** `rows` as the one JSON parameter that `restrictToRows` binds: an array of [name, key, token]. */
export function rowsJson(rows: readonly RowIdentity[]): string {
  return JSON.stringify(rows.map((r) => [r.name, r.key, r.token]))
}
