import type { Knex } from 'knex'
import { fenceParams, nowBinding, selectFence, toFence, type AcquireRequest, type Dialect, type ServerFacts } from './dialect.js'

function inTransaction<T>(knex: Knex, config: Knex.TransactionConfig | null, run: (db: Knex) => Promise<T>): Promise<T> {
  return config === null ? run(knex) : knex.transaction(run, config)
}

/**
 * The acquire that works on every database: delete the row for the lock if its own lease has run
 * out or it is ours, then insert (in one transaction, except where `Dialect.emulatedTransaction`
 * says otherwise). Resolves the new fence, or `null` when the insert hits the primary key:
 * another worker holds the lock. Every other error is the caller's to see.
 */
export async function acquireEmulated(knex: Knex, dialect: Dialect, facts: ServerFacts, r: AcquireRequest): Promise<bigint | null> {
  try {
    return await inTransaction(knex, dialect.emulatedTransaction, async (db) => {
      const now = nowBinding(db, dialect, r.nowMs)
      await dialect.emulatedPrelude?.(db, r.table, r.name, r.key)
      await db.raw(
        // `ts + lease < now` rather than `ts < now - lease`: PostgreSQL cannot type `$1 - $2`.
        'DELETE FROM ?? WHERE lock_name = ? AND lock_key = ? AND (last_renewed_ts + lease_ms < ? OR instance_name = ?)',
        [r.table, r.name, r.key, now, r.instanceName],
      ).options({ workerLocksKind: 'emulated-delete' })
      const fence = dialect.insertFence
      const result: unknown = await db.raw(
        `INSERT INTO ?? (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms${fence ? ', fence' : ''})
         VALUES (?, ?, ?, ?, ?, ?${fence ? `, ${fence.sql(r.table, (name) => db.raw('??', [name]).toQuery(), { name: '?', key: '?' })}` : ''})${facts.insertReturning ? ' RETURNING fence' : ''}`,
        [r.table, r.name, r.key, r.instanceName, r.token, now, r.leaseMs, ...fenceParams(fence, r.name, r.key)],
      ).options({ workerLocksKind: 'emulated-insert' })
      if (!facts.insertReturning) return selectFence(db, r.table, r)
      const row = dialect.rowsOf(result)[0]
      return row === undefined ? null : toFence(row.fence)
    })
  } catch (error) {
    if (dialect.isUniqueViolation(error)) return null
    throw error
  }
}
