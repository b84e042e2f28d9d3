import type { Knex } from 'knex'
import { acquireOnConflict } from './on-conflict.js'
import { errorCode, type AcquireRequest, type Dialect, type NativeSupport } from './dialect.js'

// Upsert needs 3.24; telling whether our row was written in the same statement needs RETURNING
// (3.35), because knex's raw() does not hand back the change count on every SQLite driver.
const MIN_NATIVE_VERSION: readonly [number, number] = [3, 35]

/** Whether an SQLite library version string (e.g. `3.34.1`) can run the native acquire. */
export function sqliteSupportsNative(version: string): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number)
  return major > MIN_NATIVE_VERSION[0] || (major === MIN_NATIVE_VERSION[0] && minor >= MIN_NATIVE_VERSION[1])
}

/** SQLite through `better-sqlite3` (or `sqlite3`). */
export const sqliteDialect: Dialect = {
  name: 'sqlite',
  // julianday() arithmetic loses milliseconds to floating point; whole seconds plus the
  // millisecond digits of %f is exact. 'now' is fixed for the whole statement.
  nowSql: "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))",
  // SQLITE_MAX_VARIABLE_NUMBER before 3.32; later builds allow 32,766.
  maxBindings: 999,

  async nativeSupport(knex: Knex): Promise<NativeSupport> {
    const rows = (await knex.raw('SELECT sqlite_version() AS version')) as Array<{ version: string }>
    const version = rows[0]?.version ?? '0'
    const supported = sqliteSupportsNative(version)
    return {
      supported,
      server: `SQLite ${version}`,
      reason: supported ? '' : `the native acquire needs SQLite ${MIN_NATIVE_VERSION.join('.')} or later (INSERT … RETURNING)`,
    }
  },

  acquireNative: (knex: Knex, request: AcquireRequest) =>
    acquireOnConflict(knex, sqliteDialect, request, (result) => result as unknown[]),

  // No transaction. better-sqlite3 runs statements synchronously, busy handler included: a
  // transaction left open across an await on one pooled connection while another connection of
  // the same process waits for the write lock blocks the whole thread until the busy timeout, and
  // both fail with SQLITE_BUSY. Two autocommit statements never hold the lock across an await.
  emulatedTransaction: null,

  isUniqueViolation: (error) => {
    const code = errorCode(error)
    return code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE'
  },
  // Writers are serialised by the busy timeout; a BUSY that outlasts it is an error to report.
  isTransientConflict: () => false,
}
