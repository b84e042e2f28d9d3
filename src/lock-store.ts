// The public facade: validation, the closed and in-flight bookkeeping, the server plan and
// events. An attempt lives in acquisition.ts, releasing in releasing.ts, waiting in
// wait-room.ts, and how waiters hear of releases in coordination/.
import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { Knex } from 'knex'
import { findDialect, knexDialectName, supportedKnexClients, type DialectName, type Strategy } from '../dialects/index.js'
import type { Acquisition, WaiterAttempt } from './acquisition.js'
import { LockStoreClosedError, UnsupportedDatabaseError } from './errors.js'
import type { LockEventListener, LockEventName } from './events.js'
import { describeLock, type HeldLock } from './held-locks.js'
import type { Lock } from './lock.js'
import type { MultiLock } from './multi-lock.js'
import type { ReadWriteLocks } from './read-write.js'
import {
  resolveMultiWait, resolveParts, resolveReadWrite, resolveReadWriteWait,
  type MultiLockPart, type MultiLockWaitOptions, type ReadWriteOptions, type ReadWriteWaitOptions, type ResolvedPart,
} from './read-write-options.js'
import type { ListedRow } from './lock-table.js'
import type { Releasing } from './releasing.js'
import { askServer } from './server-plan.js'
import { assembleStore } from './store-parts.js'
import { resolveTryWithLockOptions, splitWithLockOptions, type TryWithLockOptions, type WithLockOptions } from './keeping.js'
import { keyThenFunction, keyThenOptions, runHolding, type Holding, type LockedFunction } from './with-lock.js'
import { databaseCall, lockId, type ServerPlan, type StoreContext } from './store-context.js'
import {
  resolveOptions, resolveWaitOptions, validateLockFilter, validateLockId,
  type LockFilter, type LockStoreOptions, type ResolvedOptions, type WaitOptions,
} from './validate.js'
import type { WaitRoom } from './wait-room.js'

function isKnex(value: unknown): value is Knex {
  return typeof value === 'function' && typeof (value as { client?: unknown }).client === 'object'
}

/** One row of the lock table, as {@link LockStore.listLocks} reports it. */
export interface LockInfo extends ListedRow {
  /** Not renewed within the lease its holder wrote (`leaseMs`): any worker may take it over. */
  readonly stale: boolean
  /** How many holders the lock has: 1 for a plain lock, the number of rows of its key for a read/write lock. */
  readonly holders: number
}

