import type { Knex } from 'knex'
import type { LockMode } from './lock.js'
import {
  handOver, nowBinding, releaseByDelete, retryingConflicts, type Dialect, type RowIdentity, type ServerFacts,
} from '../dialects/index.js'

// Rows per statement when renewing or releasing many locks. They travel as one JSON parameter,
// so bind-parameter limits do not apply; this only bounds the size of one statement.
const ROWS_PER_STATEMENT = 10_000

/** A row of the lock table as listed, before the store judges its staleness. */
export interface ListedRow {
  readonly name: string
  readonly key: string
  /** The instance name of the store that holds (or last held) it. */
  readonly instanceName: string
  readonly fence: bigint
  /** When its holder last wrote it. */
  readonly lastRenewedAt: Date
  /** Milliseconds since then, by the listing store's clock. */
  readonly ageMs: number
  /** The lease its holder wrote: once `ageMs` exceeds it, any worker may take the lock over. */
  readonly leaseMs: number
  /** `exclusive` for the lock table's rows; `read` or `write` for read/write holders. */
  readonly mode: LockMode
}

/** What the database says of a lock a store holds: `valid`, `stale` (still our token, lease run out), or `gone` (deleted or taken over). */
export type RowStatus = 'valid' | 'stale' | 'gone'

// MySQL hands binary string columns back as Buffers of UTF-8.
const text = (value: unknown): string => (Buffer.isBuffer(value) ? value.toString('utf8') : String(value))

function chunks<T>(items: readonly T[]): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += ROWS_PER_STATEMENT) out.push(items.slice(i, i + ROWS_PER_STATEMENT))
  return out
}

/**
 * The statements that read the same on every database (renew, release, validity check),
 * written once with knex's builder. Acquisition is the dialect's.
 */
export class LockTable {
  readonly #knex: Knex
  readonly #dialect: Dialect
  readonly #table: string
  readonly #renewalTimeoutMs: number
  // For a holders' table: the lock table, whose channel announces releases where the database can.
  readonly #lockTable: string | undefined
  readonly #durable: boolean

  /**
   * @param renewalTimeoutMs how long a renewal statement may run: one that hangs (a dead
   *   connection, a row locked by someone else) must fail, or it would hold up every later renewal
   * @param options.holdersOf set when the table holds the read/write holders (with `write_mode`)
   *   of lock table `holdersOf`, not a lock table's rows
   * @param options.durableReleases whether releases wait for the disk (see `Dialect.release`)
   */
  constructor(knex: Knex, dialect: Dialect, table: string, renewalTimeoutMs: number, options: { holdersOf?: string; durableReleases?: boolean } = {}) {
    this.#knex = knex
    this.#dialect = dialect
    this.#table = table
    this.#renewalTimeoutMs = renewalTimeoutMs
    this.#lockTable = options.holdersOf
    this.#durable = options.durableReleases ?? true
  }

  /**
   * Resolves if the table has every column the shipped migrations add; rejects with the driver's
   * error otherwise (`Dialect.isMissingSchema` tells a missing table or column from a failure).
   */
  async checkColumns(): Promise<void> {
    await this.#knex(this.#table).select('lock_name', 'fence', 'lease_ms').whereRaw('1 = 0')
  }

