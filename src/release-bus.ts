// The stores of this process, by table, as the others see them. A release serves the store that
// has waited longest for its lock (then the next, in turn): it hands the lock straight to that
// store where it can, or wakes it so that it tries again at once instead of at its next backoff.
// (Waking every store would send them all to the database for a lock only one can get.) Keyed by
// table name: stores on different databases that share a table name may get a wake-up too many,
// which costs one attempt; a lock is handed over only between stores that know they share a
// database (see `LocalStore.database`). Stores are held weakly: one that is never closed must not
// be kept alive here.
import type { HandedLock } from '../dialects/index.js'

/** A store of this process, as the other stores of the process see it. */
export interface LocalStore {
  /**
   * The database the store's table is in: two stores whose values are equal (`===`, and not
   * `undefined`) use the same rows. `undefined` until the store has asked its server.
   */
  readonly database: unknown
  /** The store's instance name, which a row handed to it carries. */
  readonly instanceName: string
  /** The store's name in the table's waiting line, where the database keeps one. */
  readonly waiter: string
  /** Whether the store holds the lock `id`, or is being handed it. */
  holds(id: string): boolean
  /** Wakes the store's first waiter for the lock `id`: it tries again at once. */
  wake(id: string): void
  /** Whether the store's first waiter for the lock `id` is asleep and could take the lock handed over now. */
  canTake(id: string): boolean
  /**
   * Gives the store's first waiter for the lock `id` the lock that is being handed to it as the
   * acquisition `token`: `fence` resolves the row's new fence once written, or `null` if the
   * hand-over did not happen (the waiter then tries on its own). `handOvers` counts hand-overs in
   * a row.
   */
  take(id: string, name: string, key: string, token: string, handOvers: number, fence: Promise<bigint | null>): void
  /** A release of another store gave this store the lock through the waiting line (see `HandedOver`). */
  receive(name: string, key: string, handed: HandedLock): void
}

const storesByTable = new Map<string, Set<WeakRef<LocalStore>>>()
// The stores waiting for each lock, by table and lock, in the order they began to wait.
const waitingStores = new Map<string, LocalStore[]>()

/** Registers `store`, which uses `table`; the returned function unregisters it. */
export function registerStore(table: string, store: LocalStore): () => void {
  let stores = storesByTable.get(table)
  if (!stores) storesByTable.set(table, (stores = new Set()))
  const ref = new WeakRef(store)
  stores.add(ref)
  return () => {
    stores.delete(ref)
    if (stores.size === 0 && storesByTable.get(table) === stores) storesByTable.delete(table)
  }
}

/** The live stores of `table`, forgetting those collected without close(). */
function* storesOf(table: string): Generator<LocalStore> {
  const stores = storesByTable.get(table)
  if (!stores) return
  for (const ref of stores) {
    const store = ref.deref()
    if (store === undefined) stores.delete(ref)
    else yield store
  }
}

/**
 * Whether a store of this process other than `asking` holds `lockId` in `table` on `database`:
 * its release will hand the lock to a waiting store of the process or wake one.
 */
export function isHeldHere(table: string, lockId: string, database: unknown, asking: LocalStore): boolean {
  if (database === undefined) return false
  for (const store of storesOf(table)) {
    if (store !== asking && store.database === database && store.holds(lockId)) return true
  }
  return false
}

/**
 * Gives `handed` to the store of this process named `waiter` in `table`'s waiting line (a
 * release told it nothing: no notification goes to a store of the releasing process); false if
 * there is none.
 */
export function handToStore(table: string, waiter: string, name: string, key: string, handed: HandedLock): boolean {
  for (const store of storesOf(table)) {
    if (store.waiter === waiter) {
      store.receive(name, key, handed)
      return true
    }
  }
  return false
}

/** Registers `store`, which waits for `lockId` in `table`; the returned function unregisters it. */
export function waitForLocalRelease(table: string, lockId: string, store: LocalStore): () => void {
  const key = `${table}\0${lockId}`
  let queue = waitingStores.get(key)
  if (!queue) waitingStores.set(key, (queue = []))
  queue.push(store)
  return () => {
    const index = queue.indexOf(store)
    if (index >= 0) queue.splice(index, 1)
    if (queue.length === 0 && waitingStores.get(key) === queue) waitingStores.delete(key)
  }
}

/** Moves the first waiting store to the back of the line and returns it. */
function nextInLine(table: string, lockId: string): LocalStore | undefined {
  const queue = waitingStores.get(`${table}\0${lockId}`)
  const first = queue?.shift()
  if (!queue || !first) return undefined
  queue.push(first)
  return first
}

/**
 * Announces a release that has committed: wakes the store that has waited longest for it, and
 * moves that store to the back of the line, so that stores take turns.
 */
export function announceRelease(table: string, lockId: string): void {
  nextInLine(table, lockId)?.wake(lockId)
}

/**
 * The store whose turn it is to get the lock being released (the one that has waited longest),
 * if `accept` agrees to hand it the lock; that store then goes to the back of the line, as if the
 * release had woken it. `undefined` (and nobody moves) otherwise.
 */
export function takeTurn(table: string, lockId: string, accept: (store: LocalStore) => boolean): LocalStore | undefined {
  const first = waitingStores.get(`${table}\0${lockId}`)?.[0]
  if (first === undefined || !accept(first)) return undefined
  return nextInLine(table, lockId)
}
