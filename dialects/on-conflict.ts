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
export function acquireOnConflict(
  knex: Knex, dialect: Dialect, r: AcquireRequest,
  fenceSql: ((quote: (name: string) => string) => string) | undefined,
  takeoverFenceSql: (quote: (name: string) => string) => string,
): Promise<bigint | null> {
  return runOnConflict(knex, dialect, r, 'on-conflict', (upsert) => upsert, [], fenceSql, takeoverFenceSql)
}

/**
 * `acquireOnConflict` with the upsert wrapped: `wrap` turns the upsert's text into the
 * statement's (which must still yield the `fence` column, one row when our row was written), and
 * `extra` are the parameters of what it adds, after the upsert's. `kind` names the wrapping.
 */
export async function runOnConflict(
  knex: Knex, dialect: Dialect, r: AcquireRequest, kind: string, wrap: (upsert: string, quote: (name: string) => string) => string,
  extra: readonly unknown[],
  fenceSql: ((quote: (name: string) => string) => string) | undefined,
  takeoverFenceSql: (quote: (name: string) => string) => string,
): Promise<bigint | null> {
  const databaseClock = r.nowMs === null
  const sql = statement(knex, `${kind}/${databaseClock ? 'database-clock' : 'local-clock'}`, r.table, (quote) => {
    const t = quote(r.table)
    const fence = fenceSql?.(quote)
    return wrap(`INSERT INTO ${t} AS t (lock_name, lock_key, instance_name, token, last_renewed_ts${fence ? ', fence' : ''})
     VALUES (?, ?, ?, ?, ${databaseClock ? dialect.nowSql : '?'}${fence ? `, ${fence}` : ''})
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token,
         last_renewed_ts = excluded.last_renewed_ts, fence = ${takeoverFenceSql(quote)}
     WHERE t.last_renewed_ts < excluded.last_renewed_ts - ? OR t.instance_name = excluded.instance_name
     RETURNING fence`, quote)
  })
  const params = databaseClock
    ? [r.name, r.key, r.instanceName, r.token, r.lockTimeoutMs, ...extra]
    : [r.name, r.key, r.instanceName, r.token, r.nowMs, r.lockTimeoutMs, ...extra]
  const { rows } = await executorFor(knex, dialect.rowsOf).run(sql, params)
  const row = rows[0]
  return row === undefined ? null : toFence(row.fence)
}
