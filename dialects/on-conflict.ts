import type { Knex } from 'knex'
import { nowBinding, type AcquireRequest, type Dialect } from './dialect.js'

/**
 * The native acquire shared by PostgreSQL and SQLite, which spell upsert the same way. The WHERE
 * of DO UPDATE decides a takeover; RETURNING yields a row only when our row was written, which
 * answers "did we get it" in the same round trip. `rowsOf` reads the driver's result shape.
 */
export async function acquireOnConflict(
  knex: Knex,
  dialect: Dialect,
  r: AcquireRequest,
  rowsOf: (result: unknown) => readonly unknown[],
): Promise<boolean> {
  const result: unknown = await knex.raw(
    `INSERT INTO ?? AS t (lock_name, lock_key, instance_name, token, last_renewed_ts) VALUES (?, ?, ?, ?, ?)
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token, last_renewed_ts = excluded.last_renewed_ts
     WHERE t.last_renewed_ts < excluded.last_renewed_ts - ? OR t.instance_name = excluded.instance_name
     RETURNING 1 AS acquired`,
    [r.table, r.name, r.key, r.instanceName, r.token, nowBinding(knex, dialect, r.nowMs), r.lockTimeoutMs],
  )
  return rowsOf(result).length === 1
}
