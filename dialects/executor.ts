import { createHash } from 'node:crypto'
import type { Knex } from 'knex'

/** What one statement did, whatever the driver. */
export interface StatementResult {
  readonly rows: readonly Record<string, unknown>[]
  readonly affectedRows: number
  readonly insertId: number
}

/**
 * A statement built once per table (see {@link statement}): its text with `?` placeholders, and
 * the names of the values they bind, in order.
 */
export interface Statement {
  /** What the statement does (e.g. `release`, `hand-over/local-clock`): also on knex's `query` event, as `workerLocksKind`. */
  readonly kind: string
  readonly sql: string
  readonly names: readonly string[]
}

/**
 * Runs one SQL statement whose identifiers are already quoted and whose values are all named
 * placeholders, given as one object. The hot path (acquire, release) goes through this rather than knex's builder:
 * on the drivers worker-locks knows, it runs a prepared statement that the connection keeps, on a
 * connection of knex's pool (borrowed for that statement; on better-sqlite3, an idle one used in
 * place), which costs a fraction of building and compiling a query each time. knex's `query`
 * event still fires, so query logging sees it.
 */
export interface Executor {
  run(statement: Statement, values: object): Promise<StatementResult>
}

/** The values of `statement`'s placeholders, in order; a name without a value is a bug here, not the caller's. */
function positional(statement: Statement, values: object): unknown[] {
  return statement.names.map((name) => {
    const value = (values as Record<string, unknown>)[name]
    if (value === undefined) throw new TypeError(`worker-locks: no value for :${name} in ${statement.sql}`)
    return value
  })
}

interface Client {
  driverName?: string
  acquireConnection(): Promise<unknown>
  releaseConnection(connection: unknown): Promise<void>
  emit(event: 'query', data: object): void
}

interface SqliteConnection {
  prepare(sql: string): { reader: boolean; all(...params: unknown[]): Record<string, unknown>[]; run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint } }
}
interface PgConnection {
  query(query: { name: string; text: string; values: unknown[] }): Promise<{ rows: Record<string, unknown>[]; rowCount: number | null }>
}
interface MysqlConnection {
  execute(sql: string, values: unknown[], callback: (error: Error | null, result: unknown) => void): void
}

// Prepared statements live as long as their connection; keyed weakly so a dropped connection takes its cache along.
const sqliteStatements = new WeakMap<object, Map<string, ReturnType<SqliteConnection['prepare']>>>()
const pgNames = new Map<string, { name: string; text: string }>()

function pgStatement(sql: string): { name: string; text: string } {
  let statement = pgNames.get(sql)
  if (!statement) {
    let n = 0
    const text = sql.replace(/\?/g, () => `$${++n}`)
    statement = { name: `wl_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`, text }
    pgNames.set(sql, statement)
  }
  return statement
}

/** Fires knex's `query` event for a statement run on `connection`, so that query logging sees it. */
function emitQuery(client: Client, connection: unknown, sql: string, params: readonly unknown[], kind: string): void {
  client.emit('query', { sql, bindings: params, method: 'raw', __knexUid: (connection as { __knexUid?: string }).__knexUid, workerLocksKind: kind })
}

function withConnection<T>(client: Client, sql: string, params: readonly unknown[], kind: string, run: (connection: unknown) => Promise<T> | T): Promise<T> {
  return borrow(client, (connection) => {
    emitQuery(client, connection, sql, params, kind)
    return run(connection)
  })
}

/** Runs `run` with a connection of knex's pool, given back once it has settled. */
function borrow<T>(client: Client, run: (connection: unknown) => Promise<T> | T): Promise<T> {
  // Chained rather than async/await: this runs twice per lock, and every hop costs.
  return client.acquireConnection().then((connection) => {
    // Synchronous in knex (the promise it returns is already settled): no need to wait for it.
    const giveBack = (): void => { void client.releaseConnection(connection) }
    try {
      const result = run(connection)
      // A thenable, not only a native Promise: pg can be given another Promise implementation.
      if (typeof (result as { then?: unknown } | undefined)?.then !== 'function') {
        giveBack()
        return result
      }
      return Promise.resolve(result).then((value) => {
        giveBack()
        return value
      }, (error: unknown) => {
        giveBack()
        throw error
      })
    } catch (error) {
      giveBack()
      throw error
    }
  })
}

const executors = new WeakMap<object, Executor>()

