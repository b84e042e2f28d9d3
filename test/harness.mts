// Per-pair test fixture: a knex instance, a lock table of this run's own, and stores that are
// closed after each test.
import { after, afterEach, before } from 'node:test'
import type { Knex } from 'knex'
import { LockStore, ManualClock, createLockTable, dropLockTable, type LockStoreOptions, type Logger } from '../src/index.js'
import { connect, uniqueName, type ConnectionTweaks, type Target } from './targets.mjs'

/** A logger that remembers what it was told. */
export class RecordingLogger implements Logger {
  readonly entries: Array<{ level: string; details: object; message: string }> = []
  debug(details: object, message: string): void { this.entries.push({ level: 'debug', details, message }); this.#notify() }
  info(details: object, message: string): void { this.entries.push({ level: 'info', details, message }); this.#notify() }
  warn(details: object, message: string): void { this.entries.push({ level: 'warn', details, message }); this.#notify() }
  error(details: object, message: string): void { this.entries.push({ level: 'error', details, message }); this.#notify() }
  at(level: string): string[] { return this.entries.filter((e) => e.level === level).map((e) => e.message) }

  /** Resolves once `count` messages containing `text` have been logged. */
  async waitFor(text: string, count = 1): Promise<void> {
    while (this.entries.filter((e) => e.message.includes(text)).length < count) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve))
    }
  }

  #waiters: Array<() => void> = []
  #notify(): void {
    const waiters = this.#waiters
    this.#waiters = []
    for (const resolve of waiters) resolve()
  }
}

export class Harness {
  readonly target: Target
  readonly tableName = uniqueName('wl')
  #knex: Knex | undefined
  #extraKnex: Knex[] = []
  #stores: LockStore[] = []
  #names = 0

  constructor(target: Target) {
    this.target = target
    before(async () => {
      this.#knex = connect(target.database)
      await createLockTable(this.knex, { tableName: this.tableName })
    })
    afterEach(async () => {
      await Promise.allSettled(this.#stores.map((s) => s.close()))
      this.#stores = []
      await Promise.allSettled(this.#extraKnex.map((k) => k.destroy()))
      this.#extraKnex = []
    })
    after(async () => {
      if (this.#knex) {
        await dropLockTable(this.#knex, { tableName: this.tableName })
        await this.#knex.destroy()
      }
    })
  }

  get knex(): Knex {
    if (!this.#knex) throw new Error('the harness is used before its before() hook ran')
    return this.#knex
  }

  /** Another knex instance (its own pool) on the same database, destroyed after the test. */
  connection(tweaks?: ConnectionTweaks): Knex {
    const knex = connect(this.target.database, tweaks)
    this.#extraKnex.push(knex)
    return knex
  }

  /** A lock name no other test uses. */
  lockName(label = 'lock'): string {
    return `${label}-${++this.#names}`
  }

  /** A store on this pair's table and strategy; closed after the test. */
  store(options: LockStoreOptions = {}, knex: Knex = this.knex): LockStore {
    const store = new LockStore(knex, { tableName: this.tableName, strategy: this.target.strategy, ...options })
    this.#stores.push(store)
    return store
  }

  /** A store driven by `clock` with short timings: timeout 10 s, renewal every 2 s. */
  clockedStore(clock: ManualClock, options: LockStoreOptions = {}, knex?: Knex): LockStore {
    return this.store({ clock, lockTimeoutMs: 10_000, renewalIntervalMs: 2_000, ...options }, knex)
  }

  /** The raw row of a lock, or undefined. */
  async row(name: string, key = ''): Promise<{ token: string; instance_name: string; last_renewed_ts: number } | undefined> {
    const row = await this.knex(this.tableName).where({ lock_name: name, lock_key: key })
      .first('token', 'instance_name', 'last_renewed_ts')
    if (!row) return undefined
    return { token: String(row.token), instance_name: String(row.instance_name), last_renewed_ts: Number(row.last_renewed_ts) }
  }

  /** Counts the SQL statements `knex` runs while `fn` runs. */
  async countQueries<T>(knex: Knex, fn: () => Promise<T>): Promise<{ result: T; queries: number }> {
    const { result, sql } = await statementsDuring(knex, fn)
    return { result, queries: sql.length }
  }
}

/** What knex's `query` event says of a statement worker-locks runs: its kind, or `other` (renewal, listing, BEGIN…). */
export function kindOf(query: object): string {
  const q = query as { workerLocksKind?: unknown; options?: { workerLocksKind?: unknown } }
  const kind = q.workerLocksKind ?? q.options?.workerLocksKind
  return typeof kind === 'string' ? kind : 'other'
}

/** Statement kinds that take a lock or release one. */
export const isAcquire = (kind: string): boolean => /^(on-conflict|odku|emulated-)/.test(kind)
export const isRelease = (kind: string): boolean => kind.startsWith('release')
/** Statement kinds of a look for releases (src/release-watch.ts). */
export const isLook = (kind: string): boolean => kind.startsWith('look/')

/**
 * The SQL text and the kind (see {@link kindOf}) of every statement `knex` runs while `fn` runs
 * (those whose kind `keep` accepts).
 */
export async function statementsDuring<T>(knex: Knex, fn: () => Promise<T>, keep: (kind: string) => boolean = () => true): Promise<{ result: T; sql: string[]; kinds: string[] }> {
  const sql: string[] = []
  const kinds: string[] = []
  const record = (query: { sql: string }): void => {
    const kind = kindOf(query)
    if (!keep(kind)) return
    sql.push(query.sql)
    kinds.push(kind)
  }
  knex.on('query', record)
  try {
    return { result: await fn(), sql, kinds }
  } finally {
    knex.off('query', record)
  }
}
