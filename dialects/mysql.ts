import type { Knex } from 'knex'
import { clockKind, statement } from './executor.js'
import { fenceOf, releaseByDelete } from './acquire.js'
import { errorCode, type Dialect, type RowIdentity } from './dialect.js'

// LAST_INSERT_ID(expr) called in the refusal branch of the upsert below makes the server report
// `expr` as the statement's insert id; the table has no AUTO_INCREMENT column, so a statement that
// inserted or took over reports 0. Unlike affectedRows this does not depend on the connection's
// CLIENT_FOUND_ROWS flag (mysql2 sets it by default, and then "refused" and "inserted" both
// report 1).
const REFUSED_MARKER = 1

function errno(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { errno?: unknown }).errno : undefined
}

/**
 * Why a MySQL or MariaDB server version (as `SELECT VERSION()` spells it) is too old, or '' when
 * it is recent enough. JSON_TABLE, which makes all missing read/write key rows in one statement,
 * needs MySQL 8.0.4 or MariaDB 10.6.
 */
export function mysqlVersionProblem(version: string): string {
  const [major = 0, minor = 0, patch = 0] = (/^(\d+)\.(\d+)\.(\d+)/.exec(version) ?? []).slice(1).map(Number)
  const atLeast = (a: number, b: number, c: number): boolean =>
    major !== a ? major > a : minor !== b ? minor > b : patch >= c
  if (/mariadb/i.test(version)) return atLeast(10, 6, 0) ? '' : 'worker-locks needs MariaDB 10.6 or later (JSON_TABLE)'
  return atLeast(8, 0, 4) ? '' : 'worker-locks needs MySQL 8.0.4 or later (JSON_TABLE)'
}

/** The sql_modes a session may not have, and why (the first found is named; ORACLE includes SIMULTANEOUS_ASSIGNMENT). */
const REFUSED_SQL_MODES: Readonly<Record<string, string>> = {
  // mysql2 formats bound values into the SQL text on the client, escaping quotes with backslashes.
  NO_BACKSLASH_ESCAPES: 'under which mysql2 cannot quote values safely',
  ORACLE: 'whose syntax the library\'s statements are not written in',
  SIMULTANEOUS_ASSIGNMENT: 'under which the native acquire\'s later assignments would read the row\'s old token',
}