/** The fastest executor for this knex instance's driver, or one that goes through `knex.raw`. */
export function executorFor(knex: Knex, rowsOf: (result: unknown) => readonly Record<string, unknown>[]): Executor {
  let executor = executors.get(knex)
  if (!executor) executors.set(knex, (executor = makeExecutor(knex, rowsOf)))
  return executor
}

/** Runs a statement's text with its values in order. */
interface PositionalExecutor {
  run(sql: string, params: readonly unknown[], kind: string): Promise<StatementResult>
}

function makeExecutor(knex: Knex, rowsOf: (result: unknown) => readonly Record<string, unknown>[]): Executor {
  const client = knex.client as unknown as Client
  const executor = client.driverName === 'better-sqlite3' ? sqliteExecutor(client)
    : client.driverName === 'pg' ? pgExecutor(client)
      : client.driverName === 'mysql2' ? mysqlExecutor(client)
        : knexExecutor(knex, rowsOf)
  return { run: (statement, values) => executor.run(statement.sql, positional(statement, values), statement.kind) }
}

/** Runs one statement on a better-sqlite3 connection at once, through the connection's prepared-statement cache. */
function runOnSqlite(conn: SqliteConnection & object, sql: string, params: readonly unknown[]): StatementResult {
  let cache = sqliteStatements.get(conn)
  if (!cache) sqliteStatements.set(conn, (cache = new Map()))
  let statement = cache.get(sql)
  if (!statement) cache.set(sql, (statement = conn.prepare(sql)))
  if (statement.reader) return { rows: statement.all(...params), affectedRows: 0, insertId: 0 }
  const info = statement.run(...params)
  return { rows: [], affectedRows: info.changes, insertId: Number(info.lastInsertRowid) }
}

/**
 * Runs `work` on one better-sqlite3 connection of knex's pool, synchronously: `run` executes a
 * statement at once (knex's `query` event still fires). Nothing else of this process can run
 * between its statements, which is what a transaction needs on SQLite: another connection of the
 * same process that waited for the write lock meanwhile would block the thread in its busy
 * handler, and the transaction holding the lock could never finish.
 */
export function withSqliteConnection<T>(knex: Knex, work: (run: (statement: Statement, values: object) => StatementResult) => T): Promise<T> {
  const client = knex.client as unknown as Client
  return onSqliteConnection(client, (connection) => work((statement, values) => {
    const params = positional(statement, values)
    emitQuery(client, connection, statement.sql, params, statement.kind)
    return runOnSqlite(connection, statement.sql, params)
  }))
}

/**
 * A connection of knex's pool that nobody has checked out, if the pool is knex's own (tarn), is
 * not being destroyed, and has one that is open and outside any transaction. Reading tarn's free
 * list is reading its internals: any other shape gives `undefined`. The connection's idle time
 * starts again, as a checkout would restart it, so that the pool does not close a connection in
 * constant use as idle.
 */
function idleConnection(client: Client): (SqliteConnection & object) | undefined {
  const pool = (client as { pool?: { free?: unknown; destroyed?: unknown } }).pool
  const free = pool?.free
  if (pool?.destroyed === true || !Array.isArray(free) || free.length === 0) return undefined
  const entry = free[free.length - 1] as { resource?: unknown; timestamp?: unknown } | undefined
  const connection = entry?.resource as (Partial<SqliteConnection> & { open?: unknown; inTransaction?: unknown }) | undefined
  if (typeof connection?.prepare !== 'function' || connection.open !== true || connection.inTransaction !== false) return undefined
  if (typeof entry?.timestamp === 'number') entry.timestamp = Date.now()
  return connection as SqliteConnection & object
}

/**
 * Runs synchronous `work` on a better-sqlite3 connection of knex's pool. Nothing else of this
 * process can use a connection while synchronous work runs on it, so a connection that sits idle
 * in the pool is used in place, without checking it out and back in: on a busy machine the
 * checkout, not the statement, was the larger part of the library's own cost per lock (see
 * bench/RESULTS.md, issue 18). When every connection is checked out (a transaction of the
 * application holds the only one, say), the work waits for one through the pool.
 */
function onSqliteConnection<T>(client: Client, work: (connection: SqliteConnection & object) => T): Promise<T> {
  const idle = idleConnection(client)
  if (idle === undefined) return borrow(client, (connection) => work(connection as SqliteConnection & object))
  try {
    return Promise.resolve(work(idle))
  } catch (error) {
    return Promise.reject(error)
  }
}

