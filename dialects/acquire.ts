// The statements that take and free a lock where databases spell them alike: the native upsert of
// PostgreSQL and SQLite, the emulated path of every database, and the token-guarded delete.
import { clockKind, statement, type Db } from './executor.js'
import { nowBinding, returnedFence, type AcquireRequest, type Dialect, type RowIdentity, type ServerFacts, type Strategy } from './dialect.js'

// A loser of a deadlock or serialization failure retries at once: the winner has committed by
// then, so the retry sees its row and is refused cleanly (or takes a lock freed meanwhile).
const CONFLICT_ATTEMPTS = 3

/**
 * Runs `run`, again (up to `attempts` times in all) while the database says it lost a race (a
 * deadlock or a serialization failure); then `exhausted` decides. Other errors reject at once.
 */
export async function retryingConflicts<T>(dialect: Dialect, attempts: number, run: () => Promise<T>, exhausted: (error: unknown) => T): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await run()
    } catch (error) {
      if (!dialect.isTransientConflict(error)) throw error
      if (n >= attempts) return exhausted(error)
    }
  }
}

/**
 * One acquisition attempt: the new fence if our row was written, else `null`. A lost race is a
 * refusal, never an error (a session at SERIALIZABLE, say); other errors reject.
 */
export function acquire(db: Db, dialect: Dialect, facts: ServerFacts, strategy: Strategy, request: AcquireRequest): Promise<bigint | null> {
  return retryingConflicts(dialect, CONFLICT_ATTEMPTS, () => strategy === 'native'
    ? dialect.acquireNative(db, request, facts)
    : acquireEmulated(db, dialect, facts, request), () => null)
}

/**
 * The native acquire of PostgreSQL and SQLite. The WHERE of DO UPDATE decides a takeover by the
 * lease the existing row carries; RETURNING yields the new fence only when our row was written,
 * which answers "did we get it" in the same round trip.
 */
export async function acquireOnConflict(db: Db, dialect: Dialect, r: AcquireRequest): Promise<bigint | null> {
  const databaseClock = r.nowMs === null
  const sql = statement(db.knex, clockKind('on-conflict', r.nowMs), r.table, (quote) => {
    const fence = dialect.insertFence?.sql(r.table, quote, { name: ':name', key: ':key' })
    return `INSERT INTO ${quote(r.table)} AS t (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms${fence ? ', fence' : ''})
     VALUES (:name, :key, :instance, :token, ${databaseClock ? dialect.nowSql : ':now'}, :lease${fence ? `, ${fence}` : ''})
     ON CONFLICT (lock_name, lock_key) DO UPDATE
     SET instance_name = excluded.instance_name, token = excluded.token,
         last_renewed_ts = excluded.last_renewed_ts, lease_ms = excluded.lease_ms, fence = ${dialect.takeoverFenceSql(r.table, quote) ?? 'excluded.fence'}
     WHERE t.last_renewed_ts + t.lease_ms < excluded.last_renewed_ts OR t.instance_name = excluded.instance_name
     RETURNING fence`
  })
  return returnedFence(await db.run(sql, { name: r.name, key: r.key, instance: r.instanceName, token: r.token, now: r.nowMs, lease: r.leaseMs }))
}

/**
 * The acquire that works everywhere: delete the lock's row if its own lease has run out or it is
 * ours, then insert (in one transaction unless `Dialect.emulatedTransaction` says otherwise).
 * The new fence, or `null` when the insert hits the primary key: another worker holds the lock.
 */
export async function acquireEmulated(db: Db, dialect: Dialect, facts: ServerFacts, r: AcquireRequest): Promise<bigint | null> {
  const config = dialect.emulatedTransaction
  const run = async (on: Db): Promise<bigint | null> => {
    const { knex } = on
    const now = nowBinding(knex, dialect, r.nowMs)
    await dialect.emulatedPrelude?.(on, r.table, r.name, r.key)
    // `ts + lease < now` rather than `ts < now - lease`: PostgreSQL cannot type `$1 - $2`.
    await on.query(knex.raw('DELETE FROM ?? WHERE lock_name = ? AND lock_key = ? AND (last_renewed_ts + lease_ms < ? OR instance_name = ?)',
      [r.table, r.name, r.key, now, r.instanceName]), 'emulated-delete')
    const fence = dialect.insertFence
    const inserted = await on.query(knex.raw(
      `INSERT INTO ?? (lock_name, lock_key, instance_name, token, last_renewed_ts, lease_ms${fence ? ', fence' : ''})
       VALUES (?, ?, ?, ?, ?, ?${fence ? `, ${fence.sql(r.table, (name) => knex.raw('??', [name]).toQuery(), { name: '?', key: '?' })}` : ''})${facts.returning ? ' RETURNING fence' : ''}`,
      [r.table, r.name, r.key, r.instanceName, r.token, now, r.leaseMs, ...(fence?.bindsLock ? [r.name, r.key] : [])],
    ), 'emulated-insert')
    if (facts.returning) return returnedFence(inserted)
    // Inside the transaction, where there is one: another connection could not see the row yet.
    return returnedFence(await on.query(knex(r.table).where({ lock_name: r.name, lock_key: r.key, token: r.token }).first('fence'), 'fence'))
  }
  try {
    return await (config === null ? run(db) : db.transaction(config, run))
  } catch (error) {
    if (dialect.isUniqueViolation(error)) return null
    throw error
  }
}

/** The fence of our committed row, for databases whose write cannot return it; `null` if the row is not ours. */
export async function fenceOf(db: Db, table: string, row: RowIdentity): Promise<bigint | null> {
  const sql = statement(db.knex, 'fence', table, (quote) => `SELECT fence FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token`)
  return returnedFence(await db.run(sql, row))
}

/** The token-guarded release, for databases without release notifications. */
export async function releaseByDelete(db: Db, table: string, row: RowIdentity): Promise<boolean> {
  const sql = statement(db.knex, 'release', table, (quote) => `DELETE FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token`)
  return (await db.run(sql, row)).affectedRows > 0
}
