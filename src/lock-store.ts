import { randomBytes, randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import { performance } from 'node:perf_hooks'
import type { Knex } from 'knex'
import {
  acquire, findDialect, knexDialectName, supportedKnexClients,
  type Dialect, type DialectName, type RowIdentity, type ServerFacts, type Strategy,
} from '../dialects/index.js'
import { systemClock } from './clock.js'
import { LockDatabaseError, LockStoreClosedError, LockTableError, UnsupportedDatabaseError } from './errors.js'
import { announceRelease, waitForLocalRelease, type WaitingStore } from './release-bus.js'
import { LinePlaces } from './line-places.js'
import { ReleaseListener } from './release-listener.js'
import { WaitRoom } from './wait-room.js'
import { LockEvents, type LockEventListener, type LockEventName } from './events.js'
import { describeLock, HeldLocks, type HeldLock } from './held-locks.js'
import { Lock, type LockOwner } from './lock.js'
import { LockTable, type ListedRow, type RowStatus } from './lock-table.js'
import { logTo, type LogLevel } from './logger.js'
import {
  resolveOptions, resolveWaitOptions, validateLockFilter, validateLockId,
  type LockFilter, type LockStoreOptions, type ResolvedOptions, type WaitOptions,
} from './validate.js'

// How long the connection listening for other processes' releases stays open after the last
// waiter left. Opening one costs PostgreSQL a new backend process; a service that waits on locks
// now and then keeps one connection instead of opening one per wait.
const LISTENER_LINGER_MS = 10_000

// A release hands a lock straight to a waiter of the same store at most this many times in a
// row; the next release frees it, so that waiters in other processes get their chance too.
const MAX_HAND_OVERS_IN_A_ROW = 8

// Names and keys never contain NUL (validation refuses it), so this join is unambiguous.
const lockId = (name: string, key: string): string => `${name}\0${key}`

function isKnex(value: unknown): value is Knex {
  return typeof value === 'function' && typeof (value as { client?: unknown }).client === 'object'
}

/** One row of the lock table, as {@link LockStore.listLocks} reports it. */
export interface LockInfo extends ListedRow {
  /** Not renewed within the lease its holder wrote (`leaseMs`): any worker may take it over. */
  readonly stale: boolean
}

/** The outcome of {@link LockStore.tryWithLock}: whether the lock was free, and if so what the callback returned. */
export type TryWithLockResult<T> = { readonly acquired: true; readonly value: T } | { readonly acquired: false }

/** An attempt made by a waiter: `alone`, the only one for the lock. */
interface Attempt {
  readonly alone: boolean
}

interface Resolved {
  readonly strategy: Strategy
  readonly facts: ServerFacts
  /**
   * The table's waiting line (a release then wakes only the store first in it): `none`, kept
   * by statements of its own (`statements`), or by the waiters' acquiring statements (`in-acquire`).
   */
  readonly line: 'none' | 'statements' | 'in-acquire'
}

/**
 * Acquires and holds named locks in one database table, shared by every worker that uses the
 * same table. A lock is identified by its exact `(name, key)` strings. Each store renews the
 * locks it holds, all on one timer, until they are released or the store is closed.
 *
 * ```ts
 * const store = new LockStore(knex)
 * const lock = await store.tryAcquireLock('nightly-report', 'tenant-42')
 * if (lock) { try { await work(lock.signal) } finally { await lock.release() } }
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
  readonly #held: HeldLocks
  readonly #monotonicNow: () => number
  readonly #acquiring = new Set<string>()
  readonly #inflight = new Set<Promise<unknown>>()
  // Released by the caller, but the delete failed: close() tries these rows again.
  readonly #undeleted = new Set<HeldLock>()
  readonly #owner: LockOwner = {
    release: (state) => this.#release(state as HeldLock),
    isStillValid: (state) => this.#isStillValid(state as HeldLock),
  }
  readonly #waiting: WaitRoom
  readonly #events = new LockEvents((error) => this.#log('error', { err: error }, 'worker-locks: an event listener threw; the lock work went on.'))
  readonly #listener: ReleaseListener | undefined
  readonly #line: LinePlaces | undefined
  readonly #waiterName: string
  readonly #placeLastsMs: number
  // Locks for which a release addressed to this store (first in line) woke a waiter that has not tried yet.
  readonly #addressed = new Set<string>()
  // This store as releases in the other stores of the process see it.
  readonly #local: WaitingStore = { wake: (id) => { this.#waiting.wake(id) } }
  #resolved: Resolved | undefined
  #resolving: Promise<Resolved> | undefined
  #closing: Promise<void> | undefined
  #closed = false

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
    // A renewal slower than the interval is as good as failed; give it at least a second.
    this.#table = new LockTable(knex, sql, this.tableName, Math.max(1_000, this.renewalIntervalMs))
    const clock = this.#options.clock
    const timers = typeof clock === 'object' ? clock : systemClock
    const log = (level: LogLevel, details: object, message: string): void => this.#log(level, details, message)
    // Deadlines need a clock that never jumps; a test Clock is trusted to be one.
    this.#monotonicNow = typeof clock === 'object' ? () => clock.now() : () => performance.now()
    this.#held = new HeldLocks({
      table: this.#table,
      timers,
      monotonicNow: this.#monotonicNow,
      nowMs: () => this.#nowMs(),
      lockTimeoutMs: this.lockTimeoutMs,
      renewalIntervalMs: this.renewalIntervalMs,
      log,
      events: this.#events,
    })
    // This store's name in the waiting line, and the channel releases addressed to it arrive on.
    const waiter = randomBytes(8).toString('hex')
    this.#waiterName = waiter
    const line = sql.notifications?.line
    // A place lasts three times the longest backoff: a waiter first in line is refused (and
    // joins again) at least every maxDelayMs, and the place of a store that left without saying
    // so (a failed leave) lapses soon after. (One whose listener is gone is skipped at once.)
    this.#placeLastsMs = 3 * this.#options.backoff.maxDelayMs + 5_000
    this.#line = line && new LinePlaces(knex, line, this.tableName, waiter, this.#placeLastsMs, this.#monotonicNow, log)
    // A notification only wakes a waiter, which then asks the row like any attempt: whatever it
    // says (anyone may send one) grants nothing.
    const heard = (name: string, key: string, addressed: boolean): void => {
      const id = lockId(name, key)
      if (this.#waiting.wake(id)) {
        if (addressed) this.#addressed.add(id)
      } else if (addressed) {
        // Addressed to this store as first in line, but nobody here waits any more.
        this.#line?.stray(id, name, key)
        this.#passOn(id, name, key)
      }
    }
    this.#listener = sql.notifications
      ? new ReleaseListener(knex, sql.notifications, this.tableName, waiter, heard, timers, log)
      : undefined
    this.#waiting = new WaitRoom({
      timers,
      monotonicNow: this.#monotonicNow,
      backoff: this.#options.backoff,
      slowWaitWarningMs: this.#options.slowWaitWarningMs,
      log,
      attempt: (name, key, alone) => {
        this.#addressed.delete(lockId(name, key)) // the turn it was given is being used
        return this.#tryAcquire(name, key, { alone })
      },
      ended: (name, key, waitedMs, outcome) => {
        // A lock won by an attempt already under way when the turn arrived used that turn too.
        if (outcome === 'acquired') this.#addressed.delete(lockId(name, key))
        this.#events.emit('waited', { name, key, waitedMs, outcome })
      },
      // Hear of releases (in this process, and from others where the database can tell) only
      // while someone waits.
      occupied: (occupied) => {
        if (occupied) this.#listener?.start()
        else this.#listener?.idle(LISTENER_LINGER_MS)
      },
      waitingFor: (id, name, key) => {
        const stop = waitForLocalRelease(this.tableName, id, this.#local)
        return () => {
          stop()
          this.#line?.left(id)
          // The last waiter gave up after a release addressed to this store woke it, before
          // trying: the turn must not be lost.
          if (this.#addressed.delete(id)) this.#passOn(id, name, key)
        }
      },
    })
  }

  /** The acquire statement in use: `undefined` until the first acquire or `init()` has asked the server. */
  get strategy(): Strategy | undefined {
    return this.#resolved?.strategy
  }

  /**
   * Asks the server which strategy to use. Optional: the first acquire does it too. Call it at
   * start-up to fail early on an unreachable database or an impossible `strategy: 'native'`.
   * @throws UnsupportedDatabaseError when `strategy: 'native'` was asked for and the server cannot run it
   * @throws LockDatabaseError when the database cannot be asked
   */
  async init(): Promise<void> {
    await this.#resolve()
  }

  /**
   * Tries once to take the lock `(name, key)`, without waiting. Resolves a {@link Lock} if this
   * store now holds it, or `null` if someone else does, including another call of this store
   * (being acquired at the same moment, or held and still valid). A lock this store holds is
   * checked first (one statement): if it is no longer valid (its row was deleted, taken over, or
   * its lease ran out), that `Lock` is marked lost (its signal aborts) and the attempt goes on.
   * Both strategies and all databases give the same answer.
   * @param name what is locked, 1 to 255 characters
   * @param key which one of it, 0 to 255 characters @default ''
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   * @throws LockStoreClosedError after `close()`
   * @throws LockDatabaseError when the database fails for a reason other than contention
   */
  tryAcquireLock(name: string, key = ''): Promise<Lock | null> {
    return this.#tryAcquire(name, key, undefined)
  }

  /** `tryAcquireLock`; `waiter` when a waiter of this store makes the attempt. */
  async #tryAcquire(name: string, key: string, waiter: Attempt | undefined): Promise<Lock | null> {
    validateLockId(name, key)
    if (this.#closed) throw new LockStoreClosedError()
    const id = lockId(name, key)
    if (this.#acquiring.has(id)) return null
    const held = this.#held.get(id)
    this.#acquiring.add(id)
    const attempt = held ? this.#recheck(held, waiter) : this.#acquire(id, name, key, waiter)
    this.#inflight.add(attempt)
    try {
      return await attempt
    } finally {
      this.#acquiring.delete(id)
      this.#inflight.delete(attempt)
    }
  }

  /**
   * Waits until this store holds the lock `(name, key)` and resolves it. Waiters in one store
   * are served first come, first served. Between attempts it backs off (see the `backoff`
   * option); a release in this process, or on PostgreSQL in any process, wakes the next waiter
   * at once. A release by this same store hands the lock straight to its next waiter (up to 8
   * times in a row). `timeoutMs: 0` tries exactly once. While the database cannot be reached the
   * wait keeps trying, with backoff, until `timeoutMs`. A pending wait keeps the process alive.
   * @throws LockTimeoutError after `timeoutMs`, holding nothing; its `cause` is the database
   *   error when the last attempt failed
   * @throws the signal's reason when `signal` aborts, holding nothing
   * @throws LockStoreClosedError when the store is closed while waiting
   * @throws LockTableError when the table is missing or not migrated, at once
   * @throws InvalidLockNameError, TypeError or RangeError for bad arguments, before any SQL runs
   */
  async acquireLock(name: string, key = '', options?: WaitOptions): Promise<Lock> {
    validateLockId(name, key)
    const { timeoutMs, signal } = resolveWaitOptions(options)
    if (this.#closed) throw new LockStoreClosedError()
    signal?.throwIfAborted()
    return this.#waiting.wait(lockId(name, key), name, key, timeoutMs, signal)
  }

  /**
   * Waits for the lock (as {@link acquireLock}), runs `fn` with it, releases it whatever `fn`
   * does, and returns what `fn` returned. `fn` should watch `lock.signal`. If only the release
   * fails, the result is still returned and the failure is logged: the lock then expires.
   */
  async withLock<T>(name: string, key: string, fn: (lock: Lock) => T | Promise<T>, options?: WaitOptions): Promise<T> {
    if (typeof fn !== 'function') throw new TypeError('withLock needs a function to run under the lock.')
    const lock = await this.acquireLock(name, key, options)
    return this.#runHolding(lock, fn)
  }

  /**
   * Runs `fn` under the lock if it is free right now, without waiting: resolves
   * `{ acquired: true, value }` with `fn`'s result, or `{ acquired: false }` if someone else holds
   * the lock, so "busy, skipped" needs no exception. Releases as {@link withLock} does.
   */
  async tryWithLock<T>(name: string, key: string, fn: (lock: Lock) => T | Promise<T>): Promise<TryWithLockResult<T>> {
    if (typeof fn !== 'function') throw new TypeError('tryWithLock needs a function to run under the lock.')
    const lock = await this.tryAcquireLock(name, key)
    if (!lock) return { acquired: false }
    return { acquired: true, value: await this.#runHolding(lock, fn) }
  }

  async #runHolding<T>(lock: Lock, fn: (lock: Lock) => T | Promise<T>): Promise<T> {
    let value: T
    try {
      value = await fn(lock)
    } catch (error) {
      await lock.release().catch((releaseError: unknown) => this.#logReleaseFailure(lock, releaseError))
      throw error
    }
    await lock.release().catch((releaseError: unknown) => this.#logReleaseFailure(lock, releaseError))
    return value
  }

  #logReleaseFailure(lock: Lock, error: unknown): void {
    this.#log('warn', { err: error, lockName: lock.name, lockKey: lock.key },
      `worker-locks: could not release lock ${describeLock(lock.name, lock.key)} after its work; it expires after ${this.lockTimeoutMs} ms.`)
  }

  /**
   * Calls `listener` for every `event` of this store, for metrics and tracing (see
   * {@link LockEventMap}). Cheap when nobody listens. A listener that throws is logged and
   * otherwise ignored. Returns a function that removes the listener.
   */
  on<E extends LockEventName>(event: E, listener: LockEventListener<E>): () => void {
    return this.#events.on(event, listener)
  }

  /** Removes a listener added with {@link on}. */
  off<E extends LockEventName>(event: E, listener: LockEventListener<E>): void {
    this.#events.off(event, listener)
  }

  /**
   * Every lock row in the table (held by any worker), sorted by name and key, or those matching
   * `filter` exactly. Ages are judged by this store's clock (the database's by default), and
   * staleness by the lease each row's holder wrote, whatever this store's `lockTimeoutMs`.
   * @throws InvalidLockNameError for a bad filter value, before any SQL runs
   */
  async listLocks(filter: LockFilter = {}): Promise<LockInfo[]> {
    const checked = validateLockFilter(filter)
    const rows = await this.#database('list locks', () => this.#table.list(checked, this.#nowMs()))
    return rows.map((row) => ({ ...row, stale: row.ageMs > row.leaseMs }))
  }

  /**
   * Deletes the lock `(name, key)` whoever holds it, for operators. Resolves whether a row was
   * removed. The holder finds out at its next renewal, through `lock.signal`; waiters are woken as
   * for a release.
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   */
  async forceRelease(name: string, key = ''): Promise<boolean> {
    validateLockId(name, key)
    const removed = await this.#database(() => `force-release lock ${describeLock(name, key)}`, () => this.#table.forceRelease(name, key))
    if (removed) announceRelease(this.tableName, lockId(name, key))
    return removed
  }

  /**
   * Stops renewing and releases every lock this store holds (aborting their signals), waiting
   * for acquisitions under way (a lock they win is released at once and they reject with
   * `LockStoreClosedError`). Safe to call more than once. Does not destroy the knex instance.
   * @throws LockDatabaseError if the rows could not be deleted; those locks expire after `lockTimeoutMs`
   */
  close(): Promise<void> {
    this.#closed = true
    this.#closing ??= this.#close().catch((error: unknown) => {
      this.#closing = undefined // a later close() tries the rows that could not be deleted again
      throw error
    })
    return this.#closing
  }

  async #close(): Promise<void> {
    const waitsEnded = this.#waiting.stopAll(new LockStoreClosedError())
    await this.#held.stop()
    await Promise.allSettled([...this.#inflight])
    await waitsEnded // every place in the waiting line is being left
    await this.#line?.settled()
    await this.#listener?.stop()
    const records = [...this.#held.records(), ...this.#undeleted]
    for (const record of records) {
      this.#held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released: its store was closed.`)
      this.#undeleted.add(record)
    }
    if (records.length === 0) return
    await this.#database(() => `release ${records.length} lock(s) while closing; they expire after ${this.lockTimeoutMs} ms`,
      () => this.#table.releaseMany(records))
    for (const record of records) {
      this.#undeleted.delete(record)
      announceRelease(this.tableName, record.id)
      this.#events.emit('released', { name: record.name, key: record.key, heldMs: this.#monotonicNow() - record.acquiredAt })
    }
  }

  #resolve(): Promise<Resolved> {
    this.#resolving ??= this.#detect().then((resolved) => {
      this.#resolved = resolved
      return resolved
    }, (error: unknown) => {
      this.#resolving = undefined // a later call asks again
      throw error
    })
    return this.#resolving
  }

  async #detect(): Promise<Resolved> {
    const facts = await this.#database('ask the database for its version', () => this.#sql.detect(this.#knex))
    if (facts.unsupported) throw new UnsupportedDatabaseError(`worker-locks cannot run on ${facts.server}: ${facts.unsupported}.`)
    const strategy = this.#strategy(facts)
    // A table that is missing or not migrated is said once, clearly, and not retried by waiters.
    await this.#table.checkColumns().catch((error: unknown) => {
      if (this.#sql.isMissingSchema(error)) throw new LockTableError(this.tableName, error)
      return this.#database('look at the lock table', () => Promise.reject(error))
    })
    const line = this.#sql.notifications?.line
    if (!line) return { strategy, facts, line: 'none' }
    return { strategy, facts, line: strategy === 'native' && line.inNativeAcquire ? 'in-acquire' : 'statements' }
  }

  #strategy(facts: ServerFacts): Strategy {
    if (this.#options.strategy === 'emulated') return 'emulated'
    if (facts.native) return 'native'
    if (this.#options.strategy === 'native') {
      throw new UnsupportedDatabaseError(`strategy 'native' cannot run on ${facts.server}: ${facts.reason}. Use strategy 'auto' or 'emulated'.`)
    }
    return 'emulated'
  }

  async #acquire(id: string, name: string, key: string, waiter: Attempt | undefined): Promise<Lock | null> {
    const { strategy, facts, line } = this.#resolved ?? await this.#resolve()
    // A waiter's place in the waiting line: kept by the acquiring statement itself where it can
    // (no statement of its own), else by LinePlaces after a refusal.
    const lineInStatement = waiter !== undefined && line === 'in-acquire'
    if (lineInStatement) await this.#line?.beforeAttempt(id)
    const token = randomUUID()
    const request = {
      table: this.tableName, name, key, token,
      instanceName: this.instanceName,
      leaseMs: this.lockTimeoutMs,
      nowMs: this.#nowMs(),
      line: lineInStatement ? { waiter: this.#waiterName, expiresInMs: this.#placeLastsMs, leaveOnWin: waiter.alone } : undefined,
    }
    const sentAt = this.#monotonicNow()
    const fence = await this.#database(() => `acquire lock ${describeLock(name, key)}`, () =>
      acquire(this.#knex, this.#sql, facts, strategy, request))
    if (fence === null) {
      if (lineInStatement) this.#line?.joinedByAttempt(id, name, key)
      else if (waiter && line === 'statements') this.#line?.refused(id, name, key)
      this.#events.emit('refused', { name, key, durationMs: this.#monotonicNow() - sentAt })
      return null
    }
    if (lineInStatement && waiter.alone) this.#line?.leftByStatement(id)
    return this.#won(id, name, key, token, fence, sentAt, 0)
  }

  /**
   * An attempt for a lock this store holds (as `held`): the lock is still this store's if its row
   * still carries its token within its lease (`null`, as for any lock held by someone). If not,
   * that Lock is lost from now on, and the attempt goes to the database.
   */
  async #recheck(held: HeldLock, waiter: Attempt | undefined): Promise<Lock | null> {
    const sentAt = this.#monotonicNow()
    const status: RowStatus = await this.#database(() => `check lock ${describeLock(held.name, held.key)}`,
      () => this.#table.status(held, this.#nowMs()))
    if (status === 'valid' && held.state === 'held') {
      this.#events.emit('refused', { name: held.name, key: held.key, durationMs: this.#monotonicNow() - sentAt })
      return null
    }
    this.#held.end(held, status === 'stale' ? 'expired' : 'taken-over', () => status === 'stale'
      ? `worker-locks: lock ${describeLock(held.name, held.key)} was lost: its lease ran out before a renewal, so another worker may hold it now.`
      : `worker-locks: lock ${describeLock(held.name, held.key)} was lost: its row was deleted or taken over by another worker.`)
    return this.#acquire(held.id, held.name, held.key, waiter)
  }

  /**
   * Takes on the row this store has just written with `token` (a statement sent at `sentAt`),
   * unless the write came too late to trust or the store is closing: then it deletes the row.
   */
  async #won(id: string, name: string, key: string, token: string, fence: bigint, sentAt: number, handOvers: number): Promise<Lock | null> {
    const durationMs = this.#monotonicNow() - sentAt
    const row = { name, key, token }
    if (durationMs >= this.lockTimeoutMs) {
      // The statement took longer than the lease: the row may already look stale to others.
      await this.#giveUp(id, row, () => undefined)
      this.#log('warn', { lockName: name, lockKey: key }, `worker-locks: acquiring lock ${describeLock(name, key)} took longer than lockTimeoutMs; it was given up.`)
      return null
    }
    if (this.#closed) {
      await this.#giveUp(id, row, (error) =>
        this.#log('warn', { err: error, lockName: name, lockKey: key }, 'worker-locks: could not release a lock won while closing; it will expire.'))
      throw new LockStoreClosedError()
    }
    const record: HeldLock = {
      id, name, key, token, fence,
      controller: undefined,
      loss: undefined,
      state: 'held',
      ref: undefined as unknown as WeakRef<Lock>, // set below, once the Lock exists
      releasing: undefined,
      renewedAt: sentAt,
      acquiredAt: sentAt,
      handOvers,
    }
    const lock = new Lock(this.#owner, record)
    ;(record as { ref: WeakRef<Lock> }).ref = new WeakRef(lock)
    this.#held.add(record, lock)
    this.#events.emit('acquired', { name, key, fence, durationMs })
    return lock
  }

  // Deletes a row just won but not taken on, and wakes whoever waits for it in this process.
  async #giveUp(id: string, row: RowIdentity, failed: (error: unknown) => void): Promise<void> {
    const released = await this.#table.release(row, this.#releaseLine()).catch((error: unknown) => {
      failed(error)
      return false
    })
    if (released) announceRelease(this.tableName, id)
  }

  /** Whether the first waiter for lock `id` is asleep and this store could take the lock handed to it now. */
  #canTake(id: string): boolean {
    return !this.#closed && !this.#acquiring.has(id) && !this.#held.holds(id) && this.#waiting.canHandOver(id)
  }

  #release(record: HeldLock): Promise<void> {
    if (record.releasing) return record.releasing
    // A lock already lost was counted when it was lost: its release only deletes a row that may
    // still carry its token, and says nothing more.
    const held = record.state === 'held'
    this.#held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released.`)
    const resolved = this.#resolved
    // This store's own first waiter for the lock, asleep, takes the row over in one statement.
    const releasing = resolved && held && record.handOvers < MAX_HAND_OVERS_IN_A_ROW && this.#canTake(record.id)
      ? this.#handOver(record, resolved.facts)
      : this.#delete(record, held)
    record.releasing = releasing
    this.#track(releasing) // close() waits for deletes already under way
    return releasing
  }

  /** Deletes `record`'s row (if it still carries its token); `held`: whether to report a release. */
  #delete(record: HeldLock, held: boolean): Promise<void> {
    return this.#database(() => `release lock ${describeLock(record.name, record.key)}`, () => this.#table.release(record, this.#releaseLine()))
      .then((released) => {
        if (held) this.#released(record)
        if (released) announceRelease(this.tableName, record.id)
      }, (error: unknown) => this.#releaseFailed(record, error))
  }

  // This store's first waiter for the same lock is asleep: it takes the row over in one statement
  // (a new token and fence) instead of a delete and an insert, and nobody else sees the lock free.
  // Nothing crosses a process or a channel: the waiter is told by this store, in memory.
  #handOver(record: HeldLock, facts: ServerFacts): Promise<void> {
    const { id, name, key } = record
    const token = randomUUID()
    const sentAt = this.#monotonicNow()
    const written = this.#database(() => `hand lock ${describeLock(name, key)} over to its next waiter`,
      () => this.#table.handOver(record, token, facts, this.#nowMs()))
    // Registered first, so that 'released' is emitted before the waiter's 'acquired'. If the
    // hand-over failed (a deadlock on MySQL, a lost reply), the row carries one token or the
    // other: delete both, and the release succeeds or fails as a plain one would.
    const releasing = written.then(
      () => this.#released(record),
      () => this.#table.release({ name, key, token }, this.#releaseLine())
        .catch(() => false)
        .then(() => this.#delete(record, true)),
    )
    // The waiter makes no attempt of its own meanwhile; it takes the lock once the row is
    // written, or tries on its own if the row was no longer ours or the statement failed.
    this.#acquiring.add(id)
    const claim = written
      .then((fence) => (fence === null ? null : this.#won(id, name, key, token, fence, sentAt, record.handOvers + 1)), () => null)
      .finally(() => this.#acquiring.delete(id))
    this.#track(claim) // close() waits for a lock handed over as it closes to be deleted again
    this.#waiting.handOver(id, claim)
    return releasing
  }

  // Hands a release that reached this store on: to the next store of this process waiting for
  // it, and to every other listening process.
  #passOn(id: string, name: string, key: string): void {
    announceRelease(this.tableName, id)
    void this.#sql.notifications?.notifyReleased(this.#knex, this.tableName, name, key).catch((error: unknown) =>
      this.#log('debug', { err: error, table: this.tableName }, 'worker-locks: could not pass a release on; waiters poll meanwhile.'))
  }

  /** Whether a release wakes only the first in the table's waiting line. */
  #releaseLine(): boolean {
    const resolved = this.#resolved
    return resolved !== undefined && resolved.line !== 'none'
  }

  #track(work: Promise<unknown>): void {
    const settled = work.then(() => undefined, () => undefined)
    this.#inflight.add(settled)
    void settled.then(() => this.#inflight.delete(settled))
  }

  #released(record: HeldLock): void {
    this.#undeleted.delete(record)
    this.#events.emit('released', { name: record.name, key: record.key, heldMs: this.#monotonicNow() - record.acquiredAt })
  }

  #releaseFailed(record: HeldLock, error: unknown): never {
    record.releasing = undefined
    this.#undeleted.add(record)
    throw error
  }

  async #isStillValid(record: HeldLock): Promise<boolean> {
    if (record.state !== 'held') return false
    const status = await this.#database(() => `check lock ${describeLock(record.name, record.key)}`, () => this.#table.status(record, this.#nowMs()))
    return status === 'valid'
  }

  #nowMs(): number | null {
    const clock = this.#options.clock
    if (clock === 'database') return null
    return clock === 'local' ? Date.now() : clock.now()
  }

  // `what` is a function when it would cost work to build: the hot path only needs it on failure.
  // Chained rather than async/await, to add no promise of its own on the hot path.
  #database<T>(what: string | (() => string), run: () => Promise<T>): Promise<T> {
    const fail = (error: unknown): never => {
      const action = typeof what === 'string' ? what : what()
      throw new LockDatabaseError(`worker-locks could not ${action} in table ${JSON.stringify(this.tableName)}`, error)
    }
    try {
      return run().catch(fail)
    } catch (error) {
      return Promise.reject(error).catch(fail)
    }
  }

  #log(level: LogLevel, details: object, message: string): void {
    logTo(this.#options.logger, level, details, message)
  }
}