/** MySQL and MariaDB through `mysql2` (or `mysql`). */
export const mysqlDialect: Dialect = {
  name: 'mysql',
  // UNIX_TIMESTAMP(NOW(3)) converts local time back to UTC and is off by an hour around a DST
  // change; the difference of two UTC datetimes is plain calendar arithmetic.
  nowSql: "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)",

  async detect(db) {
    const { rows } = await db.query(db.knex.raw(`SHOW SESSION VARIABLES WHERE Variable_name IN ('version', 'sql_mode', 'autocommit',
      'character_set_client', 'character_set_connection', 'character_set_results', 'read_only', 'super_read_only', 'transaction_read_only', 'tx_read_only')`), 'detect')
    const settings = new Map(rows.map((row) => [String(row.Variable_name).toLowerCase(), String(row.Value ?? 'NULL')]))
    const setting = (name: string): string => settings.get(name) ?? ''
    const version = setting('version') || 'unknown'
    const server = /mariadb/i.test(version) ? `MariaDB ${version}` : `MySQL ${version}`
    const sqlModes = setting('sql_mode').toUpperCase().split(',')
    const refusedMode = Object.keys(REFUSED_SQL_MODES).find((mode) => sqlModes.includes(mode))
    // Names are bound as text and compared as the bytes the connection's charset makes of them:
    // stores on utf8mb4, utf8mb3 and latin1 connections would each hold the same name at once.
    const charset = ['character_set_client', 'character_set_connection', 'character_set_results'].find((name) => setting(name) !== 'utf8mb4')
    const on = (name: string): boolean => /^(on|1)$/i.test(setting(name))
    const readOnlyBy = ['super_read_only', 'read_only', 'transaction_read_only', 'tx_read_only'].find(on)
    const unsupported = mysqlVersionProblem(version)
      || (refusedMode ? `the session runs with sql_mode ${refusedMode}, ${REFUSED_SQL_MODES[refusedMode]}; leave it out of the session's sql_mode` : '')
      || (on('autocommit') ? '' : 'autocommit is off in the session, so the library\'s single statements would never be committed; leave autocommit on')
      || (charset ? `the connection's ${charset} is ${setting(charset)}, under which lock names are stored and compared as ${setting(charset)} bytes; connect with charset 'utf8mb4' (mysql2's default)` : '')
    const readOnly = readOnlyBy === undefined ? '' : `the ${/^(transaction|tx)_/.test(readOnlyBy) ? 'session' : 'server'} is read-only (${readOnlyBy} is ON)`
    // INSERT … ON DUPLICATE KEY UPDATE and LAST_INSERT_ID(expr) exist in every supported version.
    // MariaDB's INSERT … RETURNING is not used: on Galera the server drops the reply to one that
    // loses a certification conflict, and the caller would wait for ever. It saves one round trip.
    return { server, native: true, reason: '', returning: false, unsupported, readOnly, standby: false, readWriteInOne: false }
  },

  async acquireNative(db, r) {
    const now = r.nowMs === null ? mysqlDialect.nowSql : ':now'
    // MySQL assigns left to right and later assignments see earlier ones, so the token is
    // decided first and the other columns follow only if the token became ours. Any other order
    // compares against half-updated values and corrupts the row. The fence is set by triggers.
    // Staleness is judged by the lease the existing row carries (read before it is assigned).
    const sql = statement(db.knex, clockKind('odku', r.nowMs), r.table, (quote) =>
      `INSERT INTO ${quote(r.table)} (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms) VALUES (:name, :key, :instance, :token, ${now}, :lease)
       ON DUPLICATE KEY UPDATE
         token = IF(last_renewed_ts + lease_ms < ${now} OR instance_name = :instance, :token, IF(LAST_INSERT_ID(${REFUSED_MARKER}), token, token)),
         instance_name = IF(token = :token, :instance, instance_name),
         last_renewed_ts = IF(token = :token, ${now}, last_renewed_ts),
         lease_ms = IF(token = :token, :lease, lease_ms)`)
    const result = await db.run(sql, { name: r.name, key: r.key, instance: r.instanceName, token: r.token, lease: r.leaseMs, now: r.nowMs })
    // The fence the trigger wrote takes one more statement, paid only on success. The row is ours
    // from here on: that read is not cut short with the attempt (whoever stopped waiting releases
    // what it won), or the row would stay taken with nobody knowing its token.
    return result.insertId === REFUSED_MARKER ? null : fenceOf(db.within({}), r.table, r)
  },

  // Triggers fill the column (see the first migration), on insert and whenever the token
  // changes, from a counter row that each of them locks until its transaction commits.
  insertFence: undefined,
  takeoverFenceSql: () => undefined,

  release: (db, table, row) => releaseByDelete(db, table, row),

  // The native upsert's BEFORE INSERT trigger locks the counter row before the lock row; the
  // emulated DELETE would lock the lock row first. Take the counter first here too.
  async emulatedPrelude(db, table) {
    await db.query(db.knex.raw('SELECT value FROM ?? WHERE id = 1 FOR UPDATE', [`${table}_fence`]), 'emulated-prelude')
  },

  // A join to a derived table of bound rows, each found by primary key. Not `(a, b, c) IN (…)`:
  // MariaDB scans the whole table for that (a subquery once per row: 1,000 locks took 1.2 s
  // against 30 ms). Not JSON_TABLE either: on Galera an UPDATE joined to JSON_TABLE failed
  // certification against other nodes' grants of other rows (a quarter of renewals under
  // multi-writer contention); this form never did.
  restrictToRows: (query: Knex.QueryBuilder, table: string, rows: readonly RowIdentity[]) =>
    query.joinRaw(
      `JOIN (${rows.map(() => 'SELECT ? AS n, ? AS k, ? AS tok').join(' UNION ALL ')}) AS wl_rows
       ON ??.lock_name = wl_rows.n AND ??.lock_key = wl_rows.k AND ??.token = wl_rows.tok`,
      [...rows.flatMap((r) => [r.name, r.key, r.token]), table, table, table],
    ),

  rowsOf: (result) => (result as [Record<string, unknown>[]])[0],

  // InnoDB's REPEATABLE READ takes gap locks on the delete of a missing key, and concurrent
  // attempts on a new key then deadlock (1213) most of the time; READ COMMITTED takes none.
  emulatedTransaction: { isolationLevel: 'read committed' },

  // 1146 ER_NO_SUCH_TABLE, 1054 ER_BAD_FIELD_ERROR
  isMissingSchema: (error) => errno(error) === 1146 || errno(error) === 1054,

  isUniqueViolation: (error) => errno(error) === 1062 || errorCode(error) === 'ER_DUP_ENTRY',
  // 1213 ER_LOCK_DEADLOCK: InnoDB rolled this transaction back to let another one proceed.
  isTransientConflict: (error) => errno(error) === 1213 || errorCode(error) === 'ER_LOCK_DEADLOCK',
  // 1792 ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION; 1290 ER_OPTION_PREVENTS_STATEMENT, here for --read-only
  isReadOnly: (error) => errno(error) === 1792 || (errno(error) === 1290 && error instanceof Error && /read[-_]only/i.test(error.message)),
  readWrite: {
    // InnoDB's default, REPEATABLE READ, takes gap locks that deadlock concurrent acquisitions.
    transaction: { isolationLevel: 'read committed' },
    // An UPDATE locks the key row and draws the fence; LAST_INSERT_ID(expr) hands the new value
    // back in the same reply. No row (no row changed): createKeys makes the missing ones, outside the transaction.
    lockKey: (knex, keys, withIntent) => statement(knex, withIntent ? 'rw-key/intent' : 'rw-key', keys, (quote) => `UPDATE ${quote(keys)}
      SET fence = LAST_INSERT_ID(fence + 1)${withIntent ? ', intent_token = IF(intent_token = :intent, NULL, intent_token)' : ''}
      WHERE lock_name = :name AND lock_key = :key`),
    fenceOf: (result) => (result.affectedRows === 0 ? null : BigInt(result.insertId)),
    createKeys: (knex, keys) => statement(knex, 'rw-keys-create', keys, (quote) => `INSERT IGNORE INTO ${quote(keys)} (lock_name, lock_key, fence)
      SELECT n, k, 0 FROM JSON_TABLE(:parts, '$[*]' COLUMNS (
        n VARCHAR(255) CHARACTER SET utf8mb4 PATH '$[0]', k VARCHAR(255) CHARACTER SET utf8mb4 PATH '$[1]')) AS wl_parts`),
    integer: (placeholder) => placeholder,
  },
}
