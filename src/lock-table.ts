// The lock table of one store, one method per statement: each runs the dialect's SQL (or, where
// databases spell it alike, knex's builder) and turns a failure into a LockError that says what
// could not be done. The server is asked once what it can run (the plan).
import { setImmediate as turn } from 'node:timers/promises'
import type { Knex } from 'knex'
import {
  acquire, acquireReadWrite, claimIntent, clockKind, database, dropIntent, nowBinding, readWriteTables, releaseByDelete, retryingConflicts,
  statement, type Bound, type Db, type Dialect, type ReadWritePart, type RowIdentity, type ServerFacts, type Statement, type Strategy,
} from '../dialects/index.js'
import { LockDatabaseError, LockError, LockTableError, UnsupportedDatabaseError } from './errors.js'
import { describeLock } from './held-locks.js'
import { readOnlyError, readOnlyFailure } from './read-only.js'
import type { HeldLock, LockMode } from './lock.js'
import type { HolderKind } from './release-watch.js'
import type { LockFilter, StrategyOption } from './validate.js'

// Rows per statement when renewing or releasing many locks. They travel as one JSON parameter,
// so bind-parameter limits do not apply; this only bounds the size of one statement.
const ROWS_PER_STATEMENT = 10_000

/** What the server can do and which acquire statement the store uses: asked once per store. */
export interface Plan {
  readonly strategy: Strategy
  readonly facts: ServerFacts
}

/** A row of the lock table as listed, before the store judges its staleness. */
export interface ListedRow {
  readonly name: string
  readonly key: string
  /** The instance name of the store that holds (or last held) it; `''` for a lock kept after its release. */
  readonly instanceName: string
  readonly fence: bigint
  /** When its holder last wrote it. */
  readonly lastRenewedAt: Date
  /** Milliseconds since then, by the listing store's clock. */
  readonly ageMs: number
  /** The lease its holder wrote: once `ageMs` exceeds it, any worker may take the lock over. */
  readonly leaseMs: number
  /** `exclusive` for a plain lock; `read` or `write` for a read/write holder. */
  readonly mode: LockMode
}

/** What the database says of a lock a store holds: `valid`, `stale` (still our token, lease run out), or `gone`. */
export type RowStatus = 'valid' | 'stale' | 'gone'

export interface LockTableOptions {
  readonly tableName: string
  readonly strategy: StrategyOption
  readonly durableReleases: boolean
  readonly preparedStatements: boolean
  /** How long any statement may take at most, a pooled connection waited for included. */
  readonly statementTimeoutMs: number
  /** How long a renewal statement may run: one that hangs must fail, or it would hold up every later renewal. */
  readonly renewalTimeoutMs: number
}

// MySQL hands binary string columns back as Buffers of UTF-8.
const text = (value: unknown): string => (Buffer.isBuffer(value) ? value.toString('utf8') : String(value))

// Locks per statement when looking for releases: bound parameters, two per lock (four for read/write locks).
const LOOKS_PER_STATEMENT = 100
// What a look's `write_mode` column says: the holders' own values, and 2 for a writer's intent.
const HOLDER_KINDS: readonly HolderKind[] = ['read', 'write', 'intent']

/** A live holder of a waited lock, as a look for releases found it. */
export interface LiveHolder {
  readonly readWrite: boolean
  readonly name: string
  readonly key: string
  readonly token: string
  /** A reader, a writer (a plain lock's holder too), or the intent of a writer waiting for a read/write lock, which keeps new readers out. */
  readonly kind: HolderKind
}

function chunks<T>(items: readonly T[], size = ROWS_PER_STATEMENT): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

export class LockTable {
  readonly name: string
  readonly #knex: Knex
  readonly #dialect: Dialect
  readonly #db: Db
  readonly #o: LockTableOptions
  readonly #holders: string
  readonly #keys: string
  #plan: Plan | undefined
  #planning: Promise<Plan> | undefined

  constructor(knex: Knex, dialect: Dialect, options: LockTableOptions) {
    this.name = options.tableName
    this.#knex = knex
    this.#dialect = dialect
    this.#o = options
    this.#db = database(knex, dialect.rowsOf, options)
    const readWrite = readWriteTables(this.name)
    this.#holders = readWrite.holders
    this.#keys = readWrite.keys
  }

  /** The acquire statement in use, once the server has been asked. */
  get strategy(): Strategy | undefined {
    return this.#plan?.strategy
  }

