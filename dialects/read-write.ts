// Read/write locks: many readers or one writer per (name, key). Two tables next to the lock
// table: `<table>_rw_keys`, one row per key that serves as its mutex, fence counter and the place
// a waiting writer's intent is kept; `<table>_rw_holders`, one row per holder with its own token
// and lease. An acquisition is one short transaction at READ COMMITTED: lock each key row (in
// sorted order), insert the holder only if no conflicting holder exists, reap that key's stale
// holders one row at a time and try once more, else roll back. Being refused is never an error.
import type { Knex } from 'knex'
import { toFence, type Dialect } from './dialect.js'
import { executorFor, statement, synchronousTransaction, type Statement, type StatementResult } from './executor.js'
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

/** One statement of an acquisition, with its values. */
export interface ReadWriteStep {
  readonly statement: Statement
  readonly values: object
}

/** What a dialect does its own way for read/write locks. */
export interface ReadWriteSql {
  /** The settings of an acquisition's transaction, where it is not run synchronously (see `acquireReadWrite`). */
  readonly transaction: Knex.TransactionConfig | undefined
  /**
   * The statement that locks the key row of `part` until the transaction ends and draws the
   * key's next fence, also clearing `intent` if the row carries it; and how to read that fence
   * from its result: `null` when the row does not exist and must first be made by `createKey`,
   * outside the transaction.
   */
  lockKey(knex: Knex, keys: string, part: ReadWritePart, intent: string | undefined): KeyStep
  /** Makes a key row in its own autocommit statement (where `lockKey` cannot make it). */
  createKey?(knex: Knex, keys: string, part: ReadWritePart): Promise<void>
  /** `placeholder` as an integer expression (PostgreSQL types a bare parameter in a SELECT list as text). */
  integer(placeholder: string): string
}

/** What `ReadWriteSql.lockKey` returns: the statement, and how to read the fence from its result. */
export interface KeyStep {
  readonly step: ReadWriteStep
  readonly fence: (result: StatementResult) => bigint | null
}

/**
 * `lockKey` for databases with `INSERT … ON CONFLICT DO UPDATE … RETURNING` (PostgreSQL, SQLite):
 * the upsert makes the row or locks it, and returns the fence it drew.
 */
export function upsertKey(knex: Knex, keys: string, part: ReadWritePart, intent: string | undefined): KeyStep {
  const sql = statement(knex, intent === undefined ? 'rw-key' : 'rw-key/intent', keys, (quote) => `INSERT INTO ${quote(keys)} AS a (lock_name, lock_key, fence)
    VALUES (:name, :key, 1) ON CONFLICT (lock_name, lock_key) DO UPDATE SET fence = a.fence + 1
    ${intent === undefined ? '' : ', intent_token = CASE WHEN a.intent_token = :intent THEN NULL ELSE a.intent_token END'}
    RETURNING fence`)
  return { step: { statement: sql, values: { name: part.name, key: part.key, intent } }, fence: ({ rows }) => toFence(rows[0]?.fence) }
}

// Thrown inside the transaction to roll it back: a part was refused, or a key row is missing.
class Refused extends Error {}
class MissingKey extends Error {
  constructor(readonly part: ReadWritePart) { super('key row missing') }
}

/** The clock as SQL: the database's, or the bound `:now`. */
const nowOf = (dialect: Dialect, sql: ReadWriteSql, nowMs: number | null): string => (nowMs === null ? dialect.nowSql : sql.integer(':now'))

/**
 * The insert of the holder row of `part`, which writes nothing if a conflicting holder (live or
 * stale) or, for a reader, a live writer's intent stands in the way. A reader part of an
 * acquisition that has an intent of its own (a waiting multi-lock that also writes) passes other
 * writers' intents: two such waits, each reading what the other writes, would otherwise keep
 * each other out for as long as both wait, neither holding anything.
 */
