import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { Knex } from 'knex'
import { acquire, findDialect, knexDialectName, supportedKnexClients, type Dialect, type DialectName, type Strategy } from '../dialects/index.js'
import { systemClock, type Clock, type TimerHandle } from './clock.js'
import { LockDatabaseError, LockStoreClosedError, UnsupportedDatabaseError } from './errors.js'
import { Lock, type LockOwner, type LockState } from './lock.js'
import { LockTable } from './lock-table.js'
import { logTo, type Logger, type LogLevel } from './logger.js'
import { resolveOptions, validateLockId, type LockStoreOptions, type ResolvedOptions } from './validate.js'

/** The store's bookkeeping for a lock it made; holds the Lock only weakly so a dropped one can be collected. */
interface HeldLock extends LockState {
  readonly ref: WeakRef<Lock>
  state: 'held' | 'released' | 'lost'
  releasing: Promise<void> | undefined
}

// Names and keys never contain NUL (validation refuses it), so this join is unambiguous.
const lockId = (name: string, key: string): string => `${name}\0${key}`
const describeLock = (name: string, key: string): string => `${JSON.stringify(name)} (key ${JSON.stringify(key)})`

function isKnex(value: unknown): value is Knex {
  return typeof value === 'function' && typeof (value as { client?: unknown }).client === 'object'
}

/**
 * Acquires and holds named locks in one database table, shared by every worker that uses the
 * same table. A lock is identified by its exact `(name, key)` strings. Each store renews the
 * locks it holds until they are released or the store is closed.
 *
 * ```ts
 * const store = new LockStore(knex)
 * const lock = await store.tryAcquireLock('nightly-report', 'tenant-42')
 * if (lock) { try { await work() } finally { await lock.release() } }
 * ```
 */
export class LockStore {
  /** The database family of the knex instance. */
  readonly dialect: DialectName
  /** This store's instance name (see {@link LockStoreOptions.instanceName}). */
  readonly instanceName: string
  /** The lock table this store uses. */
  readonly tableName: string
  /** How long an unrenewed lock stays held, in milliseconds. */
  readonly lockTimeoutMs: number
  /** How often held locks are renewed, in milliseconds. */
  readonly renewalIntervalMs: number

