// The driver-level contenders, prepared statements on the bare driver with no library in between:
// - `rawContender`: the same statements worker-locks runs to acquire and release, fences (and on
//   PostgreSQL the release's NOTIFY) included;
// - `bareContender`: the minimal cycle a user could write by hand (Synapse's native upsert and
//   a token-guarded DELETE) on a table of its own without a fence column, counter, trigger or
//   sequence (`createBareTable`). It is the floor section 1's ratios are taken against.
import { randomBytes } from 'node:crypto'
import type { Knex } from 'knex'
import Database from 'better-sqlite3'
import pg from 'pg'
import mysql from 'mysql2'
import { MYSQL_URL, POSTGRES_URL, sqliteFile, type Database as DatabaseName } from '../test/targets.mjs'

/** One acquire (returning the fence or a row, or null when refused) and one token-guarded release. */
export interface RawContender {
  acquire(name: string, key: string, token: string): Promise<unknown>
  release(name: string, key: string, token: string): Promise<void>
  close(): Promise<void>
}

const token = (): string => randomBytes(16).toString('hex')
export { token as newToken }

const SQLITE_NOW = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))"
const POSTGRES_NOW = '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint'
const MYSQL_NOW = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"
// What the MySQL upsert hands LAST_INSERT_ID() when it refuses (as the mysql dialect does).
const REFUSED = 1

/** The upsert's clauses after the fence, common to the raw and the bare statement (SQLite, PostgreSQL). */
const takeover = (fenceSet: string, returning: string): string =>
  `SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts, lease_ms = excluded.lease_ms${fenceSet}
   WHERE t.last_renewed_ts + t.lease_ms < excluded.last_renewed_ts OR t.instance_name = excluded.instance_name
   RETURNING ${returning}`

/** MySQL's upsert as the mysql dialect writes it: the token is decided first, the other columns follow it. */
const mysqlUpsert = (table: string): string =>
  `INSERT INTO \`${table}\` (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms) VALUES (?, ?, ?, ?, ${MYSQL_NOW}, ?)
     ON DUPLICATE KEY UPDATE
       token = IF(last_renewed_ts + lease_ms < ${MYSQL_NOW} OR instance_name = ?, ?, IF(LAST_INSERT_ID(${REFUSED}), token, token)),
       instance_name = IF(token = ?, ?, instance_name),
       last_renewed_ts = IF(token = ?, ${MYSQL_NOW}, last_renewed_ts),
       lease_ms = IF(token = ?, ?, lease_ms)`
const mysqlUpsertValues = (n: string, k: string, instance: string, t: string, leaseMs: number): unknown[] =>
  [n, k, instance, t, leaseMs, instance, t, t, instance, t, t, leaseMs]

function openSqlite(): Database.Database {
  const db = new Database(sqliteFile)
  db.pragma('journal_mode = WAL')
  db.pragma('busy_timeout = 5000')
  return db
}

async function openPostgres(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: POSTGRES_URL })
  await client.connect()
  return client
}

/**
 * A mysql2 connection through its callback API (the promise wrapper costs a few per cent more per
 * statement). A statement InnoDB picks as a deadlock's victim (1213: under 8 processes on 1,000
 * keys, a DELETE's next-key locks meet other keys' inserts) runs again, up to 5 times in all.
 */
function openMysql(): { execute(sql: string, values: unknown[]): Promise<unknown>; close(): Promise<void> } {
  const connection = mysql.createConnection(MYSQL_URL)
  const once = (sql: string, values: unknown[]): Promise<unknown> => new Promise((resolve, reject) =>
    connection.execute(sql, values as never, (error: Error | null, result: unknown) => (error ? reject(error) : resolve(result))))
  const execute = (sql: string, values: unknown[], attempt = 1): Promise<unknown> => once(sql, values).catch((error: unknown) => {
    if ((error as { errno?: number }).errno !== 1213 || attempt >= 5) throw error
    return execute(sql, values, attempt + 1)
  })
  return {
    execute,
    close: () => new Promise<void>((resolve, reject) => connection.end((error) => (error ? reject(error) : resolve()))),
  }
}

