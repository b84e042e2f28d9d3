import type { Knex } from 'knex'
import type { ReadWriteSql } from './read-write.js'
import { executorFor, statement } from './executor.js'
import type { ReleaseNotifications } from './notifications.js'

/** The database families worker-locks supports, as reported by `LockStore#dialect`. */
export type DialectName = 'postgres' | 'sqlite' | 'mysql'

/** One acquisition attempt. Every field has been validated by the caller. */
export interface AcquireRequest {
  readonly table: string
  readonly name: string
  readonly key: string
  readonly instanceName: string
  readonly token: string
  /**
   * The lease this acquisition writes into the row (`lease_ms`): how long the row stays held
   * without a renewal. Whether an existing row may be taken over is judged by the lease written
   * in that row, never by this one.
   */
  readonly leaseMs: number
  /**
   * The time to write, in milliseconds since the epoch, or `null` to read the database's own
   * clock inside the same statement (so that workers with skewed clocks agree).
   */
  readonly nowMs: number | null
  /**
   * Set when a waiter of the store makes the attempt and the dialect keeps the waiting line in
   * its native acquire (`WaitingLine.inNativeAcquire`): a refused attempt then puts the store in
   * line in the same statement, and a winning one takes it out if `leaveOnWin`.
   */
  readonly line?: LineRequest
}

/** See `AcquireRequest.line`. */
export interface LineRequest {
  /** The store's name in the line (see `WaitingLine.join`). */
  readonly waiter: string
  readonly expiresInMs: number
  /** Whether a win takes the store out of the line (it has no other waiter for the lock). */
  readonly leaveOnWin: boolean
}

/** The identity of one held row: what token-guarded statements match on. */
export interface RowIdentity {
  readonly name: string
  readonly key: string
  readonly token: string
}

/** What an INSERT writes into `fence` (see `Dialect.insertFence`). */
export interface FenceSql {
  /**
   * The SQL expression for `table`; `quote` quotes an identifier, and `lock` gives the SQL for
   * the lock's name and key (placeholders of the caller's choosing).
   */
  sql(table: string, quote: (name: string) => string, lock: { readonly name: string; readonly key: string }): string
  /** Whether the expression uses `lock.name` and `lock.key` (once each, in that order). */
  readonly bindsLock: boolean
}

/** What a server can do, asked once per store. */
export interface ServerFacts {
  /** The server and version, e.g. `SQLite 3.49.1`. */
  readonly server: string
  /** Whether the one-statement acquire can run. */
  readonly native: boolean
  /** Why native is not possible; empty when it is. */
  readonly reason: string
  /**
   * Whether `INSERT … RETURNING` works, upserts included: the acquire then hands back its fence
   * without a statement more. MariaDB has it, MySQL does not.
   */
  readonly insertReturning: boolean
  /** Whether `UPDATE … RETURNING` works too (not on MariaDB), so the hand-over hands back its fence. */
  readonly updateReturning: boolean
  /** Why worker-locks cannot run on this server or session at all; empty when it can. */
  readonly unsupported: string
}

/**
 * Everything that differs between databases. `src/` talks to databases only through this
 * interface; statements that read the same everywhere (release, renew, validity) live there.
 */
