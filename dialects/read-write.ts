// Read/write locks: many readers or one writer per (name, key). Two tables next to the lock
// table: `<table>_rw_keys`, one row per key that serves as its mutex, fence counter and the place
// a waiting writer's intent is kept; `<table>_rw_holders`, one row per holder with its own token
// and lease. An acquisition is one short transaction at READ COMMITTED: lock each key row (in
// sorted order), insert the holder only if no conflicting holder exists, reap that key's stale
// holders one row at a time and try once more, else roll back. Being refused is never an error.
import type { Knex } from 'knex'
import { toFence, type Dialect } from './dialect.js'
import { clockKind, statement, type Db, type Statement, type StatementResult } from './executor.js'
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

/** One statement of an acquisition, and the values of its placeholders. */
export interface Step {
  readonly statement: Statement
  readonly values: object
}

/** An acquisition's statements, in order: it yields each and is given its result. */
export type Work<T> = Generator<Step, T, StatementResult>

/** What a dialect does its own way for read/write locks. */
export interface ReadWriteSql {
  /**
   * The statement that locks a key row until the transaction ends and draws the key's next
   * fence, also clearing the writer intent `:intent` if the row carries it (`withIntent`).
   * Placeholders: `:name`, `:key`, `:intent`.
   */
  lockKey(knex: Knex, keys: string, withIntent: boolean): Statement
  /** The fence `lockKey` drew, or `null` when the key row does not exist (then `createKeys` makes it, outside the transaction). */
  fenceOf(result: StatementResult): bigint | null
  /**
   * The one statement that makes every missing key row of a request, where `lockKey` cannot:
   * placeholder `:parts`, a JSON array of `[name, key]`.
   */
  createKeys?(knex: Knex, keys: string): Statement
  /**
   * The whole acquisition as one statement (a stored routine), where the database has one and its
   * facts allow it (`readWriteInOne`): the parts' fences, or `null` when refused. It must take the
   * same row locks in the same order as the statements above, so that stores using either way
   * can run side by side.
   */
  acquireInOne?(db: Db, r: ReadWriteRequest): Promise<bigint[] | null>
  /** `placeholder` as an integer expression (PostgreSQL types a bare parameter in a SELECT list as text). */
  integer(placeholder: string): string
  /**
   * Runs `work` in one transaction, committing what it returns and rolling back what it throws.
   * @default a knex transaction with `transaction`, each statement awaited
   */
  transact?<T>(db: Db, work: () => Work<T>): Promise<T>
  /** The settings of the default transaction. */
  readonly transaction?: Knex.TransactionConfig
}

/** `lockKey` where `INSERT … ON CONFLICT DO UPDATE … RETURNING` exists (PostgreSQL, SQLite): the upsert makes the row or locks it, and returns the fence it drew. */
export function upsertKey(knex: Knex, keys: string, withIntent: boolean): Statement {
  return statement(knex, withIntent ? 'rw-key/intent' : 'rw-key', keys, (quote) => `INSERT INTO ${quote(keys)} AS a (lock_name, lock_key, fence)
    VALUES (:name, :key, 1) ON CONFLICT (lock_name, lock_key) DO UPDATE SET fence = a.fence + 1
    ${withIntent ? ', intent_token = CASE WHEN a.intent_token = :intent THEN NULL ELSE a.intent_token END' : ''}
    RETURNING fence`)
}

/** The fence an upsert returned. */
export const upsertedFence = (result: StatementResult): bigint => toFence(result.rows[0]?.fence)

/** Runs `work` in a knex transaction, awaiting each statement (PostgreSQL, MySQL). */
function transactAsync<T>(db: Db, config: Knex.TransactionConfig | undefined, work: () => Work<T>): Promise<T> {
  return db.transaction(config, async (trx) => {
    const steps = work()
    let next = steps.next()
    while (!next.done) next = steps.next(await trx.run(next.value.statement, next.value.values))
    return next.value
  })
}

// Thrown inside the transaction to roll it back: a part was refused, or a key row is missing.
class Refused extends Error {}
class MissingKey extends Error {}

/** The clock as SQL: the database's, or the bound `:now`. */
const nowOf = (dialect: Dialect, sql: ReadWriteSql, nowMs: number | null): string => (nowMs === null ? dialect.nowSql : sql.integer(':now'))

/**
 * Inserts the holder row of `part` unless a conflicting holder (live or stale) or, for a reader,
 * a live writer's intent stands in the way. A reader part of an acquisition that has an intent of
 * its own (a waiting multi-lock that also writes) passes other writers' intents: two such waits,
 * each reading what the other writes, would otherwise keep each other out for ever.
 */
function* insertHolder(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart, fence: bigint): Work<boolean> {
  const { keys, holders } = readWriteTables(r.table)
  const honoursIntents = !part.write && r.intent === undefined
  const text = statement(knex, clockKind(`rw-insert-${part.write ? 'write' : honoursIntents ? 'read' : 'read-past-intents'}`, r.nowMs), holders, (quote) => {
    const now = nowOf(dialect, sql, r.nowMs)
    return `INSERT INTO ${quote(holders)} (lock_name, lock_key, token, instance_name, write_mode, last_renewed_ts, lease_ms, fence)
      SELECT :name, :key, :token, :instance, ${sql.integer(':write')}, ${now}, ${sql.integer(':lease')}, ${sql.integer(':fence')}
      FROM ${quote(keys)} a WHERE a.lock_name = :name AND a.lock_key = :key
      AND NOT EXISTS (SELECT 1 FROM ${quote(holders)} h WHERE h.lock_name = :name AND h.lock_key = :key${part.write ? '' : ' AND h.write_mode = 1'})
      ${honoursIntents ? `AND (a.intent_token IS NULL OR a.intent_until < ${now})` : ''}`
  })
  const values = { name: part.name, key: part.key, token: part.token, instance: r.instanceName, write: part.write ? 1 : 0, now: r.nowMs, lease: r.leaseMs, fence: String(fence) }
  return (yield { statement: text, values }).affectedRows > 0
}