function sqliteExecutor(client: Client): PositionalExecutor {
  return {
    run: (sql, params, kind) => onSqliteConnection(client, (connection) => {
      emitQuery(client, connection, sql, params, kind)
      return runOnSqlite(connection, sql, params)
    }),
  }
}

function pgExecutor(client: Client): PositionalExecutor {
  return {
    run: (sql, params, kind) => withConnection(client, sql, params, kind, (connection) =>
      (connection as PgConnection).query({ ...pgStatement(sql), values: params as unknown[] })
        .then((result) => ({ rows: result.rows, affectedRows: result.rowCount ?? 0, insertId: 0 }))),
  }
}

function mysqlExecutor(client: Client): PositionalExecutor {
  return {
    run: (sql, params, kind) => withConnection(client, sql, params, kind, (connection) => new Promise<StatementResult>((resolve, reject) => {
      // execute() prepares the statement once per connection and binds values on the server.
      (connection as MysqlConnection).execute(sql, [...params], (error, result) => {
        if (error) return reject(error)
        if (Array.isArray(result)) return resolve({ rows: result as Record<string, unknown>[], affectedRows: 0, insertId: 0 })
        const header = result as { affectedRows: number; insertId: number }
        resolve({ rows: [], affectedRows: header.affectedRows, insertId: Number(header.insertId) })
      })
    })),
  }
}

// Any other driver: through knex.raw, slower but the same answers.
function knexExecutor(knex: Knex, rowsOf: (result: unknown) => readonly Record<string, unknown>[]): PositionalExecutor {
  return {
    async run(sql, params, kind) {
      const result: unknown = await knex.raw(sql, [...params] as Knex.RawBinding[]).options({ workerLocksKind: kind })
      const header = (Array.isArray(result) ? result[0] : result) as { affectedRows?: number; insertId?: number; rowCount?: number; changes?: number }
      return {
        rows: rowsOf(result),
        affectedRows: Number(header?.affectedRows ?? header?.rowCount ?? header?.changes ?? 0),
        insertId: Number(header?.insertId ?? 0),
      }
    },
  }
}

/**
 * The kind of one of a statement's four variants, by the clock it writes (`local-clock`: a bound value,
 * `database-clock`: the database's) and by whether it ends in `RETURNING`: the names are built
 * once, and the hot path picks one without building a string.
 */
export type VariantKinds = (databaseClock: boolean, returning: boolean) => string

/** See {@link VariantKinds}. */
export function variantKinds(kind: string): VariantKinds {
  const [local, localReturning, database, databaseReturning] = ['local-clock', 'local-clock/returning', 'database-clock', 'database-clock/returning'].map((variant) => `${kind}/${variant}`) as [string, string, string, string]
  return (databaseClock, returning) => (databaseClock ? (returning ? databaseReturning : database) : (returning ? localReturning : local))
}

// dialect → kind → table → statement. Nested rather than one joined key, so a lookup on the hot
// path builds no string: the kinds are constants and the table name is the store's own string.
const statements = new Map<string, Map<string, Map<string, Statement>>>()

// `:name`, but not the second colon of a PostgreSQL cast (`x::text`).
const PLACEHOLDER = /(?<!:):([A-Za-z_][A-Za-z0-9_]*)/g

/** `text` with its `:name` placeholders turned into `?`, and the names in order. */
function compile(kind: string, text: string): Statement {
  const names: string[] = []
  const sql = text.replace(PLACEHOLDER, (_, name: string) => {
    names.push(name)
    return '?'
  })
  return { kind, sql, names }
}

/**
 * The statement `kind` for `table`, built once per database family and then reused, so the hot
 * path builds no SQL. `build` writes values as named placeholders (`:name`), mapped to positions
 * once, here. `kind` must name everything else the text depends on (a constant per variant).
 * `quote` quotes an identifier the way knex does for this database.
 */
export function statement(knex: Knex, kind: string, table: string, build: (quote: (name: string) => string) => string): Statement {
  const dialect = (knex.client as { dialect?: string }).dialect ?? ''
  let kinds = statements.get(dialect)
  if (!kinds) statements.set(dialect, (kinds = new Map()))
  let tables = kinds.get(kind)
  if (!tables) kinds.set(kind, (tables = new Map()))
  let built = tables.get(table)
  if (built === undefined) tables.set(table, (built = compile(kind, build((name) => knex.raw('??', [name]).toQuery()))))
  return built
}
