import type { LockLossReason } from './errors.js'

/** What each event of a store carries. Durations are in milliseconds. */
export interface LockEventMap {
  /** A lock was acquired (by a try or a wait). `durationMs`: the acquiring statement. */
  acquired: { name: string; key: string; fence: bigint; durationMs: number }
  /** An attempt found the lock held. `durationMs`: the statement that found it so. */
  refused: { name: string; key: string; durationMs: number }
  /** A lock this store held was released (`heldMs` since it was acquired). */
  released: { name: string; key: string; heldMs: number }
  /** A renewal tick refreshed `count` locks. */
  renewed: { count: number; durationMs: number }
  /** A lock was lost without being released. */
  lost: { name: string; key: string; reason: Exclude<LockLossReason, 'released'>; heldMs: number }
  /** A wait (`acquireLock`, `withLock`) ended. */
  waited: { name: string; key: string; waitedMs: number; outcome: 'acquired' | 'timeout' | 'aborted' | 'closed' }
}

/** The names of a store's events. */
export type LockEventName = keyof LockEventMap

/** A listener for event `E`. */
export type LockEventListener<E extends LockEventName> = (event: LockEventMap[E]) => void

// Spelled out as a record so that the compiler insists on every event of LockEventMap.
const EVENT_NAMES: ReadonlySet<string> = new Set(Object.keys({
  acquired: true, refused: true, released: true, renewed: true, lost: true, waited: true,
} satisfies Record<LockEventName, true>))

/** Throws a TypeError unless `name` is an event of {@link LockEventMap} and `listener` a function. */
function checkSubscription(method: string, name: unknown, listener: unknown): void {
  if (typeof name !== 'string' || !EVENT_NAMES.has(name)) {
    throw new TypeError(`${method}: unknown event ${typeof name === 'string' ? JSON.stringify(name) : `of type ${typeof name}`}; the events are ${[...EVENT_NAMES].join(', ')}.`)
  }
  if (typeof listener !== 'function') {
    throw new TypeError(`${method}: the listener for ${JSON.stringify(name)} must be a function, got ${listener === null ? 'null' : typeof listener}.`)
  }
}

/**
 * A small typed event hub. Emitting with no listener costs one map lookup, and listeners that
 * throw are isolated from the lock work (their error is handed to `onListenerError`).
 */
export class LockEvents {
  readonly #listeners = new Map<LockEventName, Set<(event: never) => void>>()
  readonly #onListenerError: (error: unknown) => void

  constructor(onListenerError: (error: unknown) => void) {
    this.#onListenerError = onListenerError
  }

  /**
   * Adds `listener` for `name`; returns a function that removes it again.
   * @throws TypeError for an unknown event name or a listener that is not a function
   */
  on<E extends LockEventName>(name: E, listener: LockEventListener<E>): () => void {
    checkSubscription('LockStore.on', name, listener)
    let set = this.#listeners.get(name)
    if (!set) this.#listeners.set(name, (set = new Set()))
    set.add(listener as (event: never) => void)
    return () => this.off(name, listener)
  }

  /**
   * Removes `listener` for `name`; nothing happens if it was not added.
   * @throws TypeError for an unknown event name or a listener that is not a function
   */
  off<E extends LockEventName>(name: E, listener: LockEventListener<E>): void {
    checkSubscription('LockStore.off', name, listener)
    const set = this.#listeners.get(name)
    set?.delete(listener as (event: never) => void)
    if (set?.size === 0) this.#listeners.delete(name)
  }

  /** Whether anyone listens, so callers can skip building an event nobody hears. */
  has(name: LockEventName): boolean {
    return this.#listeners.has(name)
  }

  emit<E extends LockEventName>(name: E, event: LockEventMap[E]): void {
    const set = this.#listeners.get(name)
    if (!set) return
    for (const listener of [...set]) {
      try {
        (listener as LockEventListener<E>)(event)
      } catch (error) {
        this.#onListenerError(error)
      }
    }
  }
}
