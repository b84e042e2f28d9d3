import type { Knex } from 'knex'
import type { Dialect } from './dialect.js'
import { mysqlDialect } from './mysql.js'
import { postgresDialect } from './postgres.js'
import { sqliteDialect } from './sqlite.js'

export type { AcquireRequest, Dialect, DialectName, Heard, ReleaseNotifications, ReleaseSubscription, RowIdentity, ServerFacts, Strategy } from './dialect.js'
export { nowBinding } from './dialect.js'
export { acquire, releaseByDelete, retryingConflicts } from './acquire.js'
export { clockKind, database, statement, type Db, type DatabaseOptions, type Statement } from './executor.js'
export { StatementTimeoutError, stoppedAtBound, type Bound } from './bounds.js'
export { acquireReadWrite, claimIntent, dropIntent, readWriteTables, type ReadWritePart, type ReadWriteRequest, type ReadWriteSql } from './read-write.js'

// Keyed by knex's `client.dialect`, which driver variants inherit (mysql2 → 'mysql',
// better-sqlite3 → 'sqlite3', pg-native → 'postgresql').
const registry: Readonly<Record<string, Dialect>> = {
  postgresql: postgresDialect,
  sqlite3: sqliteDialect,
  mysql: mysqlDialect,
}

/** The knex dialect name of a knex instance, or `undefined` if it is not one. */
export function knexDialectName(knex: Knex): string | undefined {
  const dialect: unknown = (knex as { client?: { dialect?: unknown } }).client?.dialect
  return typeof dialect === 'string' ? dialect : undefined
}

/**
 * The dialect for a knex instance, or `undefined` when its database or driver is not supported.
 * SQLite only through better-sqlite3: read/write locks run their transaction on one connection
 * without returning to the event loop, which the `sqlite3` driver cannot do.
 */
export function findDialect(knex: Knex): Dialect | undefined {
  const name = knexDialectName(knex)
  if (name === 'sqlite3' && (knex.client as { driverName?: unknown }).driverName !== 'better-sqlite3') return undefined
  return name !== undefined && Object.hasOwn(registry, name) ? registry[name] : undefined
}

/** The knex client names that are supported, for error messages. */
export const supportedKnexClients: readonly string[] = ['pg', 'better-sqlite3', 'mysql2', 'mysql']
