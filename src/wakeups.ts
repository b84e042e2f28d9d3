// How a wait learns that a lock may be free: a release by any store of this process (on the same
// table name) wakes it in memory; on a database that announces releases (PostgreSQL's
// LISTEN/NOTIFY) so does a release in another process, heard on a connection of its own once a
// probe sent through the pool has come back on it. It assumes the listening connection is a
// server session of its own: through a pooler (PgBouncer in transaction mode) LISTEN is accepted
// and nothing ever arrives, so a pooled connection never listens, and a deaf one is given up;
// either way the store says so once and its waiters poll. What is heard only wakes a waiter,
// which then asks the row: it never grants. Where nothing is announced, a release in another
// process is seen by looking at the rows waited for (release-watch.ts).
import type { Knex } from 'knex'
import type { Heard, ReleaseNotifications, ReleaseSubscription } from '../dialects/index.js'
import { backoffDelay, DEFAULT_BACKOFF } from './backoff.js'
import type { Clock, TimerHandle } from './clock.js'
import type { Log } from './logger.js'
import { lockId, readWriteId } from './lock-ids.js'
import { ReleaseWatch, type Look } from './release-watch.js'

// How long the listening connection stays open after the last wait ended: a service that waits
// now and then keeps one connection (a server backend) instead of opening one per wait.
const LINGER_MS = 10_000
// How long a probe may take to come back before the connection is judged deaf (nothing waits on
// it: waiters poll meanwhile), and how long a store then polls before it probes again.
const PROBE_MS = 5_000
const DEAF_MS = 600_000

// Every wait of this process, by table name and lock id. Stores on different databases that share
// a table name may wake each other once too often: one wasted attempt.
const waiting = new Map<string, Set<() => void>>()

type Ending = 'dropped' | 'deaf' | 'stopped' | 'failed'

export interface WakeupsOptions {
  readonly knex: Knex
  readonly table: string
  /** How the database announces releases, where it can. */
  readonly notifications: ReleaseNotifications | undefined
  /** Reads the live holders of waited locks: how releases in other processes are seen without announcements. */
  readonly look: Look
  readonly timers: Clock
  readonly monotonicNow: () => number
  readonly log: Log
}

export class Wakeups {
  readonly #knex: Knex
  readonly #table: string
  readonly #notifications: ReleaseNotifications | undefined
  readonly #timers: Clock
  readonly #monotonicNow: () => number
  readonly #log: Log
  readonly #watch: ReleaseWatch
  // This store's waits by lock id: what a release heard from another process, or seen by a look, wakes.
  readonly #mine = new Map<string, Set<() => void>>()
  #waits = 0
  #youngestSince = 0
  #hearing = false
  #wanted = false
  #running: Promise<void> | undefined
  #linger: TimerHandle | undefined
  #stop: (() => void) | undefined
  #deafUntil: number | undefined

