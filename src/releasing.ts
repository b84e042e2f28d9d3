// Giving locks up: a release deletes the row (token-guarded), or, when a waiter of the same store
// is asleep, hands the row to it in one statement; a row whose delete failed is tried again by
// close(), which releases everything the store holds in one statement per 10,000 rows.
import { randomUUID } from 'node:crypto'
import type { RowIdentity, ServerFacts } from '../dialects/index.js'
import type { Acquisition } from './acquisition.js'
import { describeLock, type HeldLock } from './held-locks.js'
import { announceReleaseToAll } from './release-bus.js'
import { databaseCall, readWriteKeyId, type LockRef, type StoreContext } from './store-context.js'

// A release hands a lock straight to a waiter of the same store at most this many times in a
// row; the next release frees it, so that waiters in other processes get their chance too.
const MAX_HAND_OVERS_IN_A_ROW = 8

export class Releasing {
  readonly #ctx: StoreContext
  readonly #acquisition: () => Acquisition
  readonly #facts: () => ServerFacts | undefined
  // Released by the caller, but the delete failed: close() tries these rows again.
  readonly #undeleted = new Set<HeldLock>()

  /** @param facts the server's facts once the store has asked, for the hand-over statement */
  constructor(ctx: StoreContext, acquisition: () => Acquisition, facts: () => ServerFacts | undefined) {
    this.#ctx = ctx
    this.#acquisition = acquisition
    this.#facts = facts
  }

  /**
   * `lock.release()`: resolves once this lock's token no longer holds the row. With `keepForMs`,
   * the row stays, taken by no one, for that much longer.
   */
  release(record: HeldLock, keepForMs = 0): Promise<void> {
    if (record.releasing) return record.releasing
    if (keepForMs > 0 && record.mode !== 'exclusive') {
      return Promise.reject(new TypeError('Lock#release option keepForMs is for plain locks; a read/write lock cannot be kept after its release.'))
    }
    // A lock already lost was counted when it was lost: its release only deletes a row that may
    // still carry its token, and reports nothing more.
    const held = record.state === 'held'
    this.#ctx.held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released.`)
    const facts = this.#facts()
    const releasing = keepForMs > 0
      ? this.#keep(record, held, keepForMs)
      : facts && held && record.mode === 'exclusive' && record.handOvers < MAX_HAND_OVERS_IN_A_ROW && this.#acquisition().canTake(record.id)
        ? this.#handOver(record, facts)
        : this.#delete(record, held)
    record.releasing = releasing
    this.#ctx.track(releasing) // close() waits for deletes already under way
    return releasing
  }

  /** Deletes a row just won but not taken on, and wakes whoever waits for it; failures are logged. */
  async giveUp(lock: LockRef, row: RowIdentity): Promise<void> {
    const ctx = this.#ctx
    const released = await ctx.table.release(row, ctx.coordination.wakesLine).catch((error: unknown) => {
      ctx.log('warn', { err: error, lockName: row.name, lockKey: row.key }, `worker-locks: could not release lock ${describeLock(row.name, row.key)} just won; it expires after ${ctx.lockTimeoutMs} ms.`)
      return false
    })
    if (released) ctx.coordination.released(lock)
  }

  /** The row of `record` is gone: wake this process's waiters for it (and, for a plain lock, other processes' where the database can). */
  #announce(record: HeldLock): void {
    if (record.mode === 'exclusive') this.#ctx.coordination.released(record)
    else announceReleaseToAll(this.#ctx.tableName, readWriteKeyId(record.name, record.key))
  }

  /** Releases every lock still held, and every row whose delete failed before (close()). */
  async releaseAll(): Promise<void> {
    const ctx = this.#ctx
    const records = [...ctx.held.records(), ...this.#undeleted]
    for (const record of records) {
      ctx.held.end(record, 'released', () => `worker-locks: lock ${describeLock(record.name, record.key)} was released: its store was closed.`)
      this.#undeleted.add(record)
    }
    if (records.length === 0) return
    const plain = records.filter((record) => record.mode === 'exclusive')
    const readWrite = records.filter((record) => record.mode !== 'exclusive')
    await databaseCall(ctx, () => `release ${records.length} lock(s) while closing; they expire after ${ctx.lockTimeoutMs} ms`, async () => {
      if (plain.length > 0) await ctx.table.releaseMany(plain)
      if (readWrite.length > 0) await ctx.holders.releaseMany(readWrite)
    })
    for (const record of records) {
      this.#undeleted.delete(record)
      this.#announce(record)
      ctx.events.emit('released', { name: record.name, key: record.key, heldMs: ctx.monotonicNow() - record.acquiredAt })
    }
  }

  /** Deletes `record`'s row if it still carries its token; `held`: whether to report a release. */
  #delete(record: HeldLock, held: boolean): Promise<void> {
    const ctx = this.#ctx
    const table = record.mode === 'exclusive' ? ctx.table : ctx.holders
    return databaseCall(ctx, () => `release lock ${describeLock(record.name, record.key)}`, () => table.release(record, ctx.coordination.wakesLine))
      .then((released) => {
        if (held) this.#released(record)
        if (released) this.#announce(record)
      }, (error: unknown) => {
        record.releasing = undefined
        this.#undeleted.add(record)
        throw error
      })
  }

  // The row stays, no longer ours, until `keepForMs` from now: nobody is woken, since nobody can
  // take it before then. If the statement fails the row keeps our token and lease, so the lock
  // stays taken until that lease ends: close() does not delete it as it does undeleted rows.
  #keep(record: HeldLock, held: boolean, keepForMs: number): Promise<void> {
    const ctx = this.#ctx
    return databaseCall(ctx, () => `keep lock ${describeLock(record.name, record.key)} for ${keepForMs} ms after its release`,
      () => ctx.table.keep(record, randomUUID(), keepForMs, ctx.nowMs()))
      .then(() => { if (held) this.#released(record) }, (error: unknown) => {
        record.releasing = undefined
        throw error
      })
  }

  // This store's first waiter for the same lock is asleep: it takes the row over in one statement
  // (a new token and fence) instead of a delete and an insert, and nobody else sees the lock free.
  // Nothing crosses a process or a channel: the waiter is told in memory.
  #handOver(record: HeldLock, facts: ServerFacts): Promise<void> {
    const ctx = this.#ctx
    const { name, key } = record
    const token = randomUUID()
    const sentAt = ctx.monotonicNow()
    const written = databaseCall(ctx, () => `hand lock ${describeLock(name, key)} over to its next waiter`,
      () => ctx.table.handOver(record, token, facts, ctx.nowMs()))
    // Registered first, so that 'released' is emitted before the waiter's 'acquired'. If the
    // hand-over failed (a deadlock on MySQL, a lost reply), the row carries one token or the
    // other: delete both, and the release succeeds or fails as a plain one would.
    const releasing = written.then(
      () => this.#released(record),
      () => ctx.table.release({ name, key, token }, ctx.coordination.wakesLine)
        .catch(() => false)
        .then(() => this.#delete(record, true)),
    )
    this.#acquisition().take(record, token, sentAt, record.handOvers + 1, written)
    return releasing
  }

  #released(record: HeldLock): void {
    this.#undeleted.delete(record)
    this.#ctx.events.emit('released', { name: record.name, key: record.key, heldMs: this.#ctx.monotonicNow() - record.acquiredAt })
  }
}