  /**
   * Asks the server, once (again after a failure), what it can run and whether the table has
   * every migrated column: a missing table is said here, once, before any lock work.
   */
  plan(bound?: Bound): Promise<Plan> {
    if (this.#plan) return Promise.resolve(this.#plan)
    this.#planning ??= this.#call(() => 'look at the database and its lock table', async () => {
      const facts = await this.#dialect.detect(this.#within(bound))
      if (facts.unsupported) throw new UnsupportedDatabaseError(`worker-locks cannot run on ${facts.server}: ${facts.unsupported}.`)
      if (facts.readOnly) throw readOnlyError(facts)
      const option = this.#o.strategy
      if (option === 'native' && !facts.native) {
        throw new UnsupportedDatabaseError(`strategy 'native' cannot run on ${facts.server}: ${facts.reason}. Use strategy 'auto' or 'emulated'.`)
      }
      await this.#within(bound).query(this.#knex(this.name).select('lock_name', 'fence', 'lease_ms').whereRaw('1 = 0'), 'columns')
      const missing = await this.#dialect.missingObjects?.(this.#within(bound), this.name)
      if (missing) throw new LockTableError(this.name, new Error(missing))
      return (this.#plan = { strategy: option !== 'emulated' && facts.native ? 'native' : 'emulated', facts })
    }).finally(() => { this.#planning = undefined })
    return this.#planning
  }

  /**
   * One attempt at `(name, key)` with `token`: the new fence if the row is now ours, else `null`.
   * `bound` stops it sooner than `statementTimeoutMs` (a wait's deadline or signal).
   */
  acquire(lock: { readonly name: string; readonly key: string }, token: string, instanceName: string, leaseMs: number, nowMs: number | null, bound?: Bound): Promise<bigint | null> {
    return this.#call(() => `acquire lock ${describeLock(lock.name, lock.key)}`, async () => {
      const { strategy, facts } = this.#plan ?? await this.plan(bound)
      return acquire(this.#within(bound), this.#dialect, facts, strategy, { table: this.name, name: lock.name, key: lock.key, token, instanceName, leaseMs, nowMs })
    })
  }

  /** One attempt at every part (sorted, distinct) at once: their fences, or `null` if any is held in a conflicting mode. */
  acquireReadWrite(parts: readonly ReadWritePart[], instanceName: string, leaseMs: number, nowMs: number | null, intent: string | undefined, what: string, bound?: Bound): Promise<bigint[] | null> {
    return this.#call(() => `acquire ${what}`, async () => {
      const { strategy, facts } = this.#plan ?? await this.plan(bound)
      // The native strategy takes it in one statement where the database can, as it does plain locks.
      const inOne = strategy === 'native' && facts.readWriteInOne
      return acquireReadWrite(this.#within(bound), this.#dialect, { table: this.name, parts, instanceName, nowMs, leaseMs, intent }, inOne)
    })
  }

