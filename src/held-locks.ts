import type { StoreClocks, TimerHandle } from './clock.js'
import type { LockLossReason } from './errors.js'
import type { LockEvents } from './events.js'
import { lossError, type HeldLock, type Lock } from './lock.js'
import type { LockTable } from './lock-table.js'
import type { Log, LogLevel } from './logger.js'

export interface HeldLocksOptions {
  readonly table: LockTable
  readonly clocks: StoreClocks
  readonly lockTimeoutMs: number
  readonly renewalIntervalMs: number
  readonly log: Log
  readonly events: LockEvents
}

export const describeLock = (name: string, key: string): string => `${JSON.stringify(name)} (key ${JSON.stringify(key)})`

/**
 * The locks a store holds, and the one timer that renews them all. Each tick renews every held
 * lock with a constant number of statements, learns from the same statements which locks were
 * lost, and aborts the signal of any lock whose row is gone or whose renewals have failed for
 * `lockTimeoutMs`. After a failure it ticks sooner (a quarter of the interval) until renewals
 * succeed again, and never later than the next lock's deadline.
 */
export class HeldLocks {
  readonly #o: HeldLocksOptions
  readonly #byId = new Map<string, HeldLock>()
  readonly #finalizer = new FinalizationRegistry<HeldLock>((record) => this.#leaked(record))
  #timer: TimerHandle | undefined
  #renewing: Promise<void> | undefined
  #failing = false
  #lastError: unknown
  #stopped = false

  constructor(options: HeldLocksOptions) {
    this.#o = options
  }

  /** Starts tracking a freshly acquired lock. */
  add(record: HeldLock, lock: Lock): void {
    this.#finalizer.register(lock, record, record)
    this.#byId.set(record.id, record)
    if (this.#timer === undefined) this.#schedule()
  }

  /** Whether a live lock with this id is held (a collected one is reported as leaked first). */
  holds(id: string): boolean {
    const record = this.#byId.get(id)
    if (record && record.ref?.deref() === undefined) this.#leaked(record)
    return this.#byId.has(id)
  }

  /** The live lock with this id, if one is held. */
  get(id: string): HeldLock | undefined {
    return this.holds(id) ? this.#byId.get(id) : undefined
  }

  /** Every lock currently held. */
  records(): HeldLock[] {
    return [...this.#byId.values()]
  }

  /** Ends a lock: stops tracking it and aborts its signal. A newer lock with the same id is untouched. */
  end(record: HeldLock, reason: LockLossReason, message: () => string, cause?: unknown, logLevel: LogLevel | null = reason === 'released' ? null : 'warn'): void {
    if (record.state !== 'held') return
    record.state = reason === 'released' ? 'released' : 'lost'
    record.loss = { reason, message, cause }
    if (this.#byId.get(record.id) === record) this.#byId.delete(record.id)
    this.#finalizer.unregister(record)
    // The timer is left to run out when the last lock ends: it finds nothing to renew, and a
    // store that takes and releases locks one after another would otherwise set and clear a
    // timer for every lock. (It is unref'd: it keeps no process alive.)
    const controller = record.controller?.deref()
    if (controller) controller.abort(lossError(record, record.loss))
    if (logLevel) this.#o.log(logLevel, { lockName: record.name, lockKey: record.key, reason }, message())
    if (reason !== 'released' && this.#o.events.has('lost')) {
      this.#o.events.emit('lost', { name: record.name, key: record.key, reason, heldMs: this.#o.clocks.monotonicNow() - record.acquiredAt })
    }
  }

  /** Stops the timer for good and waits for a renewal under way. */
  async stop(): Promise<void> {
    this.#stopped = true
    this.#clearTimer()
    await this.#renewing
  }

  #clearTimer(): void {
    if (this.#timer === undefined) return
    this.#o.clocks.timers.clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #schedule(): void {
    this.#clearTimer()
    if (this.#stopped || this.#byId.size === 0) return
    const interval = this.#o.renewalIntervalMs
    const base = this.#failing ? Math.max(1, Math.floor(interval / 4)) : interval
    let deadline = Infinity
    for (const record of this.#byId.values()) deadline = Math.min(deadline, record.renewedAt + this.#o.lockTimeoutMs)
    const delay = Math.max(0, Math.min(base, deadline - this.#o.clocks.monotonicNow()))
    this.#timer = this.#o.clocks.timers.setTimeout(() => this.#tick(), delay)
  }

  // Returns the renewal's promise so that a ManualClock can wait for it; never rejects. A tick
  // that finds a renewal still under way (a hung connection) only checks deadlines, so a lost
  // lock is reported on time and renewals never overlap.
  #tick(): Promise<void> {
    this.#timer = undefined
    this.#expireOverdue()
    this.#renewing ??= this.#renewAll().catch((error: unknown) => {
      this.#o.log('error', { err: error }, 'worker-locks: renewal tick failed unexpectedly; it will run again.')
    }).finally(() => {
      this.#renewing = undefined
      this.#schedule()
    })
    const renewing = this.#renewing
    this.#schedule()
    return renewing
  }

  #expireOverdue(): void {
    const now = this.#o.clocks.monotonicNow()
    for (const record of this.records()) {
      if (record.state === 'held' && now - record.renewedAt >= this.#o.lockTimeoutMs) {
        const last = this.#lastError instanceof Error ? ` (last error: ${this.#lastError.message})` : ''
        this.end(record, 'expired',
          () => `worker-locks: lock ${describeLock(record.name, record.key)} was lost: no renewal succeeded for ${this.#o.lockTimeoutMs} ms, so another worker may hold it now${last}.`,
          this.#lastError)
      }
    }
  }

  async #renewAll(): Promise<void> {
    const records = this.records().filter((record) => {
      if (record.ref?.deref() !== undefined) return record.state === 'held'
      this.#leaked(record)
      return false
    })
    if (records.length === 0) return
    const sentAt = this.#o.clocks.monotonicNow()
    let ours: Set<string>
    try {
      ours = await this.#o.table.renew(records, this.#o.clocks.nowMs())
    } catch (error) {
      this.#failing = true
      this.#lastError = error
      this.#o.log('warn', { err: error, locks: records.length },
        `worker-locks: renewing ${records.length} lock(s) failed; retrying in ${Math.max(1, Math.floor(this.#o.renewalIntervalMs / 4))} ms.`)
      this.#expireOverdue()
      return
    }
    this.#failing = false
    this.#lastError = undefined
    if (ours.size > 0) this.#o.events.emit('renewed', { count: ours.size, durationMs: this.#o.clocks.monotonicNow() - sentAt })
    for (const record of records) {
      if (ours.has(record.token)) record.renewedAt = Math.max(record.renewedAt, sentAt)
      else this.end(record, 'taken-over', () => `worker-locks: lock ${describeLock(record.name, record.key)} was lost: its row was deleted or taken over by another worker.`)
    }
  }

  #leaked(record: HeldLock): void {
    // Someone may still hold its signal: abort it, since nothing renews the lock any more.
    this.end(record, 'expired',
      () => `worker-locks: lock ${describeLock(record.name, record.key)} was garbage-collected without release(); it is no longer renewed and expires after ${this.#o.lockTimeoutMs} ms. Call release() or hold it with \`await using\`.`,
      undefined, 'error')
  }
}
