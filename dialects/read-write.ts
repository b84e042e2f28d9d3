// Read/write locks: many readers or one writer per (name, key). Two tables next to the lock
// table: `<table>_rw_keys`, one row per key that serves as its mutex, fence counter and the place
// a waiting writer's intent is kept; `<table>_rw_holders`, one row per holder with its own token
// and lease. An acquisition is one short transaction at READ COMMITTED: lock each key row (in
// sorted order), insert the holder only if no conflicting holder exists, reap that key's stale
// holders one row at a time and try once more, else roll back. Being refused is never an error.
import type { Knex } from 'knex'
import { toFence, type Dialect } from './dialect.js'
import { executorFor, statement } from './executor.js'
import { retryingConflicts } from './acquire.js'

/** One (name, key) of an acquisition, and the token its holder row will carry. */
export interface ReadWritePart {
  readonly name: string
  readonly key: string
  readonly write: boolean
  readonly token: string
}

/** The tables of the read/write locks of lock table `table`. */
export function readWriteTables(table: string): { keys: string; holders: string } {
  return { keys: `${table}_rw_keys`, holders: `${table}_rw_holders` }
}

/** One acquisition of one or more parts, all or none. */
export interface ReadWriteRequest {
  /** The lock table; the read/write tables are named after it. */
  readonly table: string
  /** Sorted by name then key, no (name, key) twice: every acquirer locks key rows in one order. */
  readonly parts: readonly ReadWritePart[]
  readonly instanceName: string
  /** The time to write, or `null` for the database's clock. */
  readonly nowMs: number | null
  readonly leaseMs: number
  /** A waiting writer's intent token: its own intent is cleared by its acquisition. */
  readonly intent: string | undefined
}

/** What a dialect does its own way for read/write locks. */
export interface ReadWriteSql {
  /** The settings of an acquisition's transaction. */
  readonly transaction: Knex.TransactionConfig | undefined
  /**
   * Locks the key row of `part` until the transaction ends and draws the key's next fence, also
   * clearing `intent` if the row carries it. Resolves the fence, or `null` when the row does not
   * exist and must first be made by `createKey`, outside the transaction.
   */
  lockKey(trx: Knex, keys: string, part: ReadWritePart, intent: string | undefined): Promise<bigint | null>
  /** Makes a key row in its own autocommit statement (where `lockKey` cannot make it). */
  createKey?(knex: Knex, keys: string, part: ReadWritePart): Promise<void>
  /** `placeholder` as an integer expression (PostgreSQL types a bare parameter in a SELECT list as text). */
  integer(placeholder: string): string
}

/**
 * `lockKey` for databases with `INSERT … ON CONFLICT DO UPDATE … RETURNING` (PostgreSQL, SQLite):
 * the upsert makes the row or locks it, and returns the fence it drew.
 */
export async function upsertKey(dialect: Dialect, trx: Knex, keys: string, part: ReadWritePart, intent: string | undefined): Promise<bigint> {
  const sql = statement(trx, intent === undefined ? 'rw-key' : 'rw-key/intent', keys, (quote) => `INSERT INTO ${quote(keys)} AS a (lock_name, lock_key, fence)
    VALUES (:name, :key, 1) ON CONFLICT (lock_name, lock_key) DO UPDATE SET fence = a.fence + 1
    ${intent === undefined ? '' : ', intent_token = CASE WHEN a.intent_token = :intent THEN NULL ELSE a.intent_token END'}
    RETURNING fence`)
  const { rows } = await executorFor(trx, dialect.rowsOf).run(sql, { name: part.name, key: part.key, intent })
  return toFence(rows[0]?.fence)
}

// Thrown inside the transaction to roll it back: a part was refused, or a key row is missing.
class Refused extends Error {}
class MissingKey extends Error {
  constructor(readonly part: ReadWritePart) { super('key row missing') }
}

/** The clock as SQL: the database's, or the bound `:now`. */
const nowOf = (dialect: Dialect, sql: ReadWriteSql, nowMs: number | null): string => (nowMs === null ? dialect.nowSql : sql.integer(':now'))

/** Inserts the holder row of `part` unless a conflicting holder (live or stale) or, for a reader, a live writer's intent stands in the way. */
async function insertHolder(trx: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart, fence: bigint): Promise<boolean> {
  const { keys, holders } = readWriteTables(r.table)
  const clock = r.nowMs === null ? 'database-clock' : 'local-clock'
  const text = statement(trx, `rw-insert-${part.write ? 'write' : 'read'}/${clock}`, holders, (quote) => {
    const now = nowOf(dialect, sql, r.nowMs)
    return `INSERT INTO ${quote(holders)} (lock_name, lock_key, token, instance_name, write_mode, last_renewed_ts, lease_ms, fence)
      SELECT :name, :key, :token, :instance, ${sql.integer(':write')}, ${now}, ${sql.integer(':lease')}, ${sql.integer(':fence')}
      FROM ${quote(keys)} a WHERE a.lock_name = :name AND a.lock_key = :key
      AND NOT EXISTS (SELECT 1 FROM ${quote(holders)} h WHERE h.lock_name = :name AND h.lock_key = :key${part.write ? '' : ' AND h.write_mode = 1'})
      ${part.write ? '' : `AND (a.intent_token IS NULL OR a.intent_until < ${now})`}`
  })
  const values = { name: part.name, key: part.key, token: part.token, instance: r.instanceName, write: part.write ? 1 : 0, now: r.nowMs, lease: r.leaseMs, fence: String(fence) }
  return (await executorFor(trx, dialect.rowsOf).run(text, values)).affectedRows > 0
}