/** The outcome of {@link LockStore.tryWithLock}: whether the lock was free, and if so what the callback returned. */
export type TryWithLockResult<T> = { readonly acquired: true; readonly value: T } | { readonly acquired: false }

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
  /** How long an unrenewed lock stays held, in milliseconds: the lease written into its row. */
  readonly lockTimeoutMs: number
  /** How often held locks are renewed, in milliseconds. */
  readonly renewalIntervalMs: number

  readonly #options: ResolvedOptions
  readonly #ctx: StoreContext
  readonly #acquisition: Acquisition
  readonly #releasing: Releasing
  readonly #waiting: WaitRoom
  readonly #readWrite: ReadWriteLocks
  readonly #inflight = new Set<Promise<unknown>>()
  #plan: ServerPlan | undefined
  #planning: Promise<ServerPlan> | undefined
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
    const dialect = findDialect(knex)
    if (!dialect) {
      throw new UnsupportedDatabaseError(
        `worker-locks does not support the knex client ${JSON.stringify(knexDialectName(knex) ?? 'unknown')}; use one of ${supportedKnexClients.join(', ')}.`,
      )
    }
    const o = (this.#options = resolveOptions(options))
    this.dialect = dialect.name
    this.instanceName = o.instanceName ?? `${hostname()}:${process.pid}:${randomBytes(6).toString('hex')}`
    this.tableName = o.tableName
    this.lockTimeoutMs = o.lockTimeoutMs
    this.renewalIntervalMs = o.renewalIntervalMs
    const parts = assembleStore(knex, dialect, o, this.instanceName, {
      plan: () => this.#plan ?? this.#askServer(),
      planned: () => this.#plan,
      track: (work) => this.#track(work),
      isClosed: () => this.#closed,
      isStillValid: (record) => this.#isStillValid(record),
    })
    this.#ctx = parts.ctx
    this.#acquisition = parts.acquisition
    this.#releasing = parts.releasing
    this.#waiting = parts.waiting
    this.#readWrite = parts.readWrite
  }

  /** The acquire statement in use: `undefined` until the first acquire or `init()` has asked the server. */
  get strategy(): Strategy | undefined {
    return this.#plan?.strategy
  }

  /**
   * Asks the server which strategy to use and whether the table is ready. Optional: the first
   * acquire does it too. Call it at start-up to fail early on an unreachable database, a missing
   * table or an impossible `strategy: 'native'`.
   * @throws UnsupportedDatabaseError when `strategy: 'native'` was asked for and the server cannot run it
   * @throws LockTableError when the table is missing or not migrated
   * @throws LockDatabaseError when the database cannot be asked
   */
  async init(): Promise<void> {
    await this.#askServer()
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
   * @throws LockTableError when the table is missing or not migrated
   * @throws LockDatabaseError when the database fails for a reason other than contention
   */
  tryAcquireLock(name: string, key = ''): Promise<Lock | null> {
    return this.#attempt(name, key, undefined)
  }

  async #attempt(name: string, key: string, waiter: WaiterAttempt | undefined): Promise<Lock | null> {
    validateLockId(name, key)
    if (this.#closed) throw new LockStoreClosedError()
    return this.#acquisition.attempt({ id: lockId(name, key), name, key }, waiter)
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
  acquireLock(name: string, options?: WaitOptions): Promise<Lock>
  acquireLock(name: string, key: string, options?: WaitOptions): Promise<Lock>
  async acquireLock(name: string, keyOrOptions?: string | WaitOptions, options?: WaitOptions): Promise<Lock> {
    const [key, waitOptions] = keyThenOptions(keyOrOptions, options)
    validateLockId(name, key)
    const { timeoutMs, signal } = resolveWaitOptions(waitOptions)
    if (this.#closed) throw new LockStoreClosedError()
    signal?.throwIfAborted()
    return this.#waiting.wait({ id: lockId(name, key as string), name, key: key as string }, timeoutMs, signal)
  }

  /**
   * Waits for the lock (as {@link acquireLock}), runs `fn` with it, releases it whatever `fn`
   * does, and returns what `fn` returned. `fn` should watch `lock.signal`. If only the release
   * fails, the result is still returned and the failure is logged: the lock then expires. With
   * `minHoldMs`, a quick `fn` leaves the lock taken until that long after it was called (see
   * {@link WithLockOptions}).
   */
  withLock<T>(name: string, fn: LockedFunction<T>, options?: WithLockOptions): Promise<T>
  withLock<T>(name: string, key: string, fn: LockedFunction<T>, options?: WithLockOptions): Promise<T>
  async withLock<T>(name: string, ...args: unknown[]): Promise<T> {
    const { key, fn, rest } = keyThenFunction<T>('withLock', args)
    const { wait, minHoldMs } = splitWithLockOptions(rest)
    const lock = await this.acquireLock(name, key as string, wait as WaitOptions | undefined)
    return runHolding(lock, fn, this.#holding(minHoldMs))
  }

  /**
   * Runs `fn` under the lock if it is free right now, without waiting: resolves
   * `{ acquired: true, value }` with `fn`'s result, or `{ acquired: false }` if someone else holds
   * the lock, so "busy, skipped" needs no exception. Releases as {@link withLock} does, keeping
   * the lock for `minHoldMs` as it does.
   */
  tryWithLock<T>(name: string, fn: LockedFunction<T>, options?: TryWithLockOptions): Promise<TryWithLockResult<T>>
  tryWithLock<T>(name: string, key: string, fn: LockedFunction<T>, options?: TryWithLockOptions): Promise<TryWithLockResult<T>>
  async tryWithLock<T>(name: string, ...args: unknown[]): Promise<TryWithLockResult<T>> {
    const { key, fn, rest } = keyThenFunction<T>('tryWithLock', args)
    const minHoldMs = resolveTryWithLockOptions(rest)
    const lock = await this.tryAcquireLock(name, key as string)
    if (!lock) return { acquired: false }
    return { acquired: true, value: await runHolding(lock, fn, this.#holding(minHoldMs)) }
  }

  /** How `runHolding` releases for this store: its log, its lease, and its clock for `minHoldMs`. */
  #holding(minHoldMs: number): Holding {
    return { log: this.#ctx.log, lockTimeoutMs: this.lockTimeoutMs, minHoldMs, now: this.#ctx.monotonicNow }
  }

  /**
   * Calls `listener` for every `event` of this store, for metrics and tracing (see
   * {@link LockEventMap}). Cheap when nobody listens. A listener that throws is logged and
   * otherwise ignored. Returns a function that removes the listener.
   * @throws TypeError for an unknown event name or a listener that is not a function
   */
  on<E extends LockEventName>(event: E, listener: LockEventListener<E>): () => void {
    return this.#ctx.events.on(event, listener)
  }

  /** Removes a listener added with {@link on}. */
  off<E extends LockEventName>(event: E, listener: LockEventListener<E>): void {
    this.#ctx.events.off(event, listener)
  }

  /**
   * Every lock in the table (held by any worker), sorted by name and key, or those matching
   * `filter` exactly: one entry per plain lock (`mode` `exclusive`) and one per holder of a
   * read/write lock (`read` or `write`, with `holders` counting that key's holders). Ages are
   * judged by this store's clock (the database's by default), and staleness by the lease each
   * row's holder wrote, whatever this store's `lockTimeoutMs`.
   * @throws InvalidLockNameError for a bad filter value, before any SQL runs
   */
  async listLocks(filter: LockFilter = {}): Promise<LockInfo[]> {
    const checked = validateLockFilter(filter)
    const { table, holders } = this.#ctx
    const rows = await databaseCall(this.#ctx, 'list locks', async () => [...await table.list(checked, this.#ctx.nowMs()), ...await holders.list(checked, this.#ctx.nowMs())])
    const counts = new Map<string, number>()
    for (const row of rows) if (row.mode !== 'exclusive') counts.set(lockId(row.name, row.key), (counts.get(lockId(row.name, row.key)) ?? 0) + 1)
    return rows
      .map((row) => ({ ...row, stale: row.ageMs > row.leaseMs, holders: row.mode === 'exclusive' ? 1 : counts.get(lockId(row.name, row.key)) ?? 1 }))
      // By name and key, then in the order granted.
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : Number(a.fence - b.fence)))
  }

  /**
   * Deletes the lock `(name, key)` whoever holds it, for operators: the plain lock and every
   * holder of the read/write lock of that name and key. Resolves whether a row was removed. The
   * holders find out at their next renewal, through `lock.signal`; waiters are woken as for a
   * release.
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   */
  async forceRelease(name: string, key = ''): Promise<boolean> {
    validateLockId(name, key)
    const { table, holders } = this.#ctx
    const [plain, readWrite] = await databaseCall(this.#ctx, () => `force-release lock ${describeLock(name, key)}`,
      async () => [await table.forceRelease(name, key), await holders.forceRelease(name, key)])
    if (plain) this.#ctx.coordination.released({ id: lockId(name, key), name, key })
    if (readWrite) this.#readWrite.released(name, key)
    return plain || readWrite
  }

  /**
   * Tries once to take the read/write lock `(name, key)` without waiting: its write side
   * (`write: true`, exclusive) or its read side (`write: false`, shared by any number of
   * readers). Resolves a {@link Lock} (`mode` `read` or `write`, with its own `fence`), or `null`
   * while a conflicting holder has it, or, for a reader, while a writer waits for it (see
   * `blockNewReaders`). Read/write locks are a namespace of their own: the plain lock of the
   * same name and key neither blocks nor is blocked by them. A holder that stopped renewing is
   * taken over once its lease has run out. Renewal, `signal`, `release()`, `close()` and
   * `forceRelease` work as for plain locks.
   * @throws InvalidLockNameError, TypeError (no boolean `write`) before any SQL runs
   * @throws LockStoreClosedError after `close()`
   * @throws LockTableError when the table lacks the read/write migration
   */
  async tryAcquireReadWriteLock(name: string, key: string, options: ReadWriteOptions): Promise<Lock | null> {
    const part = resolveReadWrite(name, key, options)
    return (await this.#readWriteAttempt([part]))?.locks[0] ?? null
  }

  /**
   * Waits until this store holds the read/write lock `(name, key)` in the mode asked for, as
   * {@link acquireLock} waits (timeout, signal, backoff, wake-ups in this process). A waiting
   * writer keeps new readers out until it is in (unless `blockNewReaders: false`), so a stream
   * of readers cannot starve it; its claim lapses soon after it stops trying.
   * @throws as {@link acquireLock} does; TypeError without a boolean `write`
   */
  async acquireReadWriteLock(name: string, key: string, options: ReadWriteWaitOptions): Promise<Lock> {
    const { part, blockNewReaders, wait } = resolveReadWriteWait(name, key, options)
    if (this.#closed) throw new LockStoreClosedError()
    wait.signal?.throwIfAborted()
    const multi = await this.#readWrite.wait([part], blockNewReaders, wait.timeoutMs, wait.signal)
    return multi.locks[0]!
  }

  /**
   * Waits for the read/write lock (as {@link acquireReadWriteLock}), runs `fn` with it, and
   * releases it whatever `fn` does, as {@link withLock}. The options come before `fn` because
   * `write` must be given.
   */
  async withReadWriteLock<T>(name: string, key: string, options: ReadWriteWaitOptions, fn: LockedFunction<T>): Promise<T> {
    if (typeof fn !== 'function') throw new TypeError('withReadWriteLock needs a function to run under the lock: (name, key, { write }, fn).')
    const lock = await this.acquireReadWriteLock(name, key, options)
    return runHolding(lock, fn, this.#holding(0))
  }

  /**
   * Tries once to take every listed read/write lock at once, or none: resolves a
   * {@link MultiLock} holding all of them, or `null` (holding nothing) if any is held in a
   * conflicting mode. A `(name, key)` listed twice is taken once, in write mode if either entry
   * asks for it. Locks are taken in one order whatever the list's, so concurrent multi-locks do
   * not deadlock.
   * @throws InvalidLockNameError, TypeError or RangeError for a bad list (empty, over 1,000 entries, an entry without a boolean `write`), before any SQL runs
   */
  async tryAcquireMultiLock(parts: readonly MultiLockPart[]): Promise<MultiLock | null> {
    return this.#readWriteAttempt(resolveParts(parts))
  }

  /** Waits until every listed lock can be taken at once (see {@link tryAcquireMultiLock} and {@link acquireReadWriteLock}). */
  async acquireMultiLock(parts: readonly MultiLockPart[], options?: MultiLockWaitOptions): Promise<MultiLock> {
    const resolved = resolveParts(parts)
    const { blockNewReaders, wait } = resolveMultiWait(options)
    if (this.#closed) throw new LockStoreClosedError()
    wait.signal?.throwIfAborted()
    return this.#readWrite.wait(resolved, blockNewReaders, wait.timeoutMs, wait.signal)
  }

  #readWriteAttempt(parts: readonly ResolvedPart[]): Promise<MultiLock | null> {
    if (this.#closed) return Promise.reject(new LockStoreClosedError())
    const attempt = this.#readWrite.attempt(parts)
    this.#track(attempt)
    return attempt
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
    const waitsEnded = Promise.all([this.#waiting.stopAll(new LockStoreClosedError()), this.#readWrite.stopAll(new LockStoreClosedError())])
    await this.#ctx.held.stop()
    await Promise.allSettled([...this.#inflight])
    await waitsEnded // every place in the waiting line is being left
    await this.#ctx.coordination.close()
    await this.#releasing.releaseAll()
  }

  #askServer(): Promise<ServerPlan> {
    this.#planning ??= askServer(this.#ctx.knex, this.#ctx.dialect, this.#ctx.table, this.tableName, this.#options.strategy).then((plan) => {
      this.#plan = plan
      this.#ctx.coordination.planned(plan.strategy)
      return plan
    }, (error: unknown) => {
      this.#planning = undefined // a later call asks again
      throw error
    })
    return this.#planning
  }

  async #isStillValid(record: HeldLock): Promise<boolean> {
    if (record.state !== 'held') return false
    const table = record.mode === 'exclusive' ? this.#ctx.table : this.#ctx.holders
    const status = await databaseCall(this.#ctx, () => `check lock ${describeLock(record.name, record.key)}`,
      () => table.status(record, this.#ctx.nowMs()))
    return status === 'valid'
  }

  #track(work: Promise<unknown>): void {
    const settled = work.then(() => undefined, () => undefined)
    this.#inflight.add(settled)
    void settled.then(() => this.#inflight.delete(settled))
  }
}
