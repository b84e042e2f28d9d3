import type { Knex } from 'knex'
import { nowBinding, toFence, type AcquireRequest, type Dialect } from './dialect.js'

/**
 * The native acquire shared by PostgreSQL and SQLite, which spell upsert the same way. The WHERE
 * of DO UPDATE decides a takeover; RETURNING yields a row, with the new fence, only when our row
 * was written, which answers "did we get it" in the same round trip. `takeoverFence` is the
 * fence a takeover writes: it must be drawn once the conflicting row is locked, so that it
 * exceeds every fence handed out before.
 */
export async function acquireOnConflict(knex: Knex, dialect: Dialect, r: AcquireRequest, takeoverFence: Knex.Raw): Promise<bigint | null> {
  const fence = dialect.fenceValue(knex, r.table)
  const result: unknown = await knex.raw(
    `INSERT INTO ?? AS t (lock_name, lock_key, instance_name, token, last_renewed_ts${fence ? ', fence' : ''})
     VALUES (?, ?, ?, ?, ?${fence ? ', ?' : ''})
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token,
         last_renewed_ts = excluded.last_renewed_ts, fence = ?
     WHERE t.last_renewed_ts < excluded.last_renewed_ts - ? OR t.instance_name = excluded.instance_name
     RETURNING fence`,
    [
      r.table, r.name, r.key, r.instanceName, r.token, nowBinding(knex, dialect, r.nowMs),
      ...(fence ? [fence] : []),
      takeoverFence,
      r.lockTimeoutMs,
    ],
  )
  const row = dialect.rowsOf(result)[0]
  return row === undefined ? null : toFence(row.fence)
}
