// One attempt to take a lock, from the call to the dialect's statement: a lock this store holds
// is checked first; otherwise the acquire statement decides, and a win becomes a Lock.
import { randomUUID } from 'node:crypto'
import { acquire, type RowIdentity } from '../dialects/index.js'
import { describeLock, type HeldLock } from './held-locks.js'
import { Lock, type LockOwner } from './lock.js'
import type { RowStatus } from './lock-table.js'
import { LockStoreClosedError } from './errors.js'
import { databaseCall, type LockRef, type ServerPlan, type StoreContext } from './store-context.js'
import type { WaitRoom } from './wait-room.js'

/** What an attempt needs besides the store's context. */
export interface AcquisitionParts {
  /** The server plan, asked of the server on first use. */
  readonly plan: () => ServerPlan | Promise<ServerPlan>
  /** What a Lock asks of its store (release, validity). */
  readonly owner: LockOwner
  /** Deletes a row just won but not taken on, and says so to waiters. */
  readonly giveUp: (lock: LockRef, row: RowIdentity) => Promise<void>
  readonly waiting: () => WaitRoom
}

/** An attempt made by a waiter: `alone`, the only one of its store for the lock; `first`, its first attempt. */
export interface WaiterAttempt {
  readonly alone: boolean
  readonly first: boolean
}

export class Acquisition {
  readonly #ctx: StoreContext
  readonly #parts: AcquisitionParts
  // Locks this store is acquiring (or being handed) now: another attempt for one is refused
  // without SQL, as if someone else held it.
  readonly #acquiring = new Set<string>()

  constructor(ctx: StoreContext, parts: AcquisitionParts) {
    this.#ctx = ctx
    this.#parts = parts
  }

