import type { Knex } from 'knex'
import type { Dialect } from '../dialects/index.js'

/** The identity of one held row: what token-guarded statements match on. */
export interface RowIdentity {
  readonly name: string
  readonly key: string
  readonly token: string
}

/**
 * The statements that read the same on every database (renew, release, validity check),
 * written once with knex's builder. Acquisition is the dialect's.
 */
export class LockTable {
  readonly #knex: Knex
  readonly #dialect: Dialect
  readonly #table: string
  readonly #lockTimeoutMs: number

  constructor(knex: Knex, dialect: Dialect, table: string, lockTimeoutMs: number) {
    this.#knex = knex
    this.#dialect = dialect
    this.#table = table
    this.#lockTimeoutMs = lockTimeoutMs
  }

  #now(nowMs: number | null): Knex.Raw {
    return nowMs === null ? this.#knex.raw(this.#dialect.nowSql) : this.#knex.raw('?', [nowMs])
  }

  #row(row: RowIdentity): Knex.QueryBuilder {
    return this.#knex(this.#table).where({ lock_name: row.name, lock_key: row.key, token: row.token })
  }

  /** Refreshes the row's timestamp. Resolves `false` when the row is no longer ours. */
  async renew(row: RowIdentity, nowMs: number | null): Promise<boolean> {
    const updated = await this.#row(row).update({ last_renewed_ts: this.#now(nowMs) })
    if (Number(updated) > 0) return true
    // MySQL without CLIENT_FOUND_ROWS counts changed rows only, so a renewal in the same
    // millisecond as the last write reports 0 although the row is ours. Ask before declaring loss.
    return (await this.#row(row).first(this.#knex.raw('1 AS present'))) !== undefined
  }

  /** Deletes the row if it still carries this token. Resolves whether a row was deleted. */
  async release(row: RowIdentity): Promise<boolean> {
    return Number(await this.#row(row).delete()) > 0
  }

  /** Whether the row exists with this token and is not stale. */
  async isValid(row: RowIdentity, nowMs: number | null): Promise<boolean> {
    const found = await this.#row(row)
      .whereRaw('last_renewed_ts + ? >= ?', [this.#lockTimeoutMs, this.#now(nowMs)])
      .first(this.#knex.raw('1 AS present'))
    return found !== undefined
  }
}