export async function rawContender(database: DatabaseName, table: string, lockTimeoutMs: number): Promise<RawContender> {
  const instance = `raw-${process.pid}`
  if (database === 'sqlite') {
    const db = openSqlite()
    // The high water of deleted rows, which the first migration's trigger keeps.
    const highWater = `(SELECT high_water FROM "${table}_fence" WHERE id = 1)`
    const acquire = db.prepare(
      `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms, fence)
       VALUES (?, ?, ?, ?, ${SQLITE_NOW}, ?, ${highWater} + 1)
       ON CONFLICT (lock_name, lock_key) DO UPDATE ${takeover(`, fence = MAX(t.fence, ${highWater}) + 1`, 'fence')}`)
    const release = db.prepare(`DELETE FROM "${table}" WHERE lock_name = ? AND lock_key = ? AND token = ?`)
    return {
      acquire: async (n, k, t) => acquire.get(n, k, instance, t, lockTimeoutMs),
      release: async (n, k, t) => { release.run(n, k, t) },
      close: async () => { db.close() },
    }
  }
  if (database === 'postgres') {
    const client = await openPostgres()
    // The fence is drawn under the lock's advisory lock (as worker-locks does).
    const fence = (id: string): string =>
      `(SELECT nextval('"${table}_fence_seq"'::regclass) FROM (SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${id}))) AS l)`
    const acquire = `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms, fence)
       VALUES ($1, $2, $3, $4, ${POSTGRES_NOW}, $5, ${fence("$6::text || '/' || $7::text")})
       ON CONFLICT (lock_name, lock_key) DO UPDATE ${takeover(`, fence = ${fence("t.lock_name || '/' || t.lock_key")}`, 'fence')}`
    // The release tells every listening process (as worker-locks does), without waiting for the disk.
    const release = `WITH released AS (DELETE FROM "${table}" WHERE lock_name = $1 AND lock_key = $2 AND token = $3 RETURNING lock_name, lock_key)
       SELECT pg_notify($5, json_build_array(lock_name, lock_key, $4::text)::text), set_config('synchronous_commit', 'off', true) FROM released`
    return {
      acquire: async (n, k, t) => (await client.query({ name: 'raw_acquire', text: acquire, values: [n, k, instance, t, lockTimeoutMs, n, k] })).rows[0],
      release: async (n, k, t) => { await client.query({ name: 'raw_release', text: release, values: [n, k, t, 'raw', `${table}_released`] }) },
      close: async () => { await client.end() },
    }
  }
  const connection = openMysql()
  // As the mysql dialect does: the upsert marks a refusal through LAST_INSERT_ID, and a win reads
  // the fence the triggers wrote in a second statement (no RETURNING, see dialects/mysql.ts).
  const upsert = mysqlUpsert(table)
  const fence = `SELECT fence FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  const release = `DELETE FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  return {
    async acquire(n, k, t) {
      const header = await connection.execute(upsert, mysqlUpsertValues(n, k, instance, t, lockTimeoutMs)) as { insertId: number }
      return header.insertId === REFUSED ? null : connection.execute(fence, [n, k, t])
    },
    release: async (n, k, t) => { await connection.execute(release, [n, k, t]) },
    close: () => connection.close(),
  }
}

/** The bare cycle's table: the lock table's columns and primary key, without a fence or anything that keeps one. */
export async function createBareTable(knex: Knex, database: DatabaseName, table: string): Promise<void> {
  await knex.schema.createTable(table, (t) => {
    if (database === 'mysql') {
      for (const column of ['lock_name', 'lock_key', 'instance_name']) t.specificType(column, 'VARBINARY(1020)').notNullable()
      t.specificType('token', 'VARBINARY(64)').notNullable()
      t.engine('InnoDB')
    } else {
      for (const column of ['lock_name', 'lock_key', 'instance_name']) t.string(column, 255).notNullable()
      t.string('token', 64).notNullable()
    }
    t.bigInteger('last_renewed_ts').notNullable()
    t.bigInteger('lease_ms').notNullable()
    t.primary(['lock_name', 'lock_key'])
  })
}

/**
 * The bare two-statement cycle on a table made by `createBareTable`: the native upsert that takes
 * a free, stale or own row (PostgreSQL and SQLite `ON CONFLICT … DO UPDATE … WHERE … RETURNING 1`,
 * MySQL `ON DUPLICATE KEY UPDATE` with the IF()s of the mysql dialect), and the token-guarded
 * DELETE. `acquire` resolves null when refused.
 */
export async function bareContender(database: DatabaseName, table: string, lockTimeoutMs: number): Promise<RawContender> {
  const instance = `bare-${process.pid}-${token().slice(0, 8)}`
  const upsert = (p: (i: number) => string, now: string): string =>
    `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms)
     VALUES (${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}, ${now}, ${p(5)})
     ON CONFLICT (lock_name, lock_key) DO UPDATE ${takeover('', '1 AS taken')}`
  const deleteSql = (p: (i: number) => string, quote: string): string =>
    `DELETE FROM ${quote}${table}${quote} WHERE lock_name = ${p(1)} AND lock_key = ${p(2)} AND token = ${p(3)}`
  if (database === 'sqlite') {
    const db = openSqlite()
    const acquire = db.prepare(upsert(() => '?', SQLITE_NOW))
    const release = db.prepare(deleteSql(() => '?', '"'))
    return {
      acquire: async (n, k, t) => acquire.get(n, k, instance, t, lockTimeoutMs) ?? null,
      release: async (n, k, t) => { release.run(n, k, t) },
      close: async () => { db.close() },
    }
  }
  if (database === 'postgres') {
    const client = await openPostgres()
    const acquire = upsert((i) => `$${i}`, POSTGRES_NOW)
    const release = deleteSql((i) => `$${i}`, '"')
    return {
      acquire: async (n, k, t) => (await client.query({ name: 'bare_acquire', text: acquire, values: [n, k, instance, t, lockTimeoutMs] })).rows[0] ?? null,
      release: async (n, k, t) => { await client.query({ name: 'bare_release', text: release, values: [n, k, t] }) },
      close: async () => { await client.end() },
    }
  }
  const connection = openMysql()
  const release = deleteSql(() => '?', '`')
  return {
    async acquire(n, k, t) {
      const header = await connection.execute(mysqlUpsert(table), mysqlUpsertValues(n, k, instance, t, lockTimeoutMs)) as { insertId: number }
      return header.insertId === REFUSED ? null : header
    },
    release: async (n, k, t) => { await connection.execute(release, [n, k, t]) },
    close: () => connection.close(),
  }
}
