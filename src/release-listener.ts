import type { Knex } from 'knex'
import type { ReleaseHeard, ReleaseNotifications, ReleaseSubscription } from '../dialects/index.js'
import { backoffDelay, DEFAULT_BACKOFF } from './backoff.js'
import type { Clock, TimerHandle } from './clock.js'
import type { LogLevel } from './logger.js'

/**
 * Keeps one connection listening for releases announced by other processes while a store has
 * waiters, and for a while after the last one left (see {@link idle}). If the connection drops
 * it reconnects at once, then with backoff; meanwhile waiters simply keep polling, so nothing
 * depends on it being up. What it hears only wakes waiters; anything unreadable is logged at
 * debug level and dropped.
 */
export class ReleaseListener {
  readonly #knex: Knex
  readonly #notifications: ReleaseNotifications
  readonly #table: string
  readonly #waiter: string
  readonly #onRelease: ReleaseHeard
  readonly #timers: Clock
  readonly #log: (level: LogLevel, details: object, message: string) => void
  #running: Promise<void> | undefined
  // Ends the current wait (for the connection to drop, or for the retry delay) early.
  #interrupt: (() => void) | undefined
  #wanted = false
  // The pending stop of idle(), if any; while it is pending the connection does not keep the process alive.
  #idleTimer: TimerHandle | undefined
  #subscription: ReleaseSubscription | undefined
  // Callers of stop() waiting for the connection to close; start() calls their stop off.
  #stopping: Array<() => void> = []

  constructor(
    knex: Knex, notifications: ReleaseNotifications, table: string, waiter: string, onRelease: ReleaseHeard,
    timers: Clock, log: (level: LogLevel, details: object, message: string) => void,
  ) {
    this.#knex = knex
    this.#notifications = notifications
    this.#table = table
    this.#waiter = waiter
    this.#onRelease = onRelease
    this.#timers = timers
    this.#log = log
  }

  /** Starts listening in the background; if already listening (or lingering), keeps the connection. */
  start(): void {
    this.#cancelIdle()
    this.#subscription?.keepProcessAlive(true)
    this.#wanted = true
    for (const resolve of this.#stopping.splice(0)) resolve()
    this.#running ??= this.#run().finally(() => {
      this.#running = undefined
      for (const resolve of this.#stopping.splice(0)) resolve()
      // A start() between the loop's last look at #wanted and here found it still running.
      if (this.#wanted) this.start()
    })
  }

  /**
   * Stops listening after `lingerMs` unless `start()` is called first. A process that waits
   * again soon keeps its connection (and hears releases from the first moment) instead of
   * opening a new one, which costs the server a new backend, every time. Meanwhile the
   * connection does not keep the process running.
   */
  idle(lingerMs: number): void {
    this.#cancelIdle()
    if (!this.#wanted) return
    this.#subscription?.keepProcessAlive(false)
    this.#idleTimer = this.#timers.setTimeout(() => {
      this.#idleTimer = undefined
      return this.stop()
    }, lingerMs)
  }

  /** Stops listening and closes the connection; resolves once it is closed, or once `start()` called the stop off. */
  stop(): Promise<void> {
    this.#cancelIdle()
    this.#wanted = false
    this.#interrupt?.()
    if (!this.#running) return Promise.resolve()
    return new Promise((resolve) => this.#stopping.push(resolve))
  }

  #cancelIdle(): void {
    if (this.#idleTimer === undefined) return
    this.#timers.clearTimeout(this.#idleTimer)
    this.#idleTimer = undefined
  }

  async #run(): Promise<void> {
    for (let failures = 0; this.#wanted;) {
      if (await this.#listenUntilDropped()) failures = 0
      if (!this.#wanted) break
      // The first reconnect is immediate; repeated failures back off like waiters do.
      if (failures++ > 0) await this.#pause(backoffDelay(DEFAULT_BACKOFF, failures - 2))
    }
  }

  /** One listening connection, until it drops or stop() is called; resolves whether it was up while wanted. */
  async #listenUntilDropped(): Promise<boolean> {
    let dropped: unknown
    let wake: (() => void) | undefined
    let subscription: ReleaseSubscription
    try {
      const ignored = (why: string): void => this.#log('debug', { table: this.#table }, `worker-locks: ignored ${why}.`)
      subscription = await this.#notifications.listen(this.#knex, this.#table, this.#waiter, this.#onRelease, ignored, (error) => {
        dropped = error ?? new Error('the listening connection closed')
        wake?.()
      })
    } catch (error) {
      this.#log(this.#wanted && this.#idleTimer === undefined ? 'warn' : 'debug', { err: error, table: this.#table },
        'worker-locks: could not listen for releases; waiters poll meanwhile.')
      return false
    }
    this.#subscription = subscription
    subscription.keepProcessAlive(this.#idleTimer === undefined)
    const up = this.#wanted
    if (up) this.#log('debug', { table: this.#table }, `worker-locks: listening for releases in table ${JSON.stringify(this.#table)}.`)
    // Wakes when the connection drops or stop() is called; a start() that follows a stop()
    // before this loop noticed finds the connection still up and keeps it.
    while (this.#wanted && dropped === undefined) {
      await new Promise<void>((resolve) => {
        wake = resolve
        this.#interrupt = resolve
      })
    }
    this.#interrupt = undefined
    this.#subscription = undefined
    if (dropped !== undefined && this.#wanted) {
      // Worth a warning only while someone waits (not while the connection merely lingers).
      this.#log(this.#idleTimer === undefined ? 'warn' : 'debug', { err: dropped, table: this.#table },
        'worker-locks: the connection listening for releases dropped; waiters poll until it is back.')
    }
    await subscription.close().catch(() => undefined)
    return up
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = this.#timers.setTimeout(() => {
        this.#interrupt = undefined
        resolve()
      }, ms)
      this.#interrupt = () => {
        this.#timers.clearTimeout(timer)
        resolve()
      }
    })
  }
}
