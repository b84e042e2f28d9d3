// How the library's statements run: on a connection borrowed from knex's pool through the
// client's own acquireConnection/releaseConnection, with the driver's plain query call, so that
// no knex query is compiled on the hot path. It assumes nothing of the pool's insides and keeps
// no state on the server: PostgreSQL statements are unnamed unless the store opts in to named
// ones (see `DatabaseOptions.preparedStatements`). knex's `query` event still fires for each.
import { createHash } from 'node:crypto'
import type { Knex } from 'knex'
import { bounded, sqliteBusyMs, StatementTimeoutError, type Bound, type Client as PoolClient } from './bounds.js'

/** What one statement did, whatever the driver. */
export interface StatementResult {
  readonly rows: readonly Record<string, unknown>[]
  readonly affectedRows: number
  readonly insertId: number
}

/** A statement built once per table (see {@link statement}): `?` placeholders and the names of their values. */
export interface Statement {
  /** What the statement does (`release`, `on-conflict/database-clock`, …): knex's `query` event carries it as `workerLocksKind`. */
  readonly kind: string
  readonly sql: string
  readonly names: readonly string[]
}

/** A knex instance (or transaction) and how the library runs its statements on it. */
export interface Db {
  readonly knex: Knex
  /** Runs a statement within this Db's bound and the store's `statementTimeoutMs` (see bounds.ts). */
  run(statement: Statement, values: object): Promise<StatementResult>
  /** Runs a query built with knex's builder the same way; `kind` as a Statement's. */
  query(query: Knex.QueryBuilder | Knex.Raw, kind: string): Promise<StatementResult>
  /** The same database, its statements (transactions included) within `bound`. */
  within(bound: Bound): Db
  /**
   * Whether statements run on the calling thread (better-sqlite3): a loop of awaited calls then
   * never lets the event loop turn unless the caller makes it.
   */
  readonly onCallingThread: boolean
  /** Runs `work` in a knex transaction, with a Db on it. */
  transaction<T>(config: Knex.TransactionConfig | undefined, work: (db: Db) => Promise<T>): Promise<T>
  /**
   * Runs `work` on one connection without returning to the event loop between its statements,
   * where the driver runs statements on the calling thread (better-sqlite3); `undefined` elsewhere.
   */
  readonly inPlace?: <T>(work: (run: (statement: Statement, values: object) => StatementResult) => T) => Promise<T>
}

export interface DatabaseOptions {
  /**
   * PostgreSQL: run statements as named prepared statements, which each server connection plans
   * once. Assumes every statement reaches the server session that prepared it: true on a direct
   * connection or a session pooler, false behind a transaction pooler without prepared-statement
   * support (PgBouncer before 1.21, or with `max_prepared_statements = 0`).
   */
  readonly preparedStatements: boolean
  /** The longest any statement may take, waiting for a pooled connection included (see bounds.ts). */
  readonly statementTimeoutMs: number
}

interface Client extends PoolClient {
  emit(event: 'query', data: object): void
}

interface SqliteConnection {
  prepare(sql: string): { reader: boolean; all(...params: unknown[]): Record<string, unknown>[]; run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint } }
  pragma(source: string, options?: { simple: boolean }): unknown
}

/** The values of `statement`'s placeholders, in order; a missing one is a bug here, not the caller's. */
function positional(statement: Statement, values: object): unknown[] {
  return statement.names.map((name) => {
    const value = (values as Record<string, unknown>)[name]
    if (value === undefined) throw new TypeError(`worker-locks: no value for :${name} in ${statement.sql}`)
    return value
  })
}

const emitQuery = (client: Client, connection: unknown, sql: string, params: readonly unknown[], kind: string): void =>
  client.emit('query', { sql, bindings: params, method: 'raw', __knexUid: (connection as { __knexUid?: string }).__knexUid, workerLocksKind: kind })

// A connection's prepared statements, dropped with the connection.
const sqliteStatements = new WeakMap<object, Map<string, ReturnType<SqliteConnection['prepare']>>>()

// The busy timeout each connection had when first used, which a bounded statement lowers for itself alone.
const sqliteBusy = new WeakMap<object, number>()

/** Runs `work` with the connection's busy timeout at most `ms`: another writer is waited for on this thread. */
function withBusyCap<T>(connection: SqliteConnection & object, ms: number, work: () => T): T {
  let own = sqliteBusy.get(connection)
  if (own === undefined) sqliteBusy.set(connection, (own = Number(connection.pragma('busy_timeout', { simple: true }))))
  if (ms >= own) return work()
  connection.pragma(`busy_timeout = ${Math.floor(ms)}`)
  try {
    return work()
  } catch (error) {
    // The bound cut the wait for the other writer short: the same end as a statement cancelled
    // at its bound on a server, and told apart from a BUSY that outlasted the application's own timeout.
    if ((error as { code?: unknown } | null)?.code === 'SQLITE_BUSY') throw new StatementTimeoutError('server', Math.floor(ms), error)
    throw error
  } finally {
    connection.pragma(`busy_timeout = ${own}`)
  }
}

function runOnSqlite(connection: SqliteConnection & object, sql: string, params: readonly unknown[]): StatementResult {
  let cache = sqliteStatements.get(connection)
  if (!cache) sqliteStatements.set(connection, (cache = new Map()))
  let prepared = cache.get(sql)
  if (!prepared) cache.set(sql, (prepared = connection.prepare(sql)))
  if (prepared.reader) return { rows: prepared.all(...params), affectedRows: 0, insertId: 0 }
  const info = prepared.run(...params)
  return { rows: [], affectedRows: info.changes, insertId: Number(info.lastInsertRowid) }
}

