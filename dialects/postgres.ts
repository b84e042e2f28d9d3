import type { Knex } from 'knex'
import { acquireOnConflict } from './on-conflict.js'
import { errorCode, rowsJson, type AcquireRequest, type Dialect, type RowIdentity, type ServerFacts } from './dialect.js'

// INSERT … ON CONFLICT arrived in PostgreSQL 9.5.
const MIN_NATIVE_VERSION_NUM = 90500

/** PostgreSQL through `pg`. */
export const postgresDialect: Dialect = {
  name: 'postgres',
  // clock_timestamp() rather than now(): now() is frozen at the start of the caller's
  // transaction, which may be long open. numeric epoch (PostgreSQL 14+) keeps milliseconds exact.
  nowSql: '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint',

  async detect(knex: Knex): Promise<ServerFacts> {
    const result = await knex.raw("SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version")
    const row = postgresDialect.rowsOf(result)[0] as { num: string; version: string }
    const native = Number(row.num) >= MIN_NATIVE_VERSION_NUM
    return { server: `PostgreSQL ${row.version}`, native, reason: native ? '' : 'INSERT … ON CONFLICT needs PostgreSQL 9.5 or later', returning: true }
  },

  acquireNative: (knex: Knex, request: AcquireRequest) => acquireOnConflict(knex, postgresDialect, request),

  // The column's default draws from a sequence (see migration 2).
  fenceValue: () => undefined,

  // The planner turns the row-value IN into one index lookup per element.
  restrictToRows: (knex: Knex, query: Knex.QueryBuilder, _table: string, rows: readonly RowIdentity[]) =>
    query.whereRaw('(lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)', [rowsJson(rows)]),

  rowsOf: (result) => (result as { rows: Record<string, unknown>[] }).rows,

  // READ COMMITTED whatever the server's default: at REPEATABLE READ or SERIALIZABLE the losers
  // of a race fail with 40001 instead of seeing the winner's row.
  emulatedTransaction: { isolationLevel: 'read committed' },

  isUniqueViolation: (error) => errorCode(error) === '23505',
  // 40001 serialization_failure, 40P01 deadlock_detected
  isTransientConflict: (error) => errorCode(error) === '40001' || errorCode(error) === '40P01',
}
