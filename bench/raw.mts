// The physical limit: the same statements worker-locks runs to acquire and release, sent
// through the bare driver as prepared statements, with no library in between.
import { randomBytes } from 'node:crypto'
import Database from 'better-sqlite3'
import pg from 'pg'
import mysql from 'mysql2'
import { MYSQL_URL, POSTGRES_URL, sqliteFile, type Database as DatabaseName } from '../test/targets.mjs'

/** One acquire (returning the fence, or null) and one token-guarded release. */
export interface RawContender {
  acquire(name: string, key: string, token: string): Promise<unknown>
  release(name: string, key: string, token: string): Promise<void>
  close(): Promise<void>
}

const token = (): string => randomBytes(16).toString('hex')
export { token as newToken }

export async function rawContender(database: DatabaseName, table: string, lockTimeoutMs: number): Promise<RawContender> {
  const instance = `raw-${process.pid}`
  if (database === 'sqlite') {
    const db = new Database(sqliteFile)
    db.pragma('journal_mode = WAL')
    db.pragma('busy_timeout = 5000')
    const now = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))"
    const acquire = db.prepare(
      `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, fence)
       VALUES (?, ?, ?, ?, ${now}, (SELECT MAX(m) + 1 FROM (SELECT MAX(fence) AS m FROM "${table}" UNION ALL SELECT high_water FROM "${table}_fence")))
       ON CONFLICT (lock_name, lock_key) DO UPDATE
       SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts, fence = excluded.fence
       WHERE t.last_renewed_ts < excluded.last_renewed_ts - ? OR t.instance_name = excluded.instance_name
       RETURNING fence`)
    const release = db.prepare(`DELETE FROM "${table}" WHERE lock_name = ? AND lock_key = ? AND token = ?`)
    return {
      acquire: async (n, k, t) => acquire.get(n, k, instance, t, lockTimeoutMs),
      release: async (n, k, t) => { release.run(n, k, t) },
      close: async () => { db.close() },
    }
  }
  if (database === 'postgres') {
    const client = new pg.Client({ connectionString: POSTGRES_URL })
    await client.connect()
    const now = '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint'
    const acquire = `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts) VALUES ($1, $2, $3, $4, ${now})
       ON CONFLICT (lock_name, lock_key) DO UPDATE
       SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts, fence = nextval('"${table}_fence_seq"'::regclass)
       WHERE t.last_renewed_ts < excluded.last_renewed_ts - $5 OR t.instance_name = excluded.instance_name
       RETURNING fence`
    // The release hands the lock to whoever is first in the waiting line, or notifies everyone
    // (as worker-locks does; the advisory-lock check of each place is left out).
    const line = `"${table}_waiters"`
    const release = `WITH next AS (
         SELECT w.waiter, w.instance_name, w.process_tag FROM ${line} w
         WHERE EXISTS (SELECT 1 FROM "${table}" WHERE lock_name = $1 AND lock_key = $2 AND token = $3)
           AND w.lock_name = $1 AND w.lock_key = $2 AND (w.process_tag <> $4 OR (w.waiter <> $7 AND w.instance_name IS NOT NULL)) AND w.expires_ts > ${now}
         ORDER BY w.since_ts, w.waiter LIMIT 1),
       handed AS (
         UPDATE "${table}" t SET instance_name = n.instance_name, token = $6, last_renewed_ts = ${now}, fence = nextval('"${table}_fence_seq"'::regclass)
         FROM next n WHERE n.instance_name IS NOT NULL AND t.lock_name = $1 AND t.lock_key = $2 AND t.token = $3
         RETURNING t.lock_name, t.lock_key, t.fence, n.waiter),
       released AS (
         DELETE FROM "${table}" WHERE lock_name = $1 AND lock_key = $2 AND token = $3 AND NOT EXISTS (SELECT 1 FROM next WHERE instance_name IS NOT NULL)
         RETURNING lock_name, lock_key),
       cleared AS (
         DELETE FROM ${line} w WHERE w.lock_name = $1 AND w.lock_key = $2
           AND (w.waiter IN (SELECT waiter FROM handed) OR (EXISTS (SELECT 1 FROM handed UNION ALL SELECT 1 FROM released) AND w.expires_ts <= ${now})))
       SELECT CASE WHEN n.process_tag <> $4 THEN pg_notify('wl_waiter_' || h.waiter, json_build_array(h.lock_name, h.lock_key, $4::text, $6::text, h.fence::text)::text) END
         FROM handed h, next n
       UNION ALL
       SELECT pg_notify(COALESCE((SELECT 'wl_waiter_' || waiter FROM next), $5), json_build_array(r.lock_name, r.lock_key, $4::text)::text) FROM released r`
    return {
      acquire: async (n, k, t) => (await client.query({ name: 'raw_acquire', text: acquire, values: [n, k, instance, t, lockTimeoutMs] })).rows[0],
      release: async (n, k, t) => { await client.query({ name: 'raw_release', text: release, values: [n, k, t, 'raw', `${table}_released`, token(), 'raw'] }) },
      close: async () => { await client.end() },
    }
  }
  // The callback API: the promise wrapper of mysql2 costs a few per cent more per statement.
  const connection = mysql.createConnection(MYSQL_URL)
  const execute = (sql: string, values: unknown[]): Promise<unknown> => new Promise((resolve, reject) =>
    connection.execute(sql, values as never, (error: Error | null, result: unknown) => (error ? reject(error) : resolve(result))))
  const now = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"
  const acquire = `INSERT INTO \`${table}\` (lock_name, lock_key, instance_name, token, last_renewed_ts) VALUES (?, ?, ?, ?, ${now})
     ON DUPLICATE KEY UPDATE
       token = IF(last_renewed_ts + ? < ${now} OR instance_name = ?, ?, IF(LAST_INSERT_ID(1), token, token)),
       instance_name = IF(token = ?, ?, instance_name),
       last_renewed_ts = IF(token = ?, ${now}, last_renewed_ts)`
  const fence = `SELECT fence FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  const release = `DELETE FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  return {
    async acquire(n, k, t) {
      const header = await execute(acquire, [n, k, instance, t, lockTimeoutMs, instance, t, t, instance, t]) as { insertId: number }
      if (header.insertId === 1) return null
      return execute(fence, [n, k, t])
    },
    release: async (n, k, t) => { await execute(release, [n, k, t]) },
    close: () => new Promise<void>((resolve, reject) => connection.end((error) => (error ? reject(error) : resolve()))),
  }
}