const pgNames = new Map<string, string>()
const pgName = (sql: string): string => {
  let name = pgNames.get(sql)
  if (name === undefined) pgNames.set(sql, (name = `wl_${createHash('sha1').update(sql).digest('hex').slice(0, 20)}`))
  return name
}
const pgText = (sql: string): string => {
  let n = 0
  return sql.replace(/\?/g, () => `$${++n}`)
}

/** How one driver runs a statement on a connection it was given; knex.raw for a driver not known here. */
type Run = (connection: unknown, sql: string, params: unknown[], bound: Bound | undefined) => Promise<StatementResult> | StatementResult

function runner(knex: Knex, client: Client, rowsOf: (result: unknown) => readonly Record<string, unknown>[], options: DatabaseOptions): Run {
  switch (client.driverName) {
    case 'better-sqlite3':
      return (connection, sql, params, bound) => withBusyCap(connection as SqliteConnection & object, sqliteBusyMs(options.statementTimeoutMs, bound),
        () => runOnSqlite(connection as SqliteConnection & object, sql, params))
    case 'pg':
      return async (connection, sql, params) => {
        const query = { text: pgText(sql), values: params, ...(options.preparedStatements ? { name: pgName(sql) } : {}) }
        const result = await (connection as { query(q: typeof query): Promise<{ rows: Record<string, unknown>[]; rowCount: number | null }> }).query(query)
        return { rows: result.rows, affectedRows: result.rowCount ?? 0, insertId: 0 }
      }
    case 'mysql2':
      return (connection, sql, params) => new Promise<StatementResult>((resolve, reject) => {
        (connection as { query(sql: string, values: unknown[], callback: (error: Error | null, result: unknown) => void): void })
          .query(sql, params, (error, result) => {
            if (error) return reject(error)
            if (Array.isArray(result)) return resolve({ rows: result as Record<string, unknown>[], affectedRows: 0, insertId: 0 })
            const header = result as { affectedRows: number; insertId: number }
            resolve({ rows: [], affectedRows: header.affectedRows, insertId: Number(header.insertId) })
          })
      })
    default:
      return async (connection, sql, params) => {
        const result: unknown = await knex.raw(sql, params as Knex.RawBinding[]).connection(connection)
        const header = (Array.isArray(result) ? result[0] : result) as { affectedRows?: number; insertId?: number; rowCount?: number; changes?: number }
        return {
          rows: rowsOf(result),
          affectedRows: Number(header?.affectedRows ?? header?.rowCount ?? header?.changes ?? 0),
          insertId: Number(header?.insertId ?? 0),
        }
      }
  }
}

/** How the library runs statements on `knex` (a knex instance or a transaction), each within `bound`. */
export function database(knex: Knex, rowsOf: (result: unknown) => readonly Record<string, unknown>[], options: DatabaseOptions, bound?: Bound): Db {
  const client = knex.client as unknown as Client
  const run = runner(knex, client, rowsOf, options)
  const sqlite = client.driverName === 'better-sqlite3'
  const execute = (kind: string, sql: string, params: unknown[]): Promise<StatementResult> =>
    bounded(client, options.statementTimeoutMs, bound, (connection) => {
      emitQuery(client, connection, sql, params, kind)
      return run(connection, sql, params, bound)
    })
  return {
    knex,
    onCallingThread: sqlite,
    run: (statement, values) => execute(statement.kind, statement.sql, positional(statement, values)),
    query: (query, kind) => {
      const { sql, bindings } = query.toSQL()
      return execute(kind, sql, [...bindings])
    },
    within: (next) => database(knex, rowsOf, options, next),
    transaction: (config, work) => knex.transaction((trx) => work(database(trx, rowsOf, options, bound)), config),
    inPlace: !sqlite ? undefined : (work) => bounded(client, options.statementTimeoutMs, bound, (connection) => {
      const c = connection as SqliteConnection & object
      return withBusyCap(c, sqliteBusyMs(options.statementTimeoutMs, bound), () => work((statement, values) => {
        const params = positional(statement, values)
        emitQuery(client, connection, statement.sql, params, statement.kind)
        return runOnSqlite(c, statement.sql, params)
      }))
    }),
  }
}

// dialect → kind → table → statement: a lookup on the hot path builds no string.
const statements = new Map<string, Map<string, Map<string, Statement>>>()

// `:name`, but not the second colon of a PostgreSQL cast (`x::text`).
const PLACEHOLDER = /(?<!:):([A-Za-z_][A-Za-z0-9_]*)/g

/**
 * The statement `kind` for `table`, built once per database family and reused. `build` writes
 * values as named placeholders (`:name`) and quotes identifiers with `quote`, as knex does;
 * `kind` must name everything else the text depends on.
 */
export function statement(knex: Knex, kind: string, table: string, build: (quote: (name: string) => string) => string): Statement {
  const dialect = (knex.client as { dialect?: string }).dialect ?? ''
  let kinds = statements.get(dialect)
  if (!kinds) statements.set(dialect, (kinds = new Map()))
  let tables = kinds.get(kind)
  if (!tables) kinds.set(kind, (tables = new Map()))
  let built = tables.get(table)
  if (built === undefined) {
    const names: string[] = []
    const sql = build((name) => knex.raw('??', [name]).toQuery()).replace(PLACEHOLDER, (_, name: string) => {
      names.push(name)
      return '?'
    })
    tables.set(table, (built = { kind, sql, names }))
  }
  return built
}

/** The kind of a statement by the clock it writes: a bound value (`local-clock`) or the database's. */
export const clockKind = (kind: string, nowMs: number | null): string => `${kind}/${nowMs === null ? 'database-clock' : 'local-clock'}`
