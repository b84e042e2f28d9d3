import type { Knex } from 'knex'
import { toFence, type AcquireRequest, type Dialect } from './dialect.js'
import { executorFor, statement, variantKinds, type VariantKinds } from './executor.js'

const onConflictKind = variantKinds('on-conflict')

/**
 * The native acquire shared by PostgreSQL and SQLite, which spell upsert the same way. The WHERE
 * of DO UPDATE decides a takeover, by the lease the existing row carries; RETURNING yields a row,
 * with the new fence, only when our row was written, which answers "did we get it" in the same
 * round trip. The fences are the dialect's (`Dialect.insertFence`, `Dialect.takeoverFenceSql`).
 */
export function acquireOnConflict(knex: Knex, dialect: Dialect, r: AcquireRequest): Promise<bigint | null> {
  return runOnConflict(knex, dialect, r, onConflictKind, (upsert) => upsert, {})
}

/**
 * `acquireOnConflict` with the upsert wrapped: `wrap` turns the upsert's text into the
 * statement's (which must still yield the `fence` column, one row when our row was written), and
 * `extra` are the values of the placeholders it adds. `kind` names the wrapping (see `variantKinds`). The upsert's own
 * placeholders are :name, :key, :instance, :token, :now, :lease.
 */
export async function runOnConflict(
  knex: Knex, dialect: Dialect, r: AcquireRequest, kind: VariantKinds, wrap: (upsert: string, quote: (name: string) => string) => string,
  extra: Readonly<Record<string, unknown>>,
): Promise<bigint | null> {
  const databaseClock = r.nowMs === null
  const sql = statement(knex, kind(databaseClock, false), r.table, (quote) => {
    const t = quote(r.table)
    const fence = dialect.insertFence?.sql(r.table, quote, { name: ':name', key: ':key' })
    return wrap(`INSERT INTO ${t} AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms${fence ? ', fence' : ''})
     VALUES (:name, :key, :instance, :token, ${databaseClock ? dialect.nowSql : ':now'}, :lease${fence ? `, ${fence}` : ''})
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token,
         last_renewed_ts = excluded.last_renewed_ts, lease_ms = excluded.lease_ms, fence = ${dialect.takeoverFenceSql(r.table, quote) ?? 'excluded.fence'}
     WHERE t.last_renewed_ts + t.lease_ms < excluded.last_renewed_ts OR t.instance_name = excluded.instance_name
     RETURNING fence`, quote)
  })
  const values = { ...extra, name: r.name, key: r.key, instance: r.instanceName, token: r.token, now: r.nowMs, lease: r.leaseMs }
  const { rows } = await executorFor(knex, dialect.rowsOf).run(sql, values)
  const row = rows[0]
  return row === undefined ? null : toFence(row.fence)
}
