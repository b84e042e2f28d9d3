// The public facade and the store's own state (closed, in flight, being acquired). It owns its
// parts as a tree, each knowing only what is below it: the table (every statement), the held
// locks (renewal), the waits, and the wake-ups the waits listen to. A try is one method here:
// validate, ask the table, make the Lock, hand it to the held locks.
import { randomBytes, randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import type { Knex } from 'knex'
import { findDialect, knexDialectName, supportedKnexClients, type Bound, type DialectName, type Strategy } from '../dialects/index.js'
import { storeClocks, type StoreClocks } from './clock.js'
import { LockStoreClosedError, UnsupportedDatabaseError } from './errors.js'
import { LockEvents, type LockEventListener, type LockEventName } from './events.js'
import { describeLock, HeldLocks } from './held-locks.js'
import { Lock, type HeldLock, type LockMode, type LockOwner } from './lock.js'
import { LockTable, type ListedRow } from './lock-table.js'
import { logTo, type Log } from './logger.js'
import { MultiLock } from './multi-lock.js'
import {
  optionsObject, resolveMultiWait, resolveOptions, resolveParts, resolveReadWrite, resolveWait, validateLockFilter, validateLockId,
  type LockFilter, type LockStoreOptions, type MultiLockPart, type MultiLockWaitOptions, type Part, type ReadWriteOptions,
  type ReadWriteWaitOptions, type ResolvedOptions, type Wait, type WaitOptions,
} from './validate.js'
import { Waits } from './waits.js'
import { LOOK_MAX_MS, type HolderKind } from './release-watch.js'
import { lockId, lockOfId, readWriteId } from './lock-ids.js'
import { Wakeups } from './wakeups.js'
import { keyThenOptions, lockedCall, runHolding, type LockedFunction, type TryWithLockOptions, type WithLockOptions } from './with-lock.js'

/** One row of the lock table, as {@link LockStore.listLocks} reports it. */
export interface LockInfo extends ListedRow {
  /** Not renewed within the lease its holder wrote (`leaseMs`): any worker may take it over. */
  readonly stale: boolean
  /** How many holders the lock has: 1 for a plain lock, the number of rows of its key for a read/write lock. */
  readonly holders: number
}

/** The outcome of {@link LockStore.tryWithLock}: whether the lock was free, and if so what the callback returned. */
export type TryWithLockResult<T> = { readonly acquired: true; readonly value: T } | { readonly acquired: false }

/** A row just written, before it becomes a Lock. */
type Won = Pick<HeldLock, 'id' | 'mode' | 'name' | 'key' | 'token' | 'fence'>

/** The id a release of `record` wakes waits by: the lock's, or its read/write key's. */
const wakeIdOf = (record: Pick<HeldLock, 'mode' | 'name' | 'key'>): string =>
  (record.mode === 'exclusive' ? lockId : readWriteId)(record.name, record.key)

/** How messages name a multi-lock: its parts. */
const describeParts = (parts: readonly Part[]): string => parts.map((p) => `${describeLock(p.name, p.key)} (${p.write ? 'write' : 'read'})`).join(', ')

const byNameAndKey = (a: { name: string; key: string }, b: { name: string; key: string }): number =>
  (a.name < b.name ? -1 : a.name > b.name ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0)

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

  readonly #o: ResolvedOptions
  readonly #clocks: StoreClocks
  readonly #log: Log
  readonly #events: LockEvents
  readonly #table: LockTable
  readonly #held: HeldLocks
  readonly #wakeups: Wakeups
  readonly #waits: Waits
  readonly #owner: LockOwner = { release: (record, keepForMs) => this.#release(record, keepForMs), isStillValid: (record) => this.#isStillValid(record) }
  // Plain locks this store is acquiring now: another attempt for one is refused without SQL.
  readonly #acquiring = new Set<string>()
  readonly #inflight = new Set<Promise<unknown>>()
  // Released by the caller, but the delete failed: close() tries these rows again.
  readonly #undeleted = new Set<HeldLock>()
  #closing: Promise<void> | undefined
  #closed = false

  /**
   * @param knex a knex instance for PostgreSQL (`pg`), SQLite (`better-sqlite3`) or
   *   MySQL/MariaDB (`mysql2`). The store never destroys it.
   * @throws UnsupportedDatabaseError for any other knex client
   * @throws TypeError or RangeError for a bad option, naming it
   */
  constructor(knex: Knex, options?: LockStoreOptions) {
    if (typeof knex !== 'function' || typeof (knex as { client?: unknown }).client !== 'object') {
      throw new TypeError('LockStore needs a knex instance as its first argument, e.g. new LockStore(knex({ client: "pg", connection })).')
    }
    const dialect = findDialect(knex)
    if (!dialect) {
      throw new UnsupportedDatabaseError(`worker-locks does not support the knex client ${JSON.stringify(knexDialectName(knex) ?? 'unknown')}; use one of ${supportedKnexClients.join(', ')}.`)
    }
    const o = (this.#o = resolveOptions(options))
    this.dialect = dialect.name
    this.instanceName = o.instanceName ?? `${hostname()}:${process.pid}:${randomBytes(6).toString('hex')}`
    this.tableName = o.tableName
    this.lockTimeoutMs = o.lockTimeoutMs
    this.renewalIntervalMs = o.renewalIntervalMs
    const clocks = (this.#clocks = storeClocks(o.clock))
    const log = (this.#log = (level, details, message) => logTo(o.logger, level, details, message))
    const events = (this.#events = new LockEvents((error) => log('error', { err: error }, 'worker-locks: an event listener threw; the lock work went on.')))
    // A renewal slower than the interval is as good as failed; give it at least a second.
    const table = (this.#table = new LockTable(knex, dialect, { ...o, renewalTimeoutMs: Math.max(1_000, o.renewalIntervalMs) }))
    this.#held = new HeldLocks({ table, clocks, lockTimeoutMs: o.lockTimeoutMs, renewalIntervalMs: o.renewalIntervalMs, log, events })
    const look = async (ids: readonly string[], signal: AbortSignal): Promise<Map<string, Map<string, HolderKind>>> => {
      const live = new Map<string, Map<string, HolderKind>>()
      for (const holder of await table.liveHolders(ids.map(lockOfId), clocks.nowMs(), { withinMs: LOOK_MAX_MS, signal })) {
        const id = holder.readWrite ? readWriteId(holder.name, holder.key) : lockId(holder.name, holder.key)
        live.set(id, (live.get(id) ?? new Map()).set(holder.token, holder.kind))
      }
      return live
    }
    const wakeups = (this.#wakeups = new Wakeups({
      knex, table: o.tableName, notifications: dialect.notifications, look, timers: clocks.timers, monotonicNow: clocks.monotonicNow, log,
    }))
    this.#waits = new Waits({ clocks, backoff: o.backoff, slowWaitWarningMs: o.slowWaitWarningMs, log, events, wakeups })
  }

  /** The acquire statement in use: `undefined` until the first acquire or `init()` has asked the server. */
  get strategy(): Strategy | undefined {
    return this.#table.strategy
  }

  /**
   * Asks the server which strategy to use and whether the table is ready. Optional: the first
   * acquire does it too. Call it at start-up to fail early on an unreachable database, a missing
   * table or an impossible `strategy: 'native'`.
   * @throws UnsupportedDatabaseError when `strategy: 'native'` was asked for and the server cannot
   *   run it, or the server or session is set up in a way worker-locks cannot work with (named)
   * @throws ReadOnlyDatabaseError on a standby or a read-only server, session or file
   * @throws LockTableError when the table is missing or not migrated
   * @throws LockDatabaseError when the database cannot be asked
   */
  async init(): Promise<void> {
    await this.#table.plan()
  }

  /**
   * Tries once to take the lock `(name, key)`, without waiting. Resolves a {@link Lock} if this
   * store now holds it, or `null` if someone else does, including another call of this store
   * (being acquired at the same moment, or held and still valid). A lock this store holds is
   * checked first (one statement): if it is no longer valid (its row was deleted, taken over, or
   * its lease ran out), that `Lock` is marked lost (its signal aborts) and the attempt goes on.
   * @param name what is locked, 1 to 255 characters
   * @param key which one of it, 0 to 255 characters @default ''
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   * @throws LockStoreClosedError after `close()`
   * @throws LockTableError when the table is missing or not migrated
   * @throws LockDatabaseError when the database fails for a reason other than contention
   */
  tryAcquireLock(name: string, key = ''): Promise<Lock | null> {
    return this.#try(name, key, undefined)
  }

  /** One attempt, within `bound` when a wait makes it (its deadline, and a signal that ends with it). */
  async #try(name: string, key: string, bound: Bound | undefined): Promise<Lock | null> {
    validateLockId(name, key)
    if (this.#closed) throw new LockStoreClosedError()
    const id = lockId(name, key)
    if (this.#acquiring.has(id)) return null
    this.#acquiring.add(id)
    try {
      return await this.#track(this.#tryPlain(id, name, key, bound))
    } finally {
      this.#acquiring.delete(id)
    }
  }

  async #tryPlain(id: string, name: string, key: string, bound: Bound | undefined): Promise<Lock | null> {
    const held = this.#held.get(id)
    if (held) {
      const sentAt = this.#clocks.monotonicNow()
      const status = await this.#table.status(held, this.#clocks.nowMs(), bound)
      if (status === 'valid' && held.state === 'held') return this.#refused(name, key, sentAt)
      this.#held.end(held, status === 'stale' ? 'expired' : 'taken-over', () => status === 'stale'
        ? `worker-locks: lock ${describeLock(name, key)} was lost: its lease ran out before a renewal, so another worker may hold it now.`
        : `worker-locks: lock ${describeLock(name, key)} was lost: its row was deleted or taken over by another worker.`)
    }
    const token = randomUUID()
    const sentAt = this.#clocks.monotonicNow()
    const fence = await this.#table.acquire({ name, key }, token, this.instanceName, this.lockTimeoutMs, this.#clocks.nowMs(), bound)
    if (fence === null) return this.#refused(name, key, sentAt)
    return (await this.#won(sentAt, [{ id, mode: 'exclusive', name, key, token, fence }]))?.[0] ?? null
  }

  #refused(name: string, key: string, sentAt: number): null {
    this.#events.emit('refused', { name, key, durationMs: this.#clocks.monotonicNow() - sentAt })
    return null
  }

  /**
   * Takes on the rows just written by a statement sent at `sentAt`, unless it came too late to
   * trust (the rows may already look stale to others) or the store is closing: then deletes them.
   */
  async #won(sentAt: number, rows: readonly Won[]): Promise<Lock[] | null> {
    const durationMs = this.#clocks.monotonicNow() - sentAt
    const records = rows.map((row): HeldLock => ({
      ...row, ref: undefined, controller: undefined, state: 'held', loss: undefined, releasing: undefined, renewedAt: sentAt, acquiredAt: sentAt,
    }))
    if (durationMs >= this.lockTimeoutMs || this.#closed) {
      const what = records.map((r) => describeLock(r.name, r.key)).join(', ')
      await this.#table.releaseMany(records).then(() => { for (const record of records) this.#wakeups.released(wakeIdOf(record)) }, (error: unknown) =>
        this.#log('warn', { err: error }, `worker-locks: could not release ${what} just won; it expires after ${this.lockTimeoutMs} ms.`))
      if (this.#closed) throw new LockStoreClosedError()
      this.#log('warn', {}, `worker-locks: acquiring ${what} took longer than lockTimeoutMs; it was given up.`)
      return null
    }
    return records.map((record) => {
      const lock = new Lock(this.#owner, record)
      this.#held.add(record, lock)
      this.#events.emit('acquired', { name: record.name, key: record.key, fence: record.fence, durationMs })
      return lock
    })
  }

  /**
   * Waits until this store holds the lock `(name, key)` and resolves it. Waits of one store for
   * one lock are served first come, first served. Between attempts it backs off (see the
   * `backoff` option); a release in this process, or on PostgreSQL in any process, wakes the
   * next waiter at once. `timeoutMs: 0` tries exactly once. While the database cannot be reached
   * the wait keeps trying, with backoff, until `timeoutMs`. A pending wait keeps the process alive.
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
    return this.#wait(name, key as string, resolveWait(optionsObject(waitOptions, 'wait', ['timeoutMs', 'signal']), 'wait'))
  }

  #wait(name: string, key: string, wait: Wait): Promise<Lock> {
    validateLockId(name, key)
    if (this.#closed) throw new LockStoreClosedError()
    wait.signal?.throwIfAborted()
    const id = lockId(name, key)
    return this.#waits.wait({ id, wakeIds: [id], name, key, ...wait, attempt: (bound) => this.#try(name, key, bound) })
  }

  /**
   * Waits for the lock (as {@link acquireLock}), runs `fn` with it, releases it whatever `fn`
   * does, and returns what `fn` returned. `fn` should watch `lock.signal`. If only the release
   * fails, the result is still returned and the failure is logged: the lock then expires. With
   * `minHoldMs`, a quick `fn` leaves the lock taken until that long after it was called.
   */
  withLock<T>(name: string, fn: LockedFunction<T>, options?: WithLockOptions): Promise<T>
  withLock<T>(name: string, key: string, fn: LockedFunction<T>, options?: WithLockOptions): Promise<T>
  async withLock<T>(name: string, ...args: unknown[]): Promise<T> {
    const { key, fn, wait, minHoldMs } = lockedCall<T>('withLock', args)
    validateLockId(name, key)
    return this.#holding(await this.#wait(name, key as string, wait), fn, minHoldMs)
  }

  /**
   * Runs `fn` under the lock if it is free right now, without waiting: resolves
   * `{ acquired: true, value }` with `fn`'s result, or `{ acquired: false }` if someone else holds
   * the lock, so "busy, skipped" needs no exception. Releases as {@link withLock} does.
   */
  tryWithLock<T>(name: string, fn: LockedFunction<T>, options?: TryWithLockOptions): Promise<TryWithLockResult<T>>
  tryWithLock<T>(name: string, key: string, fn: LockedFunction<T>, options?: TryWithLockOptions): Promise<TryWithLockResult<T>>
  async tryWithLock<T>(name: string, ...args: unknown[]): Promise<TryWithLockResult<T>> {
    const { key, fn, minHoldMs } = lockedCall<T>('tryWithLock', args)
    const lock = await this.tryAcquireLock(name, key as string)
    return lock ? { acquired: true, value: await this.#holding(lock, fn, minHoldMs) } : { acquired: false }
  }

  #holding<T>(lock: Lock, fn: LockedFunction<T>, minHoldMs: number): Promise<T> {
    return runHolding(lock, fn, minHoldMs, this.#clocks.monotonicNow, this.#log, this.lockTimeoutMs)
  }

  /**
   * Calls `listener` for every `event` of this store, for metrics and tracing (see
   * {@link LockEventMap}). Cheap when nobody listens. A listener that throws is logged and
   * otherwise ignored. Returns a function that removes the listener.
   * @throws TypeError for an unknown event name or a listener that is not a function
   */
  on<E extends LockEventName>(event: E, listener: LockEventListener<E>): () => void {
    return this.#events.on(event, listener)
  }

  /** Removes a listener added with {@link on}. */
  off<E extends LockEventName>(event: E, listener: LockEventListener<E>): void {
    this.#events.off(event, listener)
  }

  /**
   * Every lock in the table (held by any worker), or those matching `filter` exactly (an empty
   * `instanceName` lists the locks kept after their release): one entry per plain lock (`mode`
   * `exclusive`) and one per holder of a read/write lock (`read` or `write`, with `holders`
   * counting that key's holders), sorted by name and key, the plain lock first, each kind in
   * fence order. Ages are judged by this store's clock (the database's by default), and
   * staleness by the lease each row's holder wrote, whatever this store's `lockTimeoutMs`.
   * @throws InvalidLockNameError for a bad filter value, before any SQL runs
   */
  async listLocks(filter: LockFilter = {}): Promise<LockInfo[]> {
    const rows = await this.#table.list(validateLockFilter(filter), this.#clocks.nowMs())
    const counts = new Map<string, number>()
    for (const row of rows) if (row.mode !== 'exclusive') counts.set(lockId(row.name, row.key), (counts.get(lockId(row.name, row.key)) ?? 0) + 1)
    return rows
      .map((row) => ({ ...row, stale: row.ageMs > row.leaseMs, holders: row.mode === 'exclusive' ? 1 : counts.get(lockId(row.name, row.key)) ?? 1 }))
      // A plain lock and the read/write lock of one name and key draw fences from separate counters.
      .sort((a, b) => byNameAndKey(a, b) || Number(a.mode !== 'exclusive') - Number(b.mode !== 'exclusive') || Number(a.fence - b.fence))
  }

  /**
   * Deletes the lock `(name, key)` whoever holds it, for operators: the plain lock and every
   * holder of the read/write lock of that name and key. Resolves whether a row was removed. The
   * holders find out at their next renewal, through `lock.signal`; waiters are woken as for a release.
   * @throws InvalidLockNameError for a bad name or key, before any SQL runs
   */
  async forceRelease(name: string, key = ''): Promise<boolean> {
    validateLockId(name, key)
    const { plain, readWrite } = await this.#table.forceRelease(name, key)
    if (plain) this.#wakeups.released(lockId(name, key))
    if (readWrite) this.#wakeups.released(readWriteId(name, key))
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
    const { part } = resolveReadWrite(name, key, options, false)
    return (await this.#tryReadWrite([part], undefined, undefined))?.locks[0] ?? null
  }

  /**
   * Waits until this store holds the read/write lock `(name, key)` in the mode asked for, as
   * {@link acquireLock} waits. A waiting writer keeps new readers out until it is in (unless
   * `blockNewReaders: false`), so a stream of readers cannot starve it; its claim lapses soon
   * after it stops trying.
   * @throws as {@link acquireLock} does; TypeError without a boolean `write`
   */
  async acquireReadWriteLock(name: string, key: string, options: ReadWriteWaitOptions): Promise<Lock> {
    const { part, wait, blockNewReaders } = resolveReadWrite(name, key, options, true)
    return (await this.#waitReadWrite([part], wait, blockNewReaders)).locks[0] as Lock
  }

  /**
   * Waits for the read/write lock (as {@link acquireReadWriteLock}), runs `fn` with it, and
   * releases it whatever `fn` does, as {@link withLock}. The options come before `fn` because
   * `write` must be given.
   */
  async withReadWriteLock<T>(name: string, key: string, options: ReadWriteWaitOptions, fn: LockedFunction<T>): Promise<T> {
    if (typeof fn !== 'function') throw new TypeError('withReadWriteLock needs a function to run under the lock: (name, key, { write }, fn).')
    return this.#holding(await this.acquireReadWriteLock(name, key, options), fn, 0)
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
    return this.#tryReadWrite(resolveParts(parts), undefined, undefined)
  }

  /** Waits until every listed lock can be taken at once (see {@link tryAcquireMultiLock} and {@link acquireReadWriteLock}). */
  async acquireMultiLock(parts: readonly MultiLockPart[], options?: MultiLockWaitOptions): Promise<MultiLock> {
    const resolved = resolveParts(parts)
    const { wait, blockNewReaders } = resolveMultiWait(options)
    return this.#waitReadWrite(resolved, wait, blockNewReaders)
  }

  /** One attempt at every part, all or none (`intent`: a waiting writer's, which its own attempt clears), within `bound` (a wait's). */
  async #tryReadWrite(parts: readonly Part[], intent: string | undefined, bound: Bound | undefined): Promise<MultiLock | null> {
    if (this.#closed) throw new LockStoreClosedError()
    return this.#track((async () => {
      // Every acquirer locks key rows in one (sorted) order, so multi-locks cannot deadlock.
      const sorted = [...parts].sort(byNameAndKey).map((p) => ({ ...p, token: randomUUID() }))
      const sentAt = this.#clocks.monotonicNow()
      const fences = await this.#table.acquireReadWrite(sorted, this.instanceName, this.lockTimeoutMs, this.#clocks.nowMs(), intent, describeParts(parts), bound)
      const first = parts[0] as Part
      if (fences === null) return this.#refused(first.name, first.key, sentAt)
      const locks = await this.#won(sentAt, sorted.map((p, i): Won => ({
        id: `${readWriteId(p.name, p.key)}\0${p.token}`, mode: (p.write ? 'write' : 'read') as LockMode, name: p.name, key: p.key, token: p.token, fence: fences[i] as bigint,
      })))
      if (!locks) return null
      const byLock = new Map(locks.map((lock) => [lockId(lock.name, lock.key), lock]))
      return new MultiLock(parts.map((p) => byLock.get(lockId(p.name, p.key)) as Lock))
    })())
  }

  #waitReadWrite(parts: readonly Part[], wait: Wait, blockNewReaders: boolean): Promise<MultiLock> {
    if (this.#closed) throw new LockStoreClosedError()
    wait.signal?.throwIfAborted()
    const writes = parts.filter((p) => p.write)
    const intent = blockNewReaders && writes.length > 0 ? randomUUID() : undefined
    // A waiting writer's claim outlives the pause between its attempts (at most maxDelayMs) twice over.
    const intentMs = 2 * this.#o.backoff.maxDelayMs + 1_000
    const ids = parts.map((p) => readWriteId(p.name, p.key))
    const [only] = parts
    return this.#track(this.#waits.wait({
      id: [...ids].sort().join('\0\0'), wakeIds: ids, ...wait,
      name: parts.length === 1 ? (only as Part).name : describeParts(parts), key: parts.length === 1 ? (only as Part).key : '',
      what: parts.length === 1 ? `the ${(only as Part).write ? 'write' : 'read'} side of read/write lock ${describeLock((only as Part).name, (only as Part).key)}` : `multi-lock ${describeParts(parts)}`,
      attempt: async (bound) => {
        const won = await this.#tryReadWrite(parts, intent, bound)
        // A waiting writer that is refused claims its keys, so that new readers stay out until it is in.
        if (!won && intent) for (const part of writes) await this.#table.claimIntent(part, intent, intentMs, this.#clocks.nowMs(), bound)
        return won
      },
    }).catch(async (error: unknown) => {
      // A writer that gives up withdraws its claim before its wait settles: a reader asking right
      // after (the caller, say) is not refused for a claim on its way out.
      if (intent) {
        await Promise.all(writes.map((p) => this.#table.dropIntent(p, intent))).catch((failure: unknown) =>
          this.#log('warn', { err: failure }, `worker-locks: could not withdraw a waiting writer's claim on ${describeParts(writes)}; it lapses after ${intentMs} ms.`))
      }
      throw error
    }))
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
    const waitsEnded = this.#waits.stopAll(new LockStoreClosedError())
    await this.#held.stop()
    await waitsEnded
    await Promise.allSettled([...this.#inflight])
    await this.#wakeups.close()
    const records = [...this.#held.records(), ...this.#undeleted]
    for (const record of records) {
      this.#held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released: its store was closed.`)
      this.#undeleted.add(record)
    }
    if (records.length === 0) return
    await this.#table.releaseMany(records)
    for (const record of records) {
      this.#undeleted.delete(record)
      this.#wakeups.released(wakeIdOf(record))
      this.#emitReleased(record)
    }
  }

  /** `lock.release()`: resolves once this lock's token no longer holds the row. With `keepForMs`, the row stays, taken by no one, that much longer. */
  #release(record: HeldLock, keepForMs: number): Promise<void> {
    if (record.releasing) return record.releasing
    if (keepForMs > 0 && record.mode !== 'exclusive') {
      return Promise.reject(new TypeError('Lock#release option keepForMs is for plain locks; a read/write lock cannot be kept after its release.'))
    }
    // A lock already lost was counted when it was lost: its release only deletes a row that may
    // still carry its token, and reports nothing more.
    const held = record.state === 'held'
    this.#held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released.`)
    // A kept row stays, no longer ours, until keepForMs from now: nobody is woken, since nobody can
    // take it before then. If keeping fails, the row keeps our token and lease, so it stays taken
    // at least as long: close() must not delete it as it does rows whose delete failed.
    const releasing = keepForMs > 0
      ? this.#table.keep(record, randomUUID(), keepForMs, this.#clocks.nowMs()).then(() => { if (held) this.#emitReleased(record) })
      : this.#table.release(record).then((released) => {
        this.#undeleted.delete(record)
        if (held) this.#emitReleased(record)
        if (released) this.#wakeups.released(wakeIdOf(record))
      }, (error: unknown) => {
        this.#undeleted.add(record)
        throw error
      })
    record.releasing = releasing.catch((error: unknown) => {
      record.releasing = undefined // a later release() tries again
      throw error
    })
    return this.#track(record.releasing)
  }

  #emitReleased(record: HeldLock): void {
    this.#events.emit('released', { name: record.name, key: record.key, heldMs: this.#clocks.monotonicNow() - record.acquiredAt })
  }

  async #isStillValid(record: HeldLock): Promise<boolean> {
    return record.state === 'held' && await this.#table.status(record, this.#clocks.nowMs()) === 'valid'
  }

  /** Keeps `work` for `close()` to wait for. */
  #track<T>(work: Promise<T>): Promise<T> {
    const settled = work.then(() => undefined, () => undefined)
    this.#inflight.add(settled)
    void settled.then(() => this.#inflight.delete(settled))
    return work
  }
}
