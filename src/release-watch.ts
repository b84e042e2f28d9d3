// How a waiting store learns of a release by another process when nothing announces it (SQLite,
// MySQL/MariaDB, PostgreSQL behind a pooler): it looks. While the store has waits, one statement
// per interval reads the live holders of every lock it waits for, and a lock whose holder left
// (the row gone, or its lease run out) wakes that lock's waits, which then try the row. Looking
// often is cheap while a wait is young and would be wasteful for waits that last minutes, so the
// interval grows with the age of the youngest wait. What a look sees only wakes: it never grants.
import type { Clock, TimerHandle } from './clock.js'
import { isReadWriteId } from './lock-ids.js'
import type { Log } from './logger.js'

/** The shortest and longest interval between looks, and how it grows: a twentieth of the youngest wait's age. */
export const LOOK_MIN_MS = 50
export const LOOK_MAX_MS = 1_000
const AGE_PER_INTERVAL = 20

/** A live holder of a lock (a plain lock's is a writer), or the intent of a writer waiting for a read/write lock, which keeps new readers out. */
export type HolderKind = 'read' | 'write' | 'intent'

/** The live holders of one lock, and the intents on it: token → kind. */
export type Holders = ReadonlyMap<string, HolderKind>

/** Reads the live holders of each waited lock id (an id with none is absent or empty). */
export type Look = (ids: readonly string[], signal: AbortSignal) => Promise<ReadonlyMap<string, Holders>>

export interface ReleaseWatchOptions {
  readonly look: Look
  readonly timers: Clock
  readonly monotonicNow: () => number
  readonly log: Log
  /** The lock ids waited for now, and when the youngest of those waits began (monotonic ms). */
  readonly waited: () => { ids: readonly string[]; youngestSince: number }
  /** Wakes the waits of `id`. */
  readonly wake: (id: string) => void
  /** Whether releases are announced to this store (then a look is only a safety net, once a second). */
  readonly hearing: () => boolean
}

export class ReleaseWatch {
  readonly #o: ReleaseWatchOptions
  // The holders seen at the last look, by id.
  #seen = new Map<string, Holders>()
  #timer: TimerHandle | undefined
  #running: Promise<void> | undefined
  #abort: AbortController | undefined
  #active = false
  #failing = false

  constructor(options: ReleaseWatchOptions) {
    this.#o = options
  }

  /** Looks after the current interval, and keeps looking until stopped; a no-op while it runs. */
  start(): void {
    if (this.#active) return
    this.#active = true
    // A look that a stop cut short schedules nothing when it ends: the next one is due from now.
    this.#schedule()
  }

  /** Stops looking; resolves once a look under way has ended. */
  async stop(): Promise<void> {
    this.#active = false
    if (this.#timer !== undefined) this.#o.timers.clearTimeout(this.#timer)
    this.#timer = undefined
    this.#abort?.abort()
    this.#seen = new Map()
    await this.#running
  }

  #schedule(): void {
    const { youngestSince } = this.#o.waited()
    const byAge = (this.#o.monotonicNow() - youngestSince) / AGE_PER_INTERVAL
    const ms = this.#failing || this.#o.hearing() ? LOOK_MAX_MS : Math.min(LOOK_MAX_MS, Math.max(LOOK_MIN_MS, byAge))
    this.#timer = this.#o.timers.setTimeout(() => {
      this.#timer = undefined
      const abort = (this.#abort = new AbortController())
      const running = (this.#running = this.#look(abort.signal).finally(() => {
        if (this.#running === running) this.#running = undefined
        if (!abort.signal.aborted) this.#schedule()
      }))
      return running
    }, ms)
  }

  async #look(signal: AbortSignal): Promise<void> {
    const { ids } = this.#o.waited()
    if (ids.length === 0) return
    let live: ReadonlyMap<string, Holders>
    try {
      live = await this.#o.look(ids, signal)
    } catch (error) {
      if (signal.aborted) return
      if (!this.#failing) this.#o.log('warn', { err: error }, 'worker-locks: could not look for released locks; waiters retry on their own until a look succeeds.')
      this.#failing = true
      return
    }
    if (signal.aborted) return
    this.#failing = false
    const seen = new Map<string, Holders>()
    for (const id of ids) {
      const now = live.get(id) ?? new Map<string, HolderKind>()
      const before = this.#seen.get(id)
      seen.set(id, now)
      // No holder now (an intent holds nothing: the writer waiting may be this store's); or, for a
      // read/write lock, readers may come in now and could not at the last look (a writer or an
      // intent was there), or this is the first look (what refused the wait left before it could
      // be seen). A lock that merely changed hands, readers coming and going, or an intent turning
      // into its writer's hold wake no one: the attempt would be refused.
      const free = ![...now.values()].some((kind) => kind !== 'intent')
      const keepsReadersOut = (holders: Holders): boolean => [...holders.values()].some((kind) => kind !== 'read')
      const readable = !keepsReadersOut(now) && (before === undefined || keepsReadersOut(before))
      if (free || (isReadWriteId(id) && readable)) this.#o.wake(id)
    }
    this.#seen = seen
  }
}