  constructor(options: WakeupsOptions) {
    this.#knex = options.knex
    this.#table = options.table
    this.#notifications = options.notifications
    this.#timers = options.timers
    this.#monotonicNow = options.monotonicNow
    this.#log = options.log
    this.#watch = new ReleaseWatch({
      look: options.look, timers: options.timers, monotonicNow: options.monotonicNow, log: options.log,
      waited: () => ({ ids: [...this.#mine.keys()], youngestSince: this.#youngestSince }),
      wake: (id) => { for (const wake of [...this.#mine.get(id) ?? []]) wake() },
      hearing: () => this.#hearing,
    })
  }

  /** Calls `wake` whenever a release may have freed lock `id`, until the returned function is called. */
  subscribe(id: string, wake: () => void): () => void {
    const entries = [[waiting, `${this.#table}\0${id}`], [this.#mine, id]] as const
    for (const [map, key] of entries) {
      let set = map.get(key)
      if (!set) map.set(key, (set = new Set()))
      set.add(wake)
    }
    this.#youngestSince = this.#monotonicNow()
    if (this.#waits++ === 0) {
      this.#listen()
      this.#watch.start()
    }
    return () => {
      for (const [map, key] of entries) {
        const set = map.get(key)
        if (set?.delete(wake) && set.size === 0) map.delete(key)
      }
      if (--this.#waits === 0) {
        void this.#watch.stop()
        this.#idle()
      }
    }
  }

  /** A release of lock `id` by this process has committed: wake every wait of the process for it. */
  released(id: string): void {
    for (const wake of [...waiting.get(`${this.#table}\0${id}`) ?? []]) wake()
  }

  /** Stops listening; resolves once the connection is closed. */
  async close(): Promise<void> {
    this.#cancelLinger()
    this.#wanted = false
    this.#stop?.()
    await Promise.all([this.#running, this.#watch.stop()])
  }

  #listen(): void {
    this.#cancelLinger()
    if (!this.#notifications || (this.#deafUntil !== undefined && performance.now() < this.#deafUntil)) return
    this.#wanted = true
    this.#running ??= this.#run().finally(() => { this.#running = undefined })
  }

  #idle(): void {
    if (!this.#running) return
    this.#cancelLinger()
    this.#linger = this.#timers.setTimeout(() => {
      this.#linger = undefined
      return this.close()
    }, LINGER_MS)
  }

  #cancelLinger(): void {
    if (this.#linger !== undefined) this.#timers.clearTimeout(this.#linger)
    this.#linger = undefined
  }

  // Listens until stopped; after a drop it reconnects at once, then with backoff. A deaf
  // connection ends it for DEAF_MS.
  async #run(): Promise<void> {
    for (let failures = 0; this.#wanted;) {
      const ending = await this.#session()
      if (ending === 'deaf' || ending === 'stopped') return
      if (ending === 'dropped') failures = 0
      if (failures++ > 0 && this.#wanted) {
        await new Promise<void>((resolve) => {
          const timer = this.#timers.setTimeout(resolve, backoffDelay(DEFAULT_BACKOFF, failures - 2))
          this.#stop = () => { this.#timers.clearTimeout(timer); resolve() }
        })
      }
    }
  }

  /** One listening connection, from its probe until it drops, turns out deaf, or is stopped. */
  async #session(): Promise<Ending> {
    const notifications = this.#notifications as ReleaseNotifications
    let settle!: (ending: Ending | 'heard') => void
    const next = (): Promise<Ending | 'heard'> => new Promise((resolve) => { settle = resolve })
    let verdict = next()
    let probing = true
    this.#stop = () => settle('stopped')
    const heard = (what: Heard): void => {
      if (what.kind === 'probe') {
        if (probing) settle('heard')
      } else if (what.kind === 'release') {
        for (const wake of [...this.#mine.get(what.readWrite ? readWriteId(what.name, what.key) : lockId(what.name, what.key)) ?? []]) wake()
      } else {
        this.#log('debug', { table: this.#table }, `worker-locks: ignored ${what.why}.`)
      }
    }
    let dropped: unknown
    let subscription: ReleaseSubscription | undefined
    try {
      subscription = await notifications.subscribe(this.#knex, this.#table, heard, (error) => {
        dropped = error ?? new Error('the listening connection closed')
        settle('dropped')
      })
    } catch (error) {
      this.#log('warn', { err: error, table: this.#table }, 'worker-locks: could not listen for releases; waiters poll meanwhile.')
      return 'failed'
    }
    if (!subscription) return this.#deaf('its connections go through a pooler')
    try {
      if (!this.#wanted) return 'stopped'
      const timer = setTimeout(() => settle('deaf'), PROBE_MS).unref()
      await subscription.probe().catch((error: unknown) => {
        dropped = error
        settle('failed')
      })
      let ending = await verdict
      probing = false
      clearTimeout(timer)
      if (ending === 'deaf') return this.#deaf(`a probe sent through the pool did not reach the listening connection within ${PROBE_MS} ms`)
      if (ending === 'heard') {
        this.#log('debug', { table: this.#table }, `worker-locks: listening for releases in table ${JSON.stringify(this.#table)}.`)
        verdict = next()
        this.#hearing = true
        try {
          ending = dropped !== undefined ? 'dropped' : this.#wanted ? await verdict : 'stopped'
        } finally {
          this.#hearing = false
        }
      }
      if (ending !== 'stopped' && this.#wanted) {
        this.#log('warn', { err: dropped, table: this.#table }, 'worker-locks: the connection listening for releases dropped; waiters poll until it is back.')
      }
      return ending === 'heard' ? 'stopped' : ending
    } finally {
      this.#stop = undefined
      await subscription.close().catch(() => undefined)
    }
  }

  /** Notifications do not reach this store (`why`): says so the first time, and polls for DEAF_MS before it tries again. */
  #deaf(why: string): Ending {
    if (this.#deafUntil === undefined) {
      this.#log('warn', { table: this.#table }, `worker-locks: releases announced on table ${JSON.stringify(this.#table)} are not delivered to this process (${why}); its waiters poll for releases by other processes.`)
    }
    this.#deafUntil = performance.now() + DEAF_MS
    return 'deaf'
  }
}