export interface Dialect {
  readonly name: DialectName
  /** An SQL expression for the database clock as whole milliseconds since the epoch. */
  readonly nowSql: string
  /** Whether knex can cancel a running statement on this database (`.timeout(ms, { cancel: true })`). */
  readonly cancelsQueries: boolean
  /** Asks the server what it supports. */
  detect(knex: Knex): Promise<ServerFacts>
  /**
   * Runs the native acquire: one statement (on MySQL, which has no `RETURNING`, one more to read
   * the fence of a win; `facts` says which). Resolves the new fence when this request's row was
   * written (inserted, or taken over from a stale row or from the same instance), `null` when refused.
   */
  acquireNative(knex: Knex, request: AcquireRequest, facts: ServerFacts): Promise<bigint | null>
  /**
   * What an INSERT of a new row writes into `fence`, or `undefined` where a trigger fills the
   * column. Every fence, of an insert or a takeover, is drawn only while this acquisition
   * excludes every other acquisition of the same lock until it commits (the database's write
   * lock, a per-lock lock, or a counter row), so fences grow in the order the database grants the
   * lock, never in the order statements happened to start.
   */
  readonly insertFence: FenceSql | undefined
  /**
   * The SQL expression an UPDATE that gives an existing row to a new holder writes into `fence`,
   * or `undefined` where a trigger does it. It may refer to the row's own columns as `t.lock_name`,
   * `t.lock_key` and `t.fence`: the statements alias the lock table `t`.
   */
  takeoverFenceSql(table: string, quote: (name: string) => string): string | undefined
  /**
   * Deletes our row (token-guarded) and, where the database can, tells waiting processes in the
   * same statement, delivered only once it has committed. With `line` (where `notifications.line`
   * exists) it wakes only the store of another process first in the line (never one of this
   * process, which wakes its own stores), or every process when the line is empty. Resolves
   * whether the row was ours. With `durable` false, its commit need not wait for the disk where
   * the database can do that for one transaction (PostgreSQL); elsewhere it is ignored.
   */
  release(knex: Knex, table: string, row: RowIdentity, line?: boolean, durable?: boolean): Promise<boolean>
  /**
   * Runs first in the emulated path's transaction, to take locks in the same order as the native
   * statement does, so that stores using different strategies on one table cannot deadlock.
   */
  emulatedPrelude?(knex: Knex, table: string, name: string, key: string): Promise<void>
  /**
   * The error says the lock table, or a column a shipped migration adds, does not exist: the
   * migrations have not run (or not all of them).
   */
  isMissingSchema(error: unknown): boolean
  /**
   * Restricts a query on the lock table to `rows` (matching name, key and token), passing them as
   * one bound parameter however many there are, so that renewing or releasing many locks is one
   * statement. The query stays usable for `update`, `delete` and `select`.
   */
  restrictToRows(query: Knex.QueryBuilder, table: string, rows: readonly RowIdentity[]): Knex.QueryBuilder
  /**
   * Cross-process release notifications, where the database has them (PostgreSQL's
   * LISTEN/NOTIFY). Without them, waiters in other processes find a released lock by polling.
   */
  readonly notifications?: ReleaseNotifications
  /** The rows of a `knex.raw` result (each driver shapes it differently). */
  rowsOf(result: unknown): readonly Record<string, unknown>[]
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
  /** How read/write locks lock a key and draw its fence here (see `read-write.ts`). */
  readonly readWrite: ReadWriteSql
}

/** Reads a driver error's code property whatever its type (string on pg and SQLite, string and number on mysql2). */
export function errorCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
}

/** The `now` value of a request as a knex binding: either the number or the dialect's clock expression. */
export function nowBinding(knex: Knex, dialect: Dialect, nowMs: number | null): Knex.Raw | number {
  return nowMs === null ? knex.raw(dialect.nowSql) : nowMs
}

/** A fence as the driver returned it (number, numeric string, or bigint) as a bigint. */
export function toFence(value: unknown): bigint {
  if (typeof value === 'bigint') return value
  if (typeof value === 'number' || typeof value === 'string') return BigInt(value)
  throw new TypeError(`worker-locks: the database returned a fence of type ${typeof value}`)
}

/**
 * Reads the fence of our row, for databases that cannot return it from the write itself; `null`
 * if the row is not ours. A prepared statement on a pooled connection: for rows already
 * committed (see `selectFence` for a read inside the caller's transaction).
 */
export async function fenceOf(knex: Knex, dialect: Dialect, table: string, row: RowIdentity): Promise<bigint | null> {
  const sql = statement(knex, 'fence', table, (quote) => `SELECT fence FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token`)
  const found = (await executorFor(knex, dialect.rowsOf).run(sql, row)).rows[0]
  return found === undefined ? null : toFence(found.fence)
}

/**
 * `fenceOf` inside the transaction `knex` may be (the emulated path's insert has not committed
 * yet, so another connection could not see the row).
 */
export async function selectFence(knex: Knex, table: string, row: RowIdentity): Promise<bigint | null> {
  const found = await knex(table).where({ lock_name: row.name, lock_key: row.key, token: row.token }).first('fence')
  return found === undefined ? null : toFence((found as { fence: unknown }).fence)
}

/** The parameters of a `FenceSql` for the lock `(name, key)`. */
export function fenceParams(fence: FenceSql | undefined, name: string, key: string): string[] {
  return fence?.bindsLock ? [name, key] : []
}

/** `rows` as the one JSON parameter that `restrictToRows` binds: an array of [name, key, token]. */
export function rowsJson(rows: readonly RowIdentity[]): string {
  return JSON.stringify(rows.map((r) => [r.name, r.key, r.token]))
}

/** The plain token-guarded release, for databases without release notifications. */
export async function releaseByDelete(knex: Knex, dialect: Dialect, table: string, row: RowIdentity): Promise<boolean> {
  const sql = statement(knex, 'release', table, (quote) => `DELETE FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token`)
  const { affectedRows } = await executorFor(knex, dialect.rowsOf).run(sql, row)
  return affectedRows > 0
}
