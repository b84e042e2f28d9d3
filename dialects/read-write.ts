// Read/write locks: many readers or one writer per (name, key). Two tables next to the lock
// table: `<table>_rw_keys`, one row per key that serves as its mutex, fence counter and the place
// a waiting writer's intent is kept; `<table>_rw_holders`, one row per holder with its own token
// and lease. An acquisition is one short transaction at READ COMMITTED: lock each key row (in
// sorted order), insert the holder only if no conflicting holder exists, reap that key's stale
// holders one row at a time and try once more, else roll back. Being refused is never an error.
// The acquisition is written once, as the statements it runs in order (a generator of steps), and
// run either through knex's transaction or, on better-sqlite3, in one synchronous transaction.
import type { Knex } from 'knex'
import { toFence, type Dialect } from './dialect.js'
import { executorFor, runsSynchronously, statement, synchronousTransaction, type StatementResult, type Step, type Steps } from './executor.js'
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

/** The statement that locks a key row, and how to read the fence it drew from its result. */
export interface KeyStep extends Step {
  /** The fence drawn, or `null` when the row does not exist and must first be made by `createKey`, outside the transaction. */
  fence(result: StatementResult): bigint | null
}

/** What a dialect does its own way for read/write locks. */
export interface ReadWriteSql {
  /** The settings of an acquisition's transaction (through knex; not used where it runs synchronously, see `synchronousTransaction`). */
  readonly transaction: Knex.TransactionConfig | undefined
  /**
   * The statement that locks the key row of `part` until the transaction ends and draws the
   * key's next fence, also clearing `intent` if the row carries it (`knex` only builds it).
   */
  lockKey(knex: Knex, keys: string, part: ReadWritePart, intent: string | undefined): KeyStep
  /** Makes a key row in its own autocommit statement (where `lockKey` cannot make it). */
  createKey?(knex: Knex, keys: string, part: ReadWritePart): Promise<void>
  /** `placeholder` as an integer expression (PostgreSQL types a bare parameter in a SELECT list as text). */
  integer(placeholder: string): string
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
  return { statement: sql, values: { name: part.name, key: part.key, intent }, fence: ({ rows }) => toFence(rows[0]?.fence) }
}

// Thrown inside the transaction to roll it back: a part was refused, or a key row is missing.
class Refused extends Error {}
class MissingKey extends Error {
  constructor(readonly part: ReadWritePart) { super('key row missing') }
}

/** The clock as SQL: the database's, or the bound `:now`. */
const nowOf = (dialect: Dialect, sql: ReadWriteSql, nowMs: number | null): string => (nowMs === null ? dialect.nowSql : sql.integer(':now'))

/** Inserts the holder row of `part` unless a conflicting holder (live or stale) or, for a reader, a live writer's intent stands in the way. */
function* insertHolder(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart, fence: bigint): Steps<boolean> {
  const { keys, holders } = readWriteTables(r.table)
  const clock = r.nowMs === null ? 'database-clock' : 'local-clock'
  const text = statement(knex, `rw-insert-${part.write ? 'write' : 'read'}/${clock}`, holders, (quote) => {
    const now = nowOf(dialect, sql, r.nowMs)
    return `INSERT INTO ${quote(holders)} (lock_name, lock_key, token, instance_name, write_mode, last_renewed_ts, lease_ms, fence)
      SELECT :name, :key, :token, :instance, ${sql.integer(':write')}, ${now}, ${sql.integer(':lease')}, ${sql.integer(':fence')}
      FROM ${quote(keys)} a WHERE a.lock_name = :name AND a.lock_key = :key
      AND NOT EXISTS (SELECT 1 FROM ${quote(holders)} h WHERE h.lock_name = :name AND h.lock_key = :key${part.write ? '' : ' AND h.write_mode = 1'})
      ${part.write ? '' : `AND (a.intent_token IS NULL OR a.intent_until < ${now})`}`
  })
  const values = { name: part.name, key: part.key, token: part.token, instance: r.instanceName, write: part.write ? 1 : 0, now: r.nowMs, lease: r.leaseMs, fence: String(fence) }
  return (yield { statement: text, values }).affectedRows > 0
}

/** Deletes the stale holders of `part`'s key, one row at a time; resolves how many went. */
function* reapStale(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Steps<number> {
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

/** One part inside the transaction: its fence, or Refused / MissingKey thrown. */
function* takePart(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest, part: ReadWritePart): Steps<bigint> {
  const key = sql.lockKey(knex, readWriteTables(r.table).keys, part, part.write ? r.intent : undefined)
  const fence = key.fence(yield key)
  if (fence === null) throw new MissingKey(part)
  if (yield* insertHolder(knex, dialect, sql, r, part, fence)) return fence
  if ((yield* reapStale(knex, dialect, sql, r, part)) > 0 && (yield* insertHolder(knex, dialect, sql, r, part, fence))) return fence
  throw new Refused()
}

/** Every part of `r`, in order: their fences. */
function* takeParts(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Steps<bigint[]> {
  const fences: bigint[] = []
  for (const part of r.parts) fences.push(yield* takePart(knex, dialect, sql, r, part))
  return fences
}

/** Runs `steps` through knex's transaction `trx`, one statement after the other. */
async function runSteps<T>(trx: Knex, dialect: Dialect, steps: Steps<T>): Promise<T> {
  const executor = executorFor(trx, dialect.rowsOf)
  let next = steps.next()
  while (!next.done) next = steps.next(await executor.run(next.value.statement, next.value.values))
  return next.value
}

/**
 * Takes every part of `r` or none, in one transaction. Resolves the parts' fences in order, or
 * `null` when any part is held in a conflicting mode (or, for a reader, a writer waits). A lost
 * deadlock or serialization race counts as refused; other errors reject.
 */
export async function acquireReadWrite(knex: Knex, dialect: Dialect, sql: ReadWriteSql, r: ReadWriteRequest): Promise<bigint[] | null> {
  // better-sqlite3 runs statements synchronously, its busy handler included: a transaction
  // holding SQLite's write lock across an await would make any other connection of this process
  // that writes meanwhile (a renewal, a release, the application's own statements) block the
  // whole thread for the busy timeout, and fail. There the transaction runs start to end in one go.
  const sync = runsSynchronously(knex)
  const once = (): Promise<bigint[] | null> => (sync
    ? synchronousTransaction(knex, takeParts(knex, dialect, sql, r))
    : knex.transaction((trx) => runSteps(trx, dialect, takeParts(knex, dialect, sql, r)), sql.transaction)
  ).catch((error: unknown) => {
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
