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
      `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms, fence)
       VALUES (?, ?, ?, ?, ${now}, ?, (SELECT MAX(m) + 1 FROM (SELECT MAX(fence) AS m FROM "${table}" UNION ALL SELECT high_water FROM "${table}_fence")))
       ON CONFLICT (lock_name, lock_key) DO UPDATE
       SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts, lease_ms = excluded.lease_ms,
         fence = (SELECT MAX(m) + 1 FROM (SELECT MAX(fence) AS m FROM "${table}" UNION ALL SELECT high_water FROM "${table}_fence"))
       WHERE t.last_renewed_ts + t.lease_ms < excluded.last_renewed_ts OR t.instance_name = excluded.instance_name
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
    // The fence is drawn under the lock's advisory lock (as worker-locks does).
    const fence = (id: string): string =>
      `(SELECT nextval('"${table}_fence_seq"'::regclass) FROM (SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${id}))) AS l)`
    const acquire = `INSERT INTO "${table}" AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms, fence)
       VALUES ($1, $2, $3, $4, ${now}, $5, ${fence("$6::text || '/' || $7::text")})
       ON CONFLICT (lock_name, lock_key) DO UPDATE
       SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts, lease_ms = excluded.lease_ms,
         fence = ${fence("t.lock_name || '/' || t.lock_key")}
       WHERE t.last_renewed_ts + t.lease_ms < excluded.last_renewed_ts OR t.instance_name = excluded.instance_name
       RETURNING fence`
    // The release wakes whoever of another process is first in the waiting line, or notifies
    // everyone (as worker-locks does; the advisory-lock check of each place is left out).
    const release = `WITH released AS (DELETE FROM "${table}" WHERE lock_name = $1 AND lock_key = $2 AND token = $3 RETURNING lock_name, lock_key)
       SELECT pg_notify(
         COALESCE((SELECT 'wl_waiter_' || w.waiter FROM "${table}_waiters" w
                   WHERE w.lock_name = r.lock_name AND w.lock_key = r.lock_key AND w.process_tag <> $4 AND w.expires_ts > ${now}
                   ORDER BY w.since_ts, w.waiter LIMIT 1), $5),
         json_build_array(r.lock_name, r.lock_key, $4::text)::text)
       FROM released r`
    return {
      acquire: async (n, k, t) => (await client.query({ name: 'raw_acquire', text: acquire, values: [n, k, instance, t, lockTimeoutMs, n, k] })).rows[0],
      release: async (n, k, t) => { await client.query({ name: 'raw_release', text: release, values: [n, k, t, 'raw', `${table}_released`] }) },
      close: async () => { await client.end() },
    }
  }
  // The callback API: the promise wrapper of mysql2 costs a few per cent more per statement.
  const connection = mysql.createConnection(MYSQL_URL)
  const execute = (sql: string, values: unknown[]): Promise<unknown> => new Promise((resolve, reject) =>
    connection.execute(sql, values as never, (error: Error | null, result: unknown) => (error ? reject(error) : resolve(result))))
  const now = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"
  const acquire = `INSERT INTO \`${table}\` (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms) VALUES (?, ?, ?, ?, ${now}, ?)
     ON DUPLICATE KEY UPDATE
       token = IF(last_renewed_ts + lease_ms < ${now} OR instance_name = ?, ?, IF(LAST_INSERT_ID(1), token, token)),
       instance_name = IF(token = ?, ?, instance_name),
       last_renewed_ts = IF(token = ?, ${now}, last_renewed_ts),
       lease_ms = IF(token = ?, ?, lease_ms)`
  const fence = `SELECT fence FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  const release = `DELETE FROM \`${table}\` WHERE lock_name = ? AND lock_key = ? AND token = ?`
  return {
    async acquire(n, k, t) {
      const header = await execute(acquire, [n, k, instance, t, lockTimeoutMs, instance, t, t, instance, t, t, lockTimeoutMs]) as { insertId: number }
      if (header.insertId === 1) return null
      return execute(fence, [n, k, t])
    },
    release: async (n, k, t) => { await execute(release, [n, k, t]) },
    close: () => new Promise<void>((resolve, reject) => connection.end((error) => (error ? reject(error) : resolve()))),
  }
}