  readonly #knex: Knex
  readonly #sql: Dialect
  readonly #table: LockTable
  readonly #options: ResolvedOptions
  readonly #timers: Clock
  readonly #held = new Map<string, HeldLock>()
  readonly #acquiring = new Set<string>()
  // Released by the caller, but the delete failed: close() tries these rows again.
  readonly #undeleted = new Set<HeldLock>()
  readonly #inflight = new Set<Promise<unknown>>()
  readonly #finalizer = new FinalizationRegistry<HeldLock>((record) => this.#leaked(record))
  readonly #owner: LockOwner = {
    release: (state) => this.#release(state as HeldLock),
    isStillValid: (state) => this.#isStillValid(state as HeldLock),
  }
  #strategy: Strategy | undefined
  #initializing: Promise<Strategy> | undefined
  #timer: TimerHandle | undefined
  #renewing: Promise<void> | undefined
  #closing: Promise<void> | undefined

  /**
   * @param knex a knex instance for PostgreSQL (`pg`), SQLite (`better-sqlite3`) or
   *   MySQL/MariaDB (`mysql2`). The store never destroys it.
   * @throws UnsupportedDatabaseError for any other knex client
   * @throws TypeError or RangeError for a bad option, naming it
   */
  constructor(knex: Knex, options?: LockStoreOptions) {
    if (!isKnex(knex)) {
      throw new TypeError('LockStore needs a knex instance as its first argument, e.g. new LockStore(knex({ client: "pg", connection })).')
    }
    const sql = findDialect(knex)
    if (!sql) {
      throw new UnsupportedDatabaseError(
        `worker-locks does not support the knex client ${JSON.stringify(knexDialectName(knex) ?? 'unknown')}; use one of ${supportedKnexClients.join(', ')}.`,
      )
    }
    this.#options = resolveOptions(options)
    this.#knex = knex
    this.#sql = sql
    this.dialect = sql.name
    this.instanceName = this.#options.instanceName ?? `${hostname()}:${process.pid}:${randomBytes(6).toString('hex')}`
    this.tableName = this.#options.tableName
    this.lockTimeoutMs = this.#options.lockTimeoutMs
    this.renewalIntervalMs = this.#options.renewalIntervalMs
    this.#table = new LockTable(knex, sql, this.tableName, this.lockTimeoutMs)
    const clock = this.#options.clock
    this.#timers = typeof clock === 'object' ? clock : systemClock
  }

  /** The acquire statement in use: `undefined` until the first acquire or `init()` has asked the server. */
  get strategy(): Strategy | undefined {
    return this.#strategy
  }

  /**
   * Asks the server which strategy to use. Optional: the first acquire does it too. Call it at
   * start-up to fail early on an unreachable database or an impossible `strategy: 'native'`.
   * @throws UnsupportedDatabaseError when `strategy: 'native'` was asked for and the server cannot run it
   * @throws LockDatabaseError when the database cannot be asked
   */
  async init(): Promise<void> {
    await this.#resolvedStrategy()
  }

  /**
   * Tries once to take the lock `(name, key)`, without waiting. Resolves a {@link Lock} if this
   * store now holds it, or `null` if someone else does, including another call of this store
   * (held, or being acquired at the same moment). Two different strategies, instances or
   * databases give the same answer.
   * @param name what is locked, 1 to 255 characters
   * @param key which one of it, 0 to 255 characters @default ''
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   * @throws LockStoreClosedError after `close()`
   * @throws LockDatabaseError when the database fails for a reason other than contention
   */
  async tryAcquireLock(name: string, key = ''): Promise<Lock | null> {
    validateLockId(name, key)
    if (this.#closing) throw new LockStoreClosedError()
    const id = lockId(name, key)
    if (this.#acquiring.has(id) || this.#holds(id)) return null
    this.#acquiring.add(id)
    const attempt = this.#acquire(id, name, key)
    this.#inflight.add(attempt)
    try {
      return await attempt
    } finally {
      this.#acquiring.delete(id)
      this.#inflight.delete(attempt)
    }
  }

  /**
   * Stops renewing and releases every lock this store holds, waiting for acquisitions under way
   * (a lock they win is released at once and they reject with `LockStoreClosedError`). Safe to
   * call more than once. Does not destroy the knex instance.
   * @throws LockDatabaseError if some rows could not be deleted; those locks expire after `lockTimeoutMs`
   */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.#stopTimer()
    await Promise.allSettled([...this.#inflight])
    await this.#renewing
    const records = [...this.#held.values(), ...this.#undeleted]
    const results = await Promise.allSettled(records.map((record) => this.#release(record)))
    const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failures.length > 0) {
      throw new LockDatabaseError(
        `Could not release ${failures.length} of ${records.length} locks while closing; they expire after ${this.lockTimeoutMs} ms`,
        failures[0]?.reason,
      )
    }
  }

  #resolvedStrategy(): Promise<Strategy> {
    this.#initializing ??= this.#resolveStrategy().then((strategy) => {
      this.#strategy = strategy
      return strategy
    }, (error: unknown) => {
      this.#initializing = undefined // a later call asks again
      throw error
    })
    return this.#initializing
  }

  async #resolveStrategy(): Promise<Strategy> {
    if (this.#options.strategy === 'emulated') return 'emulated'
    const support = await this.#database('ask the database for its version', () => this.#sql.nativeSupport(this.#knex))
    if (support.supported) return 'native'
    if (this.#options.strategy === 'native') {
      throw new UnsupportedDatabaseError(
        `strategy 'native' cannot run on ${support.server}: ${support.reason}. Use strategy 'auto' or 'emulated'.`,
      )
    }
    return 'emulated'
  }

  async #acquire(id: string, name: string, key: string): Promise<Lock | null> {
    const strategy = await this.#resolvedStrategy()
    const token = randomBytes(16).toString('hex')
    const request = {
      table: this.tableName, name, key, token,
      instanceName: this.instanceName,
      lockTimeoutMs: this.lockTimeoutMs,
      nowMs: this.#nowMs(),
    }
    const acquired = await this.#database(`acquire lock ${describeLock(name, key)}`, () =>
      acquire(this.#knex, this.#sql, strategy, request))
    if (!acquired) return null
    if (this.#closing) {
      await this.#table.release(request).catch((error: unknown) =>
        this.#log('warn', { err: error, lockName: name, lockKey: key }, 'worker-locks: could not release a lock won while closing; it will expire'))
      throw new LockStoreClosedError()
    }
    const record: HeldLock = { id, name, key, token, ref: undefined as unknown as WeakRef<Lock>, state: 'held', releasing: undefined }
    const lock = new Lock(this.#owner, record)
    ;(record as { ref: WeakRef<Lock> }).ref = new WeakRef(lock)
    this.#finalizer.register(lock, record, record)
    this.#held.set(id, record)
    this.#startTimer()
    return lock
  }

  #holds(id: string): boolean {
    const record = this.#held.get(id)
    if (record && record.ref.deref() === undefined) this.#leaked(record)
    return this.#held.has(id)
  }

  #release(record: HeldLock): Promise<void> {
    if (record.releasing) return record.releasing
    record.state = 'released'
    this.#forget(record)
    const releasing = this.#database(`release lock ${describeLock(record.name, record.key)}`, () => this.#table.release(record))
      .then(() => {
        this.#undeleted.delete(record)
      }, (error: unknown) => {
        record.releasing = undefined
        this.#undeleted.add(record)
        throw error
      })
    record.releasing = releasing
    return releasing
  }

  async #isStillValid(record: HeldLock): Promise<boolean> {
    if (record.state !== 'held') return false
    return this.#database(`check lock ${describeLock(record.name, record.key)}`, () => this.#table.isValid(record, this.#nowMs()))
  }

  /** Drops a record from the live map, unless a newer acquisition of the same lock replaced it. */
  #forget(record: HeldLock): void {
    if (this.#held.get(record.id) === record) this.#held.delete(record.id)
    this.#finalizer.unregister(record)
    if (this.#held.size === 0) this.#stopTimer()
  }

  #leaked(record: HeldLock): void {
    if (record.state !== 'held') return
    record.state = 'released'
    this.#forget(record)
    this.#log('error', { lockName: record.name, lockKey: record.key },
      `worker-locks: lock ${describeLock(record.name, record.key)} was garbage-collected without release(); it is no longer renewed and expires after ${this.lockTimeoutMs} ms. Call release() or hold it with \`await using\`.`)
  }

  #startTimer(): void {
    if (this.#timer !== undefined || this.#closing || this.#held.size === 0) return
    this.#timer = this.#timers.setTimeout(() => this.#tick(), this.renewalIntervalMs)
  }

  #stopTimer(): void {
    if (this.#timer === undefined) return
    this.#timers.clearTimeout(this.#timer)
    this.#timer = undefined
  }

  // Returns the renewal's promise so that a ManualClock can wait for it; never rejects.
  async #tick(): Promise<void> {
    this.#timer = undefined
    this.#renewing = this.#renewAll()
    await this.#renewing
    this.#renewing = undefined
    this.#startTimer()
  }

  async #renewAll(): Promise<void> {
    for (const record of [...this.#held.values()]) {
      if (record.ref.deref() === undefined) {
        this.#leaked(record)
        continue
      }
      if (record.state !== 'held') continue
      try {
        const ours = await this.#table.renew(record, this.#nowMs())
        if (!ours && record.state === 'held') {
          record.state = 'lost'
          this.#forget(record)
          this.#log('warn', { lockName: record.name, lockKey: record.key },
            `worker-locks: lock ${describeLock(record.name, record.key)} was lost: its row was deleted or taken over by another worker.`)
        }
      } catch (error) {
        this.#log('warn', { err: error, lockName: record.name, lockKey: record.key },
          `worker-locks: renewing lock ${describeLock(record.name, record.key)} failed; retrying at the next renewal.`)
      }
    }
  }

  #nowMs(): number | null {
    const clock = this.#options.clock
    if (clock === 'database') return null
    return clock === 'local' ? Date.now() : clock.now()
  }

  async #database<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run()
    } catch (error) {
      throw new LockDatabaseError(`worker-locks could not ${what} in table ${JSON.stringify(this.tableName)}`, error)
    }
  }

  #log(level: LogLevel, details: object, message: string): void {
    logTo(this.#options.logger, level, details, message)
  }
}
