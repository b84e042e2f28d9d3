import type { Knex } from 'knex'
import { nowBinding, type AcquireRequest, type Dialect } from './dialect.js'

function inTransaction<T>(knex: Knex, config: Knex.TransactionConfig | null, run: (db: Knex) => Promise<T>): Promise<T> {
  return config === null ? run(knex) : knex.transaction(run, config)
}

/**
 * The acquire that works on every database: delete the row for the lock if it is stale or ours,
 * then insert (in one transaction, except where `Dialect.emulatedTransaction` says otherwise).
 * A unique-key violation on the insert means another worker holds the lock; every other error
 * is the caller's to see.
 */
export async function acquireEmulated(knex: Knex, dialect: Dialect, request: AcquireRequest): Promise<boolean> {
  try {
    return await inTransaction(knex, dialect.emulatedTransaction, async (db) => {
      const now = nowBinding(db, dialect, request.nowMs)
      await db.raw(
        // `ts + timeout < now` rather than `ts < now - timeout`: PostgreSQL cannot type `$1 - $2`.
        'DELETE FROM ?? WHERE lock_name = ? AND lock_key = ? AND (last_renewed_ts + ? < ? OR instance_name = ?)',
        [request.table, request.name, request.key, request.lockTimeoutMs, now, request.instanceName],
      )
      await db.raw(
        'INSERT INTO ?? (lock_name, lock_key, instance_name, token, last_renewed_ts) VALUES (?, ?, ?, ?, ?)',
        [request.table, request.name, request.key, request.instanceName, request.token, now],
      )
      return true
    })
  } catch (error) {
    if (dialect.isUniqueViolation(error)) return false
    throw error
  }
}