function insertHolder(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart, fence: bigint): ReadWriteStep {
  const { keys, holders } = readWriteTables(r.table)
  const clock = r.nowMs === null ? 'database-clock' : 'local-clock'
  const honoursIntents = !part.write && r.intent === undefined
  const text = statement(knex, `rw-insert-${part.write ? 'write' : honoursIntents ? 'read' : 'read-past-intents'}/${clock}`, holders, (quote) => {
    const now = nowOf(dialect, sql, r.nowMs)
    return `INSERT INTO ${quote(holders)} (lock_name, lock_key, token, instance_name, write_mode, last_renewed_ts, lease_ms, fence)
      SELECT :name, :key, :token, :instance, ${sql.integer(':write')}, ${now}, ${sql.integer(':lease')}, ${sql.integer(':fence')}
      FROM ${quote(keys)} a WHERE a.lock_name = :name AND a.lock_key = :key
      AND NOT EXISTS (SELECT 1 FROM ${quote(holders)} h WHERE h.lock_name = :name AND h.lock_key = :key${part.write ? '' : ' AND h.write_mode = 1'})
      ${honoursIntents ? `AND (a.intent_token IS NULL OR a.intent_until < ${now})` : ''}`
  })
  const values = { name: part.name, key: part.key, token: part.token, instance: r.instanceName, write: part.write ? 1 : 0, now: r.nowMs, lease: r.leaseMs, fence: String(fence) }
  return { statement: text, values }
}

/** Deletes the stale holders of `part`'s key, one row at a time; returns how many went. */
function* reapStale(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Generator<ReadWriteStep, number, StatementResult> {
  const { holders } = readWriteTables(r.table)
  const clock = r.nowMs === null ? 'database-clock' : 'local-clock'
  const stale = (quote: (name: string) => string): string => `${quote(holders)}.last_renewed_ts + ${quote(holders)}.lease_ms < ${nowOf(dialect, sql, r.nowMs)}`
  const find = statement(knex, `rw-stale/${clock}`, holders, (quote) =>
    `SELECT token FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND ${stale(quote)}`)
  const reap = statement(knex, `rw-reap/${clock}`, holders, (quote) =>
    `DELETE FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND token = :token AND ${stale(quote)}`)
  const { rows } = yield { statement: find, values: { name: part.name, key: part.key, now: r.nowMs } }
  let reaped = 0
  for (const row of rows) {
    const token = Buffer.isBuffer(row.token) ? row.token.toString('utf8') : String(row.token)
    reaped += (yield { statement: reap, values: { name: part.name, key: part.key, token, now: r.nowMs } }).affectedRows
  }
  return reaped
}

/**
 * The statements of one acquisition inside its transaction, each handed the result of the one
 * before: per part, lock its key row, insert its holder, or else reap stale holders and insert
 * once more. Returns the parts' fences, or throws Refused / MissingKey (rolling back).
 */
function* takeParts(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Generator<ReadWriteStep, bigint[], StatementResult> {
  const fences: bigint[] = []
  for (const part of r.parts) {
    const key = sql.lockKey(knex, readWriteTables(r.table).keys, part, part.write ? r.intent : undefined)
    const fence = key.fence(yield key.step)
    if (fence === null) throw new MissingKey(part)
    const insert = insertHolder(knex, dialect, sql, r, part, fence)
    if ((yield insert).affectedRows > 0) fences.push(fence)
    else if ((yield* reapStale(knex, dialect, sql, r, part)) > 0 && (yield insert).affectedRows > 0) fences.push(fence)
    else throw new Refused()
  }
  return fences
}

/**
 * The acquisition's transaction. On better-sqlite3 it runs synchronously, BEGIN to COMMIT, on one
 * connection of the pool: a transaction left open across an await holds SQLite's write lock
 * while another connection of the same process may wait for it in its busy handler, which is
 * synchronous: the thread blocks until the busy timeout and that statement fails. Elsewhere, a
 * knex transaction whose statements are awaited one by one.
 */
function transact(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Promise<bigint[]> {
  return synchronousTransaction(knex, (run) => {
    const steps = takeParts(knex, dialect, sql, r)
    let next = steps.next()
    while (!next.done) next = steps.next(run(next.value.statement, next.value.values))
    return next.value
  }) ?? knex.transaction(async (trx) => {
    const executor = executorFor(trx, dialect.rowsOf)
    const steps = takeParts(trx, dialect, sql, r)
    let next = steps.next()
    while (!next.done) next = steps.next(await executor.run(next.value.statement, next.value.values))
    return next.value
  }, sql.transaction)
}

/**
 * Takes every part of `r` or none, in one transaction. Resolves the parts' fences in order, or
 * `null` when any part is held in a conflicting mode (or, for a reader, a writer waits). A lost
 * deadlock or serialization race counts as refused; other errors reject.
 */
export async function acquireReadWrite(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Promise<bigint[] | null> {
  const once = (): Promise<bigint[] | null> => transact(knex, dialect, sql, r).catch((error: unknown) => {
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
