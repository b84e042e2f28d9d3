// Waking the waiters of this process: a release by one store wakes the store of the process that
// has waited longest for that lock (see release-bus.ts). Enough on SQLite and MySQL, whose waiters
// in other processes find a released lock by polling.
import type { LineRequest, Strategy } from '../../dialects/index.js'
import { announceRelease, waitForLocalRelease } from '../release-bus.js'
import type { LockRef } from '../store-context.js'
import type { Coordination } from './coordination.js'

export class LocalCoordination implements Coordination {
  get wakesLine(): boolean {
    return false
  }

  protected readonly tableName: string
  readonly #wake: (id: string) => boolean
  readonly #stopWaiting = new Map<string, () => void>()

  /** @param wake wakes this store's first waiter for a lock; `false` if nobody waits for it */
  constructor(tableName: string, wake: (id: string) => boolean) {
    this.tableName = tableName
    this.#wake = wake
  }

  planned(_strategy: Strategy): void {}
  occupied(_occupied: boolean): void {}
  beforeAttempt(_lock: LockRef, _alone: boolean): Promise<LineRequest | undefined> | undefined {
    return undefined
  }
  afterAttempt(_lock: LockRef, _line: LineRequest | undefined, _won: boolean): void {}
  waitEnded(_lock: LockRef, _acquired: boolean): void {}

  waitingStarted(lock: LockRef): void {
    this.#stopWaiting.set(lock.id, waitForLocalRelease(this.tableName, lock.id, { wake: (id) => { this.#wake(id) } }))
  }

  waitingEnded(lock: LockRef): void {
    this.#stopWaiting.get(lock.id)?.()
    this.#stopWaiting.delete(lock.id)
  }

  released(lock: LockRef): void {
    announceRelease(this.tableName, lock.id)
  }

  /** Wakes this store's first waiter for `id`. */
  protected wake(id: string): boolean {
    return this.#wake(id)
  }

  async close(): Promise<void> {}
}