/** Deletes the stale holders of `part`'s key, one row at a time; returns how many went. */
function* reapStale(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Work<number> {
  const { holders } = readWriteTables(r.table)
  const stale = (quote: (name: string) => string): string => `${quote(holders)}.last_renewed_ts + ${quote(holders)}.lease_ms < ${nowOf(dialect, sql, r.nowMs)}`
  const find = statement(knex, clockKind('rw-stale', r.nowMs), holders, (quote) =>
    `SELECT token FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND ${stale(quote)}`)
  const reap = statement(knex, clockKind('rw-reap', r.nowMs), holders, (quote) =>
    `DELETE FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND token = :token AND ${stale(quote)}`)
  const { rows } = yield { statement: find, values: { name: part.name, key: part.key, now: r.nowMs } }
  let reaped = 0
  for (const row of rows) {
    const token = Buffer.isBuffer(row.token) ? row.token.toString('utf8') : String(row.token)
    reaped += (yield { statement: reap, values: { name: part.name, key: part.key, token, now: r.nowMs } }).affectedRows
  }
  return reaped
}

/** Every part in turn: their fences, or Refused / MissingKey thrown. */
function* takeAll(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Work<bigint[]> {
  const fences: bigint[] = []
  for (const part of r.parts) {
    const withIntent = part.write && r.intent !== undefined
    const locked = yield { statement: sql.lockKey(knex, readWriteTables(r.table).keys, withIntent), values: { name: part.name, key: part.key, intent: r.intent ?? '' } }
    const fence = sql.fenceOf(locked)
    if (fence === null) throw new MissingKey('key row missing')
    const inserted = (yield* insertHolder(knex, dialect, sql, r, part, fence))
      || ((yield* reapStale(knex, dialect, sql, r, part)) > 0 && (yield* insertHolder(knex, dialect, sql, r, part, fence)))
    if (!inserted) throw new Refused()
    fences.push(fence)
  }
  return fences
}

/**
 * Takes every part of `r` or none, in one transaction (with `inOne`, in the dialect's one
 * statement, where it has one). Resolves the parts' fences in order, or `null` when any part is
 * held in a conflicting mode (or, for a reader, a writer waits). A lost deadlock or serialization
 * race counts as refused; other errors reject.
 */
export async function acquireReadWrite(db: Db, dialect: Dialect, r: ReadWriteRequest, inOne: boolean): Promise<bigint[] | null> {
  const sql = dialect.readWrite
  if (inOne && sql.acquireInOne) {
    const acquireInOne = sql.acquireInOne.bind(sql)
    return retryingConflicts(dialect, 3, () => acquireInOne(db, r), () => null)
  }
  const work = (): Work<bigint[]> => takeAll(db.knex, dialect, sql, r)
  const once = (): Promise<bigint[] | null> => (sql.transact ? sql.transact(db, work) : transactAsync(db, sql.transaction, work))
    .catch((error: unknown) => {
      if (error instanceof Refused) return null
      throw error
    })
  // Key rows that lockKey cannot make (MySQL) are made outside the transaction, all of the
  // request's in one statement, then one retry: made inside a transaction that may roll back,
  // they caused insert-intention deadlocks; made one per retry, N fresh keys cost O(N²) statements.
  const withKeys = (): Promise<bigint[] | null> => once().catch(async (error: unknown) => {
    if (!(error instanceof MissingKey) || !sql.createKeys) throw error
    await db.run(sql.createKeys(db.knex, readWriteTables(r.table).keys), { parts: JSON.stringify(r.parts.map((p) => [p.name, p.key])) })
    return once()
  })
  return retryingConflicts(dialect, 3, withKeys, () => null)
}

/**
 * Records that the writer `intent` waits for `(name, key)`, until `untilMs` from now, unless
 * another live intent is there first: while it lasts, new readers are refused. Resolves whether
 * the intent is this writer's.
 */
export async function claimIntent(db: Db, dialect: Dialect, table: string, name: string, key: string, intent: string, forMs: number, nowMs: number | null): Promise<boolean> {
  const { keys } = readWriteTables(table)
  const sql = dialect.readWrite
  const text = statement(db.knex, clockKind('rw-intent', nowMs), keys, (quote) => {
    const now = nowOf(dialect, sql, nowMs)
    return `UPDATE ${quote(keys)} SET intent_token = :intent, intent_until = ${now} + ${sql.integer(':forMs')}
      WHERE lock_name = :name AND lock_key = :key AND (intent_token IS NULL OR intent_token = :intent OR intent_until < ${now})`
  })
  return (await db.run(text, { intent, forMs, name, key, now: nowMs })).affectedRows > 0
}

/** Withdraws the writer `intent` from `(name, key)`, if it is still there. */
export async function dropIntent(db: Db, table: string, name: string, key: string, intent: string): Promise<void> {
  const { keys } = readWriteTables(table)
  const text = statement(db.knex, 'rw-intent-drop', keys, (quote) =>
    `UPDATE ${quote(keys)} SET intent_token = NULL, intent_until = NULL WHERE lock_name = :name AND lock_key = :key AND intent_token = :intent`)
  await db.run(text, { name, key, intent })
}