  /** Whether this is a read/write holders' table rather than a lock table. */
  get #holders(): boolean {
    return this.#lockTable !== undefined
  }

  #limited(query: Knex.QueryBuilder): Knex.QueryBuilder {
    return query.timeout(this.#renewalTimeoutMs, { cancel: this.#dialect.cancelsQueries })
  }

  #now(nowMs: number | null): Knex.Raw | number {
    return nowBinding(this.#knex, this.#dialect, nowMs)
  }

  #row(row: RowIdentity): Knex.QueryBuilder {
    return this.#knex(this.#table).where({ lock_name: row.name, lock_key: row.key, token: row.token })
  }

  #rows(rows: readonly RowIdentity[]): Knex.QueryBuilder {
    return this.#dialect.restrictToRows(this.#knex(this.#table), this.#table, rows)
  }

  /**
   * Refreshes the timestamp of every row that still carries its token, in one statement per
   * 10,000 rows (plus one when some are gone). Resolves the tokens that are still ours.
   */
  async renewMany(rows: readonly RowIdentity[], nowMs: number | null): Promise<Set<string>> {
    const ours = new Set<string>()
    for (const chunk of chunks(rows)) {
      const updated = Number(await this.#limited(this.#rows(chunk).update({ last_renewed_ts: this.#now(nowMs) })))
      if (updated === chunk.length) {
        for (const row of chunk) ours.add(row.token)
        continue
      }
      // Some rows are gone or taken over; ask which remain. (MySQL without CLIENT_FOUND_ROWS
      // also lands here when a renewal falls in the same millisecond as the last write, since it
      // counts changed rows only.)
      const present = await this.#limited(this.#rows(chunk).select(`${this.#table}.token`))
      for (const found of present as Array<{ token: unknown }>) ours.add(String(found.token))
    }
    return ours
  }

  /**
   * Deletes the row if it still carries this token, and where the database can, tells waiting
   * processes in the same statement: with `line` (the table has a waiting line), only the one
   * first in line (see `Dialect.release`). Resolves whether the row was ours.
   */
  release(row: RowIdentity, line = false): Promise<boolean> {
    const notifications = this.#dialect.notifications
    if (this.#lockTable !== undefined) {
      const lockTable = this.#lockTable
      return this.#retryingConflicts(() => notifications
        ? notifications.releaseHolderAndNotify(this.#knex, lockTable, this.#table, row, this.#durable)
        : releaseByDelete(this.#knex, this.#dialect, this.#table, row))
    }
    return this.#retryingConflicts(() => this.#dialect.release(this.#knex, this.#table, row, line, this.#durable))
  }

  /**
   * Gives the row to `token`, a new acquisition of the same store, if it still carries the
   * releasing token: a fresh timestamp and a new fence in one statement. Resolves the new fence,
   * or `null` when the row is no longer ours.
   */
  handOver(row: RowIdentity, token: string, facts: ServerFacts, nowMs: number | null): Promise<bigint | null> {
    return this.#retryingConflicts(() => handOver(this.#knex, this.#dialect, facts, { table: this.#table, row, token, nowMs }))
  }

  /**
   * Leaves the row taken by no one for `keepForMs` from `now`, if it still carries this token: a
   * new token, an empty instance name (no store has one, so none may take the row as its own),
   * and a lease of `keepForMs`. Resolves whether the row was ours.
   */
  async keep(row: RowIdentity, token: string, keepForMs: number, nowMs: number | null): Promise<boolean> {
    const kept = { token, instance_name: '', last_renewed_ts: this.#now(nowMs), lease_ms: keepForMs }
    return Number(await this.#retryingConflicts(() => this.#row(row).update(kept))) > 0
  }

  // InnoDB may pick a release (or a hand-over) as the victim of a deadlock with acquirers of the same row (1213).
  // Both are guarded by our token, so trying again is safe, and they must not fail for that.
  #retryingConflicts<T>(run: () => Promise<T>): Promise<T> {
    return retryingConflicts(this.#dialect, 5, run, (error) => { throw error })
  }

  /** Deletes every row that still carries its token (telling waiting processes, where the database can), in one statement per 10,000 rows. */
  async releaseMany(rows: readonly RowIdentity[]): Promise<void> {
    const notifications = this.#holders ? undefined : this.#dialect.notifications
    for (const chunk of chunks(rows)) {
      await this.#retryingConflicts(async () => {
        if (notifications) await notifications.releaseManyAndNotify(this.#knex, this.#table, chunk, this.#durable)
        else await this.#rows(chunk).delete()
      })
    }
  }

  /** Deletes the row (read/write: every holder's row) of `(name, key)` whatever its token, telling waiting processes where the database can. */
  async forceRelease(name: string, key: string): Promise<boolean> {
    const removed = Number(await this.#retryingConflicts(() => this.#knex(this.#table).where({ lock_name: name, lock_key: key }).delete())) > 0
    if (removed && !this.#holders) await this.#dialect.notifications?.notifyReleased(this.#knex, this.#table, name, key)
    return removed
  }

  /** The rows matching `filter`, sorted by name and key, with their age by `now`. */
  async list(filter: { name?: string; key?: string; instanceName?: string }, nowMs: number | null): Promise<ListedRow[]> {
    const where: Record<string, string> = {}
    if (filter.name !== undefined) where.lock_name = filter.name
    if (filter.key !== undefined) where.lock_key = filter.key
    if (filter.instanceName !== undefined) where.instance_name = filter.instanceName
    const rows = (await this.#knex(this.#table).where(where)
      .select('lock_name', 'lock_key', 'instance_name', 'last_renewed_ts', 'lease_ms', 'fence', this.#knex.raw('? AS now_ms', [this.#now(nowMs)]),
        ...(this.#holders ? ['write_mode'] : []))
      .orderBy([{ column: 'lock_name' }, { column: 'lock_key' }])) as Array<Record<string, unknown>>
    return rows.map((row) => {
      const renewed = Number(row.last_renewed_ts)
      return {
        name: text(row.lock_name),
        key: text(row.lock_key),
        instanceName: text(row.instance_name),
        fence: BigInt(String(row.fence)),
        lastRenewedAt: new Date(renewed),
        ageMs: Number(row.now_ms) - renewed,
        leaseMs: Number(row.lease_ms),
        mode: !this.#holders ? 'exclusive' : Number(row.write_mode) === 1 ? 'write' : 'read',
      }
    })
  }

  /** Whether the row still carries this token, and if so whether its lease has run out by `now`. */
  async status(row: RowIdentity, nowMs: number | null): Promise<RowStatus> {
    const found = await this.#row(row)
      .first(this.#knex.raw('CASE WHEN last_renewed_ts + lease_ms >= ? THEN 1 ELSE 0 END AS live', [this.#now(nowMs)])) as { live: unknown } | undefined
    if (found === undefined) return 'gone'
    return Number(found.live) === 1 ? 'valid' : 'stale'
  }
}