  /** Marks that the writer `intent` waits for `(name, key)`, for `forMs`, unless another live intent is there. */
  claimIntent(part: { readonly name: string; readonly key: string }, intent: string, forMs: number, nowMs: number | null, bound?: Bound): Promise<boolean> {
    return this.#call(() => `mark that a writer waits for ${describeLock(part.name, part.key)}`,
      () => claimIntent(this.#within(bound), this.#dialect, this.name, part.name, part.key, intent, forMs, nowMs))
  }

  /** Withdraws the writer `intent` from `(name, key)`, if it is still there. */
  dropIntent(part: { readonly name: string; readonly key: string }, intent: string): Promise<void> {
    return this.#call(() => `withdraw a waiting writer from ${describeLock(part.name, part.key)}`, () => dropIntent(this.#db, this.name, part.name, part.key, intent))
  }

  /** Deletes the row of `record` if it still carries its token, telling other processes where the database can; whether it was ours. */
  release(record: HeldLock): Promise<boolean> {
    const notifications = this.#dialect.notifications
    const durable = this.#o.durableReleases
    return this.#call(() => `release lock ${describeLock(record.name, record.key)}`, () => this.#retrying(() => {
      if (record.mode === 'exclusive') return this.#dialect.release(this.#db, this.name, record, durable)
      return notifications ? notifications.releaseHolderAndNotify(this.#db, this.name, this.#holders, record, durable) : releaseByDelete(this.#db, this.#holders, record)
    }))
  }

  /** Deletes every row that still carries its token, in one statement per kind and 10,000 rows (`close()`). */
  releaseMany(records: readonly HeldLock[]): Promise<void> {
    const notifications = this.#dialect.notifications
    return this.#call(() => `release ${records.length} lock(s) while closing`, async () => {
      for (const [table, rows] of this.#byTable(records)) {
        for (const chunk of chunks(rows)) {
          await this.#retrying(async () => {
            if (notifications && table === this.name) await notifications.releaseManyAndNotify(this.#db, table, chunk, this.#o.durableReleases)
            else await this.#db.query(this.#rows(table, chunk).delete(), 'release-many')
          })
        }
      }
    })
  }

  /**
   * Leaves the row taken by no one for `keepForMs` from now, if it still carries its token: a new
   * token, an empty instance name (no store has one, so none may take the row as its own), and a
   * lease of `keepForMs`. Whether the row was ours.
   */
  keep(record: HeldLock, token: string, keepForMs: number, nowMs: number | null): Promise<boolean> {
    const kept = { token, instance_name: '', last_renewed_ts: nowBinding(this.#knex, this.#dialect, nowMs), lease_ms: keepForMs }
    return this.#call(() => `keep lock ${describeLock(record.name, record.key)} for ${keepForMs} ms after its release`,
      async () => (await this.#retrying(() => this.#db.query(this.#row(record).update(kept), 'keep'))).affectedRows > 0)
  }

  /** Refreshes the timestamp of every row that still carries its token; resolves the tokens still ours. */
  renew(records: readonly HeldLock[], nowMs: number | null): Promise<Set<string>> {
    const db = this.#db.within({ withinMs: this.#o.renewalTimeoutMs })
    return this.#call(() => `renew ${records.length} lock(s)`, async () => {
      const ours = new Set<string>()
      for (const [table, rows] of this.#byTable(records)) {
        for (const chunk of chunks(rows)) {
          const { affectedRows } = await this.#retrying(() =>
            db.query(this.#rows(table, chunk).update({ last_renewed_ts: nowBinding(this.#knex, this.#dialect, nowMs) }), 'renew'))
          if (affectedRows === chunk.length) {
            for (const row of chunk) ours.add(row.token)
            continue
          }
          // Some rows are gone or taken over: ask which remain. (MySQL without CLIENT_FOUND_ROWS
          // lands here too when a renewal falls in the millisecond of the last write.)
          for (const found of (await db.query(this.#rows(table, chunk).select(`${table}.token`), 'renew-check')).rows) ours.add(text(found.token))
        }
      }
      return ours
    })
  }

  /** Whether `record`'s row still carries its token, and if so whether its lease has run out by `now`. */
  status(record: HeldLock, nowMs: number | null, bound?: Bound): Promise<RowStatus> {
    return this.#call(() => `check lock ${describeLock(record.name, record.key)}`, async () => {
      const [found] = (await this.#within(bound).query(this.#row(record)
        .first(this.#knex.raw('CASE WHEN last_renewed_ts + lease_ms >= ? THEN 1 ELSE 0 END AS live', [nowBinding(this.#knex, this.#dialect, nowMs)])), 'status')).rows
      return found === undefined ? 'gone' : Number(found.live) === 1 ? 'valid' : 'stale'
    })
  }

  /** The plain locks and read/write holders matching `filter`, with their age by `now`. */
  list(filter: LockFilter, nowMs: number | null): Promise<ListedRow[]> {
    return this.#call(() => 'list locks', async () => {
      const where: Record<string, string> = {}
      if (filter.name !== undefined) where.lock_name = filter.name
      if (filter.key !== undefined) where.lock_key = filter.key
      if (filter.instanceName !== undefined) where.instance_name = filter.instanceName
      const listed: ListedRow[] = []
      for (const table of [this.name, this.#holders]) {
        const { rows } = await this.#db.query(this.#knex(table).where(where).select('lock_name', 'lock_key', 'instance_name', 'last_renewed_ts', 'lease_ms', 'fence',
          this.#knex.raw('? AS now_ms', [nowBinding(this.#knex, this.#dialect, nowMs)]), ...(table === this.name ? [] : ['write_mode'])), 'list')
        for (const row of rows) {
          const renewed = Number(row.last_renewed_ts)
          listed.push({
            name: text(row.lock_name), key: text(row.lock_key), instanceName: text(row.instance_name), fence: BigInt(String(row.fence)),
            lastRenewedAt: new Date(renewed), ageMs: Number(row.now_ms) - renewed, leaseMs: Number(row.lease_ms),
            mode: table === this.name ? 'exclusive' : Number(row.write_mode) === 1 ? 'write' : 'read',
          })
        }
      }
      return listed
    })
  }

  /**
   * The live holders (lease not run out by `now`) of each listed lock, plain or read/write, and
   * the live intents of writers waiting for the read/write ones (with the intent's token): one
   * statement per kind and LOOKS_PER_STATEMENT locks.
   */
  liveHolders(locks: ReadonlyArray<{ readonly readWrite: boolean; readonly name: string; readonly key: string }>, nowMs: number | null, bound: Bound): Promise<LiveHolder[]> {
    return this.#call(() => `look for released locks`, async () => {
      const live: LiveHolder[] = []
      const db = this.#within(bound)
      for (const readWrite of [false, true]) {
        const ids = locks.filter((l) => l.readWrite === readWrite).map((l) => [l.name, l.key])
        for (const chunk of chunks(ids, LOOKS_PER_STATEMENT)) {
          const values: Record<string, unknown> = { now: nowMs }
          for (const [i, [name, key]] of chunk.entries()) Object.assign(values, { [`n${i}`]: name, [`k${i}`]: key })
          const { rows } = await db.run(this.#look(readWrite, chunk.length, nowMs), values)
          for (const row of rows) live.push({ readWrite, name: text(row.lock_name), key: text(row.lock_key), token: text(row.token), kind: HOLDER_KINDS[Number(row.write_mode)] ?? 'write' })
        }
      }
      return live
    })
  }

  /** The look for `count` locks of one kind, built once per table, kind, count and clock. */
  #look(readWrite: boolean, count: number, nowMs: number | null): Statement {
    const table = readWrite ? this.#holders : this.name
    return statement(this.#knex, clockKind(`look/${readWrite ? 'rw' : 'plain'}/${count}`, nowMs), table, (quote) => {
      // OR of key equalities, not a row-value IN: MariaDB scans the whole index for that.
      const among = Array.from({ length: count }, (_, i) => `(lock_name = :n${i} AND lock_key = :k${i})`).join(' OR ')
      const now = nowMs === null ? this.#dialect.nowSql : ':now'
      const holders = `SELECT lock_name, lock_key, token, ${readWrite ? 'write_mode' : '1 AS write_mode'} FROM ${quote(table)}
        WHERE (${among}) AND last_renewed_ts + lease_ms >= ${now}`
      // A waiting writer's intent keeps new readers out as a writer does: its end may let them in.
      return !readWrite ? holders : `${holders} UNION ALL SELECT lock_name, lock_key, intent_token AS token, 2 AS write_mode FROM ${quote(this.#keys)}
        WHERE (${among}) AND intent_token IS NOT NULL AND intent_until >= ${now}`
    })
  }

  /** Deletes the plain lock and every read/write holder of `(name, key)`, whoever holds them, telling other processes where the database can. */
  forceRelease(name: string, key: string): Promise<{ plain: boolean; readWrite: boolean }> {
    return this.#call(() => `force-release lock ${describeLock(name, key)}`, async () => {
      const removed = async (table: string): Promise<boolean> =>
        (await this.#retrying(() => this.#db.query(this.#knex(table).where({ lock_name: name, lock_key: key }).delete(), 'force-release'))).affectedRows > 0
      const plain = await removed(this.name)
      const readWrite = await removed(this.#holders)
      if (plain) await this.#dialect.notifications?.notifyReleased(this.#db, this.name, name, key)
      return { plain, readWrite }
    })
  }

  /**
   * Runs one call on the table, after letting the event loop turn where the driver runs
   * statements on this thread; a failure becomes a LockTableError when the table (or a migrated
   * column) is missing, else a LockDatabaseError saying what could not be done.
   */
  async #call<T>(what: () => string, run: () => Promise<T>): Promise<T> {
    if (this.#db.onCallingThread) await turn()
    try {
      return await run()
    } catch (error) {
      if (error instanceof LockError) throw error
      if (this.#dialect.isMissingSchema(error)) throw new LockTableError(this.name, error)
      throw readOnlyFailure(this.#dialect, error, this.#plan?.facts.server)
        ?? new LockDatabaseError(`worker-locks could not ${what()} in table ${JSON.stringify(this.name)}`, error)
    }
  }

  // InnoDB may pick a release as the victim of a deadlock with acquirers of the same row (1213),
  // and Galera fails a renewal's certification against grants of other rows on other nodes (also
  // 1213: a quarter of renewals under contention, before they joined their rows as a derived
  // table). Every such statement is guarded by our token, so trying again is safe.
  #retrying<T>(run: () => Promise<T>): Promise<T> {
    return retryingConflicts(this.#dialect, 5, run, (error) => { throw error })
  }

  #within(bound: Bound | undefined): Db {
    return bound ? this.#db.within(bound) : this.#db
  }

  #row(record: HeldLock): Knex.QueryBuilder {
    return this.#knex(record.mode === 'exclusive' ? this.name : this.#holders).where({ lock_name: record.name, lock_key: record.key, token: record.token })
  }

  #rows(table: string, rows: readonly RowIdentity[]): Knex.QueryBuilder {
    return this.#dialect.restrictToRows(this.#knex(table), table, rows)
  }

  /** `records` by the table their rows are in. */
  #byTable(records: readonly HeldLock[]): Array<[string, HeldLock[]]> {
    const tables: Array<[string, HeldLock[]]> = [[this.name, records.filter((r) => r.mode === 'exclusive')], [this.#holders, records.filter((r) => r.mode !== 'exclusive')]]
    return tables.filter(([, rows]) => rows.length > 0)
  }
}
