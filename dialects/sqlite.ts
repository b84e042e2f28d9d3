import type { Knex } from 'knex'
import { upsertKey, upsertedFence } from './read-write.js'
import { statement } from './executor.js'
import { acquireOnConflict, releaseByDelete } from './acquire.js'
import { errorCode, rowsJson, type Dialect, type RowIdentity } from './dialect.js'

// Upsert needs 3.24; telling whether our row was written, and its fence, in the same statement
// needs RETURNING (3.35).
const MIN_NATIVE_VERSION: readonly [number, number] = [3, 35]

/** Whether an SQLite library version string (e.g. `3.34.1`) can run the native acquire. */
export function sqliteSupportsNative(version: string): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number)
  return major > MIN_NATIVE_VERSION[0] || (major === MIN_NATIVE_VERSION[0] && minor >= MIN_NATIVE_VERSION[1])
}

/**
 * The highest fence of any deleted row: the first migration's trigger raises it on every delete
 * (a release, an operator's DELETE, the emulated path's removal of a stale row).
 */
const highWater = (table: string, quote: (name: string) => string): string =>
  `(SELECT high_water FROM ${quote(`${table}_fence`)} WHERE id = 1)`

/** SQLite through `better-sqlite3` (the `sqlite3` driver is refused, see `findDialect`). */
export const sqliteDialect: Dialect = {
  name: 'sqlite',
  // julianday() arithmetic loses milliseconds to floating point; whole seconds plus the
  // millisecond digits of %f is exact. 'now' is fixed for the whole statement.
  nowSql: "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))",

  async detect(db) {
    const { knex } = db
    const { rows } = await db.query(knex.raw('SELECT sqlite_version() AS version, (SELECT query_only FROM pragma_query_only) AS query_only'), 'detect')
    const version = String(rows[0]?.version ?? '0')
    const native = sqliteSupportsNative(version)
    const reason = native ? '' : `the native acquire needs SQLite ${MIN_NATIVE_VERSION.join('.')} or later (INSERT … RETURNING)`
    // better-sqlite3 says whether it opened the file read-only; a file the OS lets no one write is
    // found at the first write (SQLITE_READONLY, see isReadOnly).
    const connection = await knex.client.acquireConnection() as { readonly?: unknown }
    const file = connection.readonly === true
    await knex.client.releaseConnection(connection)
    const readOnly = Number(rows[0]?.query_only) === 1 ? 'the connection is read-only (PRAGMA query_only is on)' : file ? 'the database file is opened read-only' : ''
    return { server: `SQLite ${version}`, native, reason, returning: native, unsupported: '', readOnly, standby: false, readWriteInOne: false }
  },

  acquireNative: (db, request) => acquireOnConflict(db, sqliteDialect, request),

  // Fences need only grow per lock. A lock without a row was last held by a row since deleted,
  // whose fence the high water is at least. A statement that writes holds SQLite's write lock
  // from its first step, so the read cannot race another writer.
  insertFence: { sql: (table, quote) => `(${highWater(table, quote)} + 1)`, bindsLock: false },

  // A takeover exceeds the row's own fence, which exceeds every earlier fence of the lock, and
  // the high water too, for a row inserted by hand with a lower fence after the lock's row was
  // deleted. (Rows must leave the table by DELETE: REPLACE fires no delete trigger.)
  takeoverFenceSql: (table: string, quote: (name: string) => string) => `(MAX(t.fence, ${highWater(table, quote)}) + 1)`,

  release: (db, table, row) => releaseByDelete(db, table, row),

  // json_extract rather than ->>, which needs SQLite 3.38. SQLite looks each element up by key.
  restrictToRows: (query: Knex.QueryBuilder, _table: string, rows: readonly RowIdentity[]) =>
    query.whereRaw(
      "(lock_name, lock_key, token) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?))",
      [rowsJson(rows)],
    ),

  rowsOf: (result) => result as Record<string, unknown>[],

  // No transaction: better-sqlite3 waits for the write lock on the calling thread, so a
  // transaction held open across an await, while another connection of the process waits for
  // that lock, would block the whole thread. Two autocommit statements never hold it across one.
  emulatedTransaction: null,

  isMissingSchema: (error) => error instanceof Error && /no such table|no such column|has no column named/i.test(error.message),
  isUniqueViolation: (error) => errorCode(error) === 'SQLITE_CONSTRAINT_PRIMARYKEY' || errorCode(error) === 'SQLITE_CONSTRAINT_UNIQUE',
  // Writers are serialised by the busy timeout; a BUSY that outlasts it is an error to report.
  isTransientConflict: () => false,
  // SQLITE_READONLY and its extended codes (SQLITE_READONLY_DBMOVED, …)
  isReadOnly: (error) => String(errorCode(error)).startsWith('SQLITE_READONLY'),

  readWrite: {
    lockKey: upsertKey,
    fenceOf: upsertedFence,
    integer: (placeholder) => placeholder,
    // All on one connection without returning to the event loop (see emulatedTransaction), as
    // the driver allows: BEGIN IMMEDIATE takes the write lock first, waiting for other processes
    // with the connection's busy timeout.
    transact: (db, work) => {
      if (!db.inPlace) throw new TypeError('worker-locks: read/write locks on SQLite need the better-sqlite3 driver')
      const { knex } = db
      return db.inPlace((run) => {
        run(statement(knex, 'rw-begin', '', () => 'BEGIN IMMEDIATE'), {})
        try {
          const steps = work()
          let next = steps.next()
          while (!next.done) next = steps.next(run(next.value.statement, next.value.values))
          run(statement(knex, 'rw-commit', '', () => 'COMMIT'), {})
          return next.value
        } catch (error) {
          // A failed statement may already have ended the transaction: the original error counts.
          try { run(statement(knex, 'rw-rollback', '', () => 'ROLLBACK'), {}) } catch { /* see above */ }
          throw error
        }
      })
    },
  },
}
