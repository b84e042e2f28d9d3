import type { Knex } from 'knex'
import { toFence, type AcquireRequest, type Dialect } from './dialect.js'
import { executorFor, statement } from './executor.js'

/**
 * The native acquire shared by PostgreSQL and SQLite, which spell upsert the same way. The WHERE
 * of DO UPDATE decides a takeover; RETURNING yields a row, with the new fence, only when our row
 * was written, which answers "did we get it" in the same round trip.
 *
 * `fenceSql(table, quote)` is what an INSERT writes into `fence` (undefined where the column
 * fills itself), and `takeoverFenceSql` what a takeover writes: it must be drawn once the
 * conflicting row is locked, so that it exceeds every fence handed out before.
 */
export async function acquireOnConflict(
  knex: Knex, dialect: Dialect, r: AcquireRequest,
  fenceSql: ((quote: (name: string) => string) => string) | undefined,
  takeoverFenceSql: (quote: (name: string) => string) => string,
): Promise<bigint | null> {
  const databaseClock = r.nowMs === null
  const sql = statement(knex, databaseClock ? 'on-conflict/database-clock' : 'on-conflict/local-clock', r.table, (quote) => {
    const t = quote(r.table)
    const fence = fenceSql?.(quote)
    return `INSERT INTO ${t} AS t (lock_name, lock_key, instance_name, token, last_renewed_ts${fence ? ', fence' : ''})
     VALUES (?, ?, ?, ?, ${databaseClock ? dialect.nowSql : '?'}${fence ? `, ${fence}` : ''})
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token,
         last_renewed_ts = excluded.last_renewed_ts, fence = ${takeoverFenceSql(quote)}
     WHERE t.last_renewed_ts < excluded.last_renewed_ts - ? OR t.instance_name = excluded.instance_name
     RETURNING fence`
  })
  const params = databaseClock
    ? [r.name, r.key, r.instanceName, r.token, r.lockTimeoutMs]
    : [r.name, r.key, r.instanceName, r.token, r.nowMs, r.lockTimeoutMs]
  const { rows } = await executorFor(knex, dialect.rowsOf).run(sql, params)
  const row = rows[0]
  return row === undefined ? null : toFence(row.fence)
}
