import type { Knex } from 'knex'
import { nowBinding, type AcquireRequest, type Dialect } from './dialect.js'

// A loser of a deadlock or serialization failure retries at once: the winner has committed by
// then, so the retry sees its row and is refused cleanly. Three rounds settle every case seen.
const CONFLICT_ATTEMPTS = 3

function inTransaction<T>(knex: Knex, config: Knex.TransactionConfig | null, run: (db: Knex) => Promise<T>): Promise<T> {
  return config === null ? run(knex) : knex.transaction(run, config)
}

/**
 * The acquire that works on every database: in one transaction, delete the row for the lock if
 * it is stale or ours, then insert (see `Dialect.emulatedTransaction` for the one database that runs them without a
 * transaction). A unique-key violation on the insert means another worker
 * holds the lock; every other error is the caller's to see.
 */
export async function acquireEmulated(knex: Knex, dialect: Dialect, request: AcquireRequest): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await inTransaction(knex, dialect.emulatedTransaction, async (trx) => {
        const now = nowBinding(trx, dialect, request.nowMs)
        await trx.raw(
          // `ts + timeout < now` rather than `ts < now - timeout`: PostgreSQL cannot type `$1 - $2`.
          'DELETE FROM ?? WHERE lock_name = ? AND lock_key = ? AND (last_renewed_ts + ? < ? OR instance_name = ?)',
          [request.table, request.name, request.key, request.lockTimeoutMs, now, request.instanceName],
        )
        await trx.raw(
          'INSERT INTO ?? (lock_name, lock_key, instance_name, token, last_renewed_ts) VALUES (?, ?, ?, ?, ?)',
          [request.table, request.name, request.key, request.instanceName, request.token, now],
        )
        return true
      })
    } catch (error) {
      if (dialect.isUniqueViolation(error)) return false
      if (dialect.isTransientConflict(error) && attempt < CONFLICT_ATTEMPTS) continue
      if (dialect.isTransientConflict(error)) return false
      throw error
    }
  }
}