  /**
   * One attempt for `lock` (validated, store open); `waiter` when a waiter of this store makes
   * it. Resolves the Lock, or `null`.
   */
  async attempt(lock: LockRef, waiter: WaiterAttempt | undefined): Promise<Lock | null> {
    if (this.#acquiring.has(lock.id)) return null
    const held = this.#ctx.held.get(lock.id)
    if (held && waiter?.first) {
      // A waiter's first attempt for a lock its own store holds sends nothing: that lock's release
      // hands it over or wakes the waiter. Its later attempts (at the backoff's pace, or woken by
      // a notification) check the row, in case the lock was lost meanwhile.
      this.#ctx.events.emit('refused', { name: lock.name, key: lock.key, durationMs: 0 })
      return null
    }
    this.#acquiring.add(lock.id)
    const attempt = held ? this.#recheck(held, waiter) : this.#acquire(lock, waiter)
    this.#ctx.track(attempt) // close() waits for attempts under way
    try {
      return await attempt
    } finally {
      this.#acquiring.delete(lock.id)
    }
  }

  /** Whether this store's first waiter for `id` could take a lock handed to it now (see `take`). */
  canTake(id: string): boolean {
    return !this.#ctx.isClosed() && !this.#acquiring.has(id) && !this.#ctx.held.holds(id) && this.#parts.waiting().canHandOver(id)
  }

  /**
   * Gives this store's first waiter for `lock` (see `canTake`) the row a release of this store is
   * writing for it as the acquisition `token` (a statement sent at `sentAt`): once `written`
   * resolves the new fence, the waiter takes the lock with no statement of its own, or tries on
   * its own if it resolves `null` or rejects.
   */
  take(lock: LockRef, token: string, sentAt: number, handOvers: number, written: Promise<bigint | null>): void {
    this.#acquiring.add(lock.id)
    const claim = written
      .then((fence) => (fence === null ? null : this.won(lock, token, fence, sentAt, handOvers)), () => null)
      .finally(() => this.#acquiring.delete(lock.id))
    this.#ctx.track(claim) // close() waits for a lock handed over as it closes to be deleted again
    this.#parts.waiting().handOver(lock.id, claim)
  }

  async #acquire(lock: LockRef, waiter: WaiterAttempt | undefined): Promise<Lock | null> {
    const ctx = this.#ctx
    const { strategy, facts } = await this.#parts.plan()
    const line = waiter ? await ctx.coordination.beforeAttempt(lock, waiter.alone) : undefined
    const token = randomUUID()
    const request = {
      table: ctx.tableName, name: lock.name, key: lock.key, token,
      instanceName: ctx.instanceName, leaseMs: ctx.lockTimeoutMs, nowMs: ctx.nowMs(), line,
    }
    const sentAt = ctx.monotonicNow()
    const fence = await databaseCall(ctx, () => `acquire lock ${describeLock(lock.name, lock.key)}`, () =>
      acquire(ctx.knex, ctx.dialect, facts, strategy, request))
    if (waiter) ctx.coordination.afterAttempt(lock, line, fence !== null)
    if (fence === null) {
      ctx.events.emit('refused', { name: lock.name, key: lock.key, durationMs: ctx.monotonicNow() - sentAt })
      return null
    }
    return this.won(lock, token, fence, sentAt, 0)
  }

  /**
   * An attempt for a lock this store holds (as `held`): still this store's if its row carries
   * its token within its lease (`null`, as for any lock held by someone). If not, that Lock is
   * lost from now on, and the attempt goes to the database.
   */
  async #recheck(held: HeldLock, waiter: WaiterAttempt | undefined): Promise<Lock | null> {
    const ctx = this.#ctx
    const sentAt = ctx.monotonicNow()
    const status: RowStatus = await databaseCall(ctx, () => `check lock ${describeLock(held.name, held.key)}`,
      () => ctx.table.status(held, ctx.nowMs()))
    if (status === 'valid' && held.state === 'held') {
      ctx.events.emit('refused', { name: held.name, key: held.key, durationMs: ctx.monotonicNow() - sentAt })
      return null
    }
    ctx.held.end(held, status === 'stale' ? 'expired' : 'taken-over', () => status === 'stale'
      ? `worker-locks: lock ${describeLock(held.name, held.key)} was lost: its lease ran out before a renewal, so another worker may hold it now.`
      : `worker-locks: lock ${describeLock(held.name, held.key)} was lost: its row was deleted or taken over by another worker.`)
    return this.#acquire(held, waiter)
  }

  /**
   * Takes on the row this store has just written with `token` (a statement sent at `sentAt`),
   * unless the write came too late to trust or the store is closing: then it deletes the row.
   */
  async won(lock: LockRef, token: string, fence: bigint, sentAt: number, handOvers: number): Promise<Lock | null> {
    const ctx = this.#ctx
    const { id, name, key } = lock
    const durationMs = ctx.monotonicNow() - sentAt
    if (durationMs >= ctx.lockTimeoutMs) {
      // The statement took longer than the lease: the row may already look stale to others.
      await this.#parts.giveUp(lock, { name, key, token })
      ctx.log('warn', { lockName: name, lockKey: key }, `worker-locks: acquiring lock ${describeLock(name, key)} took longer than lockTimeoutMs; it was given up.`)
      return null
    }
    if (ctx.isClosed()) {
      await this.#parts.giveUp(lock, { name, key, token })
      throw new LockStoreClosedError()
    }
    const record: HeldLock = {
      id, mode: 'exclusive', name, key, token, fence,
      controller: undefined,
      loss: undefined,
      state: 'held',
      ref: undefined as unknown as WeakRef<Lock>, // set below, once the Lock exists
      releasing: undefined,
      renewedAt: sentAt,
      acquiredAt: sentAt,
      handOvers,
    }
    const made = new Lock(this.#parts.owner, record)
    ;(record as { ref: WeakRef<Lock> }).ref = new WeakRef(made)
    ctx.held.add(record, made)
    ctx.events.emit('acquired', { name, key, fence, durationMs })
    return made
  }
}
