import type { Knex } from 'knex'
import type { WaitingLine } from '../dialects/index.js'
import type { LogLevel } from './logger.js'

interface Place {
  readonly name: string
  readonly key: string
  /** When this store last joined (monotonic ms), or `undefined` while it is not known to have joined. */
  joinedAt: number | undefined
}

/**
 * This store's places in the waiting line that releases in other processes consult (see
 * `WaitingLine`): a waiter refused by the database joins the line for its lock, and the store
 * leaves it when its last waiter for that lock is gone. (A place counts only while the store's
 * listener is up, so a release never goes to a store that cannot hear it.) The statements run
 * in the background, in order per lock; one that fails is logged and costs only speed (waiters
 * poll whatever happens).
 */
export class LinePlaces {
  readonly #knex: Knex
  readonly #line: WaitingLine
  readonly #table: string
  readonly #waiter: string
  readonly #expiresInMs: number
  readonly #now: () => number
  readonly #log: (level: LogLevel, details: object, message: string) => void
  readonly #places = new Map<string, Place>()
  // When this store last left the line for each lock (monotonic ms), for as long as a place
  // left behind (a failed leave) could still count: a wake addressed to it for a lock it was
  // never in line for lately is someone else's NOTIFY, not a turn.
  readonly #leftAt = new Map<string, number>()
  // Per lock, the last statement queued: a leave must not overtake the join before it, or the
  // other way round.
  readonly #chains = new Map<string, Promise<void>>()

  /**
   * @param waiter this store's name in the line
   * @param expiresInMs how long a place lasts unless joined again; a waiter first in its store's
   *   queue is refused (and rejoins) at least every third of this while it waits
   */
  constructor(
    knex: Knex, line: WaitingLine, table: string, waiter: string, expiresInMs: number,
    now: () => number, log: (level: LogLevel, details: object, message: string) => void,
  ) {
    this.#knex = knex
    this.#line = line
    this.#table = table
    this.#waiter = waiter
    this.#expiresInMs = expiresInMs
    this.#now = now
    this.#log = log
  }

  /** A waiter of this store for `id` was refused by the database and goes to sleep: be in line for it. */
  refused(id: string, name: string, key: string): void {
    let place = this.#places.get(id)
    if (!place) this.#places.set(id, (place = { name, key, joinedAt: undefined }))
    if (place.joinedAt !== undefined && this.#now() - place.joinedAt < this.#expiresInMs / 3) return
    this.#join(id, place)
  }

  /**
   * The attempt about to be made for `id` by a waiter of this store, when the acquiring
   * statement keeps the line itself (see `AcquireRequest.line`): resolves once the statements
   * queued for that lock have run, so that none overtakes it.
   */
  beforeAttempt(id: string): Promise<void> | undefined {
    return this.#chains.get(id)
  }

  /** The acquiring statement put this store in line for `id` (or renewed its place). */
  joinedByAttempt(id: string, name: string, key: string): void {
    const place = this.#places.get(id)
    if (place) place.joinedAt = this.#now()
    else this.#places.set(id, { name, key, joinedAt: this.#now() })
  }

  /** The acquiring statement took this store out of the line for `id`. */
  leftByStatement(id: string): void {
    const place = this.#places.get(id)
    this.#places.delete(id)
    if (place) this.#recordLeft(id)
    // A join still under way would put the store back in line after the statement took it out.
    if (place && this.#chains.has(id)) this.#leave(id, place.name, place.key)
  }

  /** The store's last waiter for `id` has gone: leave the line, if in it. */
  left(id: string): void {
    const place = this.#places.get(id)
    if (!place) return
    this.#places.delete(id)
    this.#recordLeft(id)
    this.#leave(id, place.name, place.key)
  }

  /**
   * A wake was addressed to this store as first in line for `(name, key)`, but none of its
   * waiters waits for it. If the store was in line for it lately (a leave failed or is still under
   * way), it leaves again and resolves true: the turn is real and must be passed on. Otherwise
   * the wake is not a turn (anyone may NOTIFY the store's channel): false, and nothing is sent.
   */
  strayTurn(id: string, name: string, key: string): boolean {
    const leftAt = this.#leftAt.get(id)
    const lately = this.#chains.has(id) || (leftAt !== undefined && this.#now() - leftAt < this.#expiresInMs)
    if (!lately) return false
    if (!this.#places.has(id)) this.#leave(id, name, key)
    return true
  }

  #recordLeft(id: string): void {
    const now = this.#now()
    for (const [other, at] of this.#leftAt) if (now - at >= this.#expiresInMs) this.#leftAt.delete(other)
    this.#leftAt.set(id, now)
  }

  /** Resolves once every statement queued so far (and any queued meanwhile) has run. */
  async settled(): Promise<void> {
    while (this.#chains.size > 0) await Promise.all(this.#chains.values())
  }

  #join(id: string, place: Place): void {
    const joinedAt = this.#now()
    place.joinedAt = joinedAt
    this.#queue(id, () => this.#line.join(this.#knex, this.#table, this.#waiter, place.name, place.key, this.#expiresInMs)
      .catch((error: unknown) => {
        if (place.joinedAt === joinedAt) place.joinedAt = undefined // the next refusal tries again
        throw error
      }))
  }

  #leave(id: string, name: string, key: string): void {
    this.#queue(id, () => this.#line.leave(this.#knex, this.#table, this.#waiter, name, key))
  }

  #queue(id: string, run: () => Promise<void>): void {
    const next = (this.#chains.get(id) ?? Promise.resolve()).then(run).catch((error: unknown) => {
      this.#log('debug', { err: error, table: this.#table }, 'worker-locks: could not update the waiting line; waiters poll meanwhile.')
    })
    this.#chains.set(id, next)
    void next.then(() => {
      if (this.#chains.get(id) === next) this.#chains.delete(id)
    })
  }
}
