import type { Knex } from 'knex'
import { fenceOf, toFence, type Dialect, type RowIdentity, type ServerFacts } from './dialect.js'
import { executorFor, statement, variantKinds } from './executor.js'

/** Passing a held row from one acquisition of a store to the next acquisition of the same store. */
export interface HandOverRequest {
  readonly table: string
  /** The row as the releasing lock holds it. */
  readonly row: RowIdentity
  /** The token of the acquisition that takes it over. */
  readonly token: string
  /** As in `AcquireRequest`: the time to write, or `null` for the database clock. */
  readonly nowMs: number | null
}

const handOverKind = variantKinds('hand-over')

/**
 * Gives our row to a new acquisition of the same store in one statement, instead of deleting it
 * and inserting it again: its token, a fresh timestamp and a new fence (drawn as a takeover draws
 * it), only if the row still carries the releasing token. The instance name and lease stay the
 * store's. Resolves the new fence, or `null` when the row is no longer ours (deleted, or taken
 * over by another worker).
 */
export async function handOver(knex: Knex, dialect: Dialect, facts: ServerFacts, r: HandOverRequest): Promise<bigint | null> {
  const databaseClock = r.nowMs === null
  const returning = facts.updateReturning
  const sql = statement(knex, handOverKind(databaseClock, returning), r.table, (quote) => {
    const fence = dialect.takeoverFenceSql(r.table, quote)
    return `UPDATE ${quote(r.table)} AS t SET token = :newToken, last_renewed_ts = ${databaseClock ? dialect.nowSql : ':now'}${fence === undefined ? '' : `, fence = ${fence}`}
     WHERE lock_name = :name AND lock_key = :key AND token = :token${returning ? ' RETURNING fence' : ''}`
  })
  const { row } = r
  const result = await executorFor(knex, dialect.rowsOf).run(sql, { ...row, newToken: r.token, now: r.nowMs })
  if (returning) {
    const written = result.rows[0]
    return written === undefined ? null : toFence(written.fence)
  }
  // Not every driver reports affected rows for a raw UPDATE (sqlite3 does not): ask for the row.
  return fenceOf(knex, dialect, r.table, { name: row.name, key: row.key, token: r.token })
}