/** Deletes the stale holders of `part`'s key, one row at a time; resolves how many went. */
async function reapStale(trx: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Promise<number> {
  const { holders } = readWriteTables(r.table)
  const clock = r.nowMs === null ? 'database-clock' : 'local-clock'
  const stale = (quote: (name: string) => string): string => `${quote(holders)}.last_renewed_ts + ${quote(holders)}.lease_ms < ${nowOf(dialect, sql, r.nowMs)}`
  const find = statement(trx, `rw-stale/${clock}`, holders, (quote) =>
    `SELECT token FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND ${stale(quote)}`)
  const reap = statement(trx, `rw-reap/${clock}`, holders, (quote) =>
    `DELETE FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND token = :token AND ${stale(quote)}`)
  const executor = executorFor(trx, dialect.rowsOf)
  const { rows } = await executor.run(find, { name: part.name, key: part.key, now: r.nowMs })
  let reaped = 0
  for (const row of rows) {
    const token = Buffer.isBuffer(row.token) ? row.token.toString('utf8') : String(row.token)
    reaped += (await executor.run(reap, { name: part.name, key: part.key, token, now: r.nowMs })).affectedRows
  }
  return reaped
}

/** One part inside the transaction: its fence, or Refused / MissingKey thrown. */
async function takePart(trx: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Promise<bigint> {
  const fence = await sql.lockKey(trx, readWriteTables(r.table).keys, part, part.write ? r.intent : undefined)
  if (fence === null) throw new MissingKey(part)
  if (await insertHolder(trx, dialect, sql, r, part, fence)) return fence
  if (await reapStale(trx, dialect, sql, r, part) > 0 && await insertHolder(trx, dialect, sql, r, part, fence)) return fence
  throw new Refused()
}

/**
 * Takes every part of `r` or none, in one transaction. Resolves the parts' fences in order, or
 * `null` when any part is held in a conflicting mode (or, for a reader, a writer waits). A lost
 * deadlock or serialization race counts as refused; other errors reject.
 */
export async function acquireReadWrite(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Promise<bigint[] | null> {
  const once = (): Promise<bigint[] | null> => knex.transaction(async (trx) => {
    const fences: bigint[] = []
    for (const part of r.parts) fences.push(await takePart(trx, dialect, sql, r, part))
    return fences
  }, sql.transaction).catch((error: unknown) => {
    if (error instanceof Refused) return null
    throw error
  })
  // Key rows that lockKey cannot make (MySQL) are made outside the transaction, then one retry:
  // made inside a transaction that may roll back, they caused insert-intention deadlocks.
  const withKeys = (created: number): Promise<bigint[] | null> => once().catch(async (error: unknown) => {
    if (!(error instanceof MissingKey) || !sql.createKey || created >= r.parts.length) throw error
    await sql.createKey(knex, readWriteTables(r.table).keys, error.part)
    return withKeys(created + 1)
  })
  return retryingConflicts(dialect, 3, () => withKeys(0), () => null)
}

/**
 * Records that the writer `intent` waits for `(name, key)`, until `untilMs` from now, unless
 * another live intent is there first: while it lasts, new readers are refused. Resolves whether
 * the intent is this writer's.
 */
export async function claimIntent(knex: Knex, dialect: Dialect, sql: ReadWriteSql, table: string, name: string, key: string, intent: string, forMs: number, nowMs: number | null): Promise<boolean> {
  const { keys } = readWriteTables(table)
  const text = statement(knex, `rw-intent/${nowMs === null ? 'database-clock' : 'local-clock'}`, keys, (quote) => {
    const now = nowOf(dialect, sql, nowMs)
    return `UPDATE ${quote(keys)} SET intent_token = :intent, intent_until = ${now} + ${sql.integer(':forMs')}
      WHERE lock_name = :name AND lock_key = :key AND (intent_token IS NULL OR intent_token = :intent OR intent_until < ${now})`
  })
  return (await executorFor(knex, dialect.rowsOf).run(text, { intent, forMs, name, key, now: nowMs })).affectedRows > 0
}

/** Withdraws the writer `intent` from `(name, key)`, if it is still there. */
export async function dropIntent(knex: Knex, dialect: Dialect, table: string, name: string, key: string, intent: string): Promise<void> {
  const { keys } = readWriteTables(table)
  const text = statement(knex, 'rw-intent-drop', keys, (quote) =>
    `UPDATE ${quote(keys)} SET intent_token = NULL, intent_until = NULL WHERE lock_name = :name AND lock_key = :key AND intent_token = :intent`)
  await executorFor(knex, dialect.rowsOf).run(text, { name, key, intent })
}
