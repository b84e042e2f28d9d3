// Waking waiters across processes where the database can announce releases (PostgreSQL's
// LISTEN/NOTIFY): this store listens while it has waiters, keeps its places in the waiting line
// (a release then wakes the store of another process first in it), and passes on a wake that
// reached it when nobody here waits any more. On top of the waking in this process (local.ts).
import { randomBytes } from 'node:crypto'
import type { Knex } from 'knex'
import type { LineRequest, ReleaseNotifications, Strategy } from '../../dialects/index.js'
import type { Clock } from '../clock.js'
import { LinePlaces } from '../line-places.js'
import type { LogLevel } from '../logger.js'
import { ReleaseListener } from '../release-listener.js'
import { announceRelease } from '../release-bus.js'
import { lockId, readWriteKeyId, type LockRef } from '../store-context.js'
import { LocalCoordination } from './local.js'

// How long the listening connection stays open after the last waiter left. Opening one costs
// PostgreSQL a new backend process; a service that waits on locks now and then keeps one
// connection instead of opening one per wait.
const LISTENER_LINGER_MS = 10_000

export interface PostgresCoordinationOptions {
  readonly knex: Knex
  readonly notifications: ReleaseNotifications
  readonly tableName: string
  readonly timers: Clock
  readonly monotonicNow: () => number
  /** The longest backoff of the store's waiters: a place in line must outlast it. */
  readonly maxBackoffMs: number
  readonly log: (level: LogLevel, details: object, message: string) => void
  /** Wakes the store's first waiter for a lock; `false` if nobody waits for it. */
  readonly wake: (id: string) => boolean
}

export class PostgresCoordination extends LocalCoordination {
  readonly #o: PostgresCoordinationOptions
  // This store's name in the waiting line, and the channel that wakes addressed to it arrive on.
  readonly #waiter = randomBytes(8).toString('hex')
  readonly #placeLastsMs: number
  readonly #listener: ReleaseListener
  readonly #line: LinePlaces | undefined
  // How the line is kept: by the waiters' acquiring statements, or by statements of its own.
  #lineInStatement = false
  // Locks for which a wake addressed to this store (first in line) woke a waiter that has not tried yet.
  readonly #addressed = new Set<string>()

  constructor(o: PostgresCoordinationOptions) {
    super(o.tableName, o.wake)
    this.#o = o
    // A place lasts three times the longest backoff: a waiter first in line is refused (and
    // joins again) at least every maxBackoffMs, and the place of a store that left without
    // saying so (a failed leave) lapses soon after. (One whose listener is gone is skipped at once.)
    this.#placeLastsMs = 3 * o.maxBackoffMs + 5_000
    const line = o.notifications.line
    this.#line = line && new LinePlaces(o.knex, line, o.tableName, this.#waiter, this.#placeLastsMs, o.monotonicNow, o.log)
    this.#listener = new ReleaseListener(o.knex, o.notifications, o.tableName, this.#waiter,
      (name, key, addressed, readWrite) => {
        // A read/write holder left: wake this store's waits for that key (no line: readers may all get in).
        if (readWrite) this.wake(readWriteKeyId(name, key))
        else this.#heard({ id: lockId(name, key), name, key }, addressed)
      }, o.timers, o.log)
  }

  override get wakesLine(): boolean {
    return this.#line !== undefined
  }

  override planned(strategy: Strategy): void {
    this.#lineInStatement = strategy === 'native' && this.#o.notifications.line?.inNativeAcquire === true
  }

  // Hear of other processes' releases only while someone waits (and for a while after).
  override occupied(occupied: boolean): void {
    if (occupied) this.#listener.start()
    else this.#listener.idle(LISTENER_LINGER_MS)
  }

  override waitingEnded(lock: LockRef): void {
    super.waitingEnded(lock)
    this.#line?.left(lock.id)
    // The last waiter gave up after a wake addressed to this store, before trying: the turn
    // must not be lost.
    if (this.#addressed.delete(lock.id)) this.#passOn(lock)
  }

  override beforeAttempt(lock: LockRef, alone: boolean): Promise<LineRequest | undefined> | undefined {
    this.#addressed.delete(lock.id) // the turn it was given is being used
    if (!this.#lineInStatement || !this.#line) return undefined
    const request = { waiter: this.#waiter, expiresInMs: this.#placeLastsMs, leaveOnWin: alone }
    // Statements of the line queued for this lock run first, so that none overtakes the attempt.
    const queued = this.#line.beforeAttempt(lock.id)
    return queued ? queued.then(() => request) : Promise.resolve(request)
  }

  override afterAttempt(lock: LockRef, line: LineRequest | undefined, won: boolean): void {
    if (won) {
      if (line?.leaveOnWin) this.#line?.leftByStatement(lock.id)
    } else if (line) {
      this.#line?.joinedByAttempt(lock.id, lock.name, lock.key)
    } else {
      this.#line?.refused(lock.id, lock.name, lock.key)
    }
  }

  // A lock won by an attempt already under way when the turn arrived used that turn too.
  override waitEnded(lock: LockRef, acquired: boolean): void {
    if (acquired) this.#addressed.delete(lock.id)
  }

  override async close(): Promise<void> {
    await this.#line?.settled()
    await this.#listener.stop()
  }

  // What the listener heard only wakes a waiter, which then asks the row like any attempt:
  // whatever a notification says (anyone may send one) grants nothing.
  #heard(lock: LockRef, addressed: boolean): void {
    if (this.wake(lock.id)) {
      if (addressed) this.#addressed.add(lock.id)
    } else if (addressed && this.#line?.strayTurn(lock.id, lock.name, lock.key)) {
      // This store's turn in line, but nobody here waits any more: the next in line gets it. (A
      // wake for a lock the store was not in line for lately sends nothing: a forged or replayed
      // NOTIFY must not make the store write or notify in its turn.)
      this.#passOn(lock)
    }
  }

  // Passes a wake that reached this store on: to the next store of this process waiting for the
  // lock, and to every other listening process.
  #passOn(lock: LockRef): void {
    announceRelease(this.tableName, lock.id)
    void this.#o.notifications.notifyReleased(this.#o.knex, this.tableName, lock.name, lock.key).catch((error: unknown) =>
      this.#o.log('debug', { err: error, table: this.tableName }, 'worker-locks: could not pass a release on; waiters poll meanwhile.'))
  }
}
