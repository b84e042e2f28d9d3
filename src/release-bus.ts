// The stores of this process that wait for a lock, in the order they began to wait. A release
// serves the one that has waited longest (then the next, in turn): it hands the lock straight to
// that store where it can, or wakes it so that it tries again at once instead of at its next
// backoff. (Waking every store would send them all to the database for a lock only one can get.)
// Keyed by table name: stores on different databases that share a table name may get a wake-up
// too many, which costs one attempt; a lock is handed over only between stores that know they
// share a database (see `WaitingStore.database`).

/** A store of this process waiting for one lock, as the other stores of the process see it. */
export interface WaitingStore {
  /** Wakes the store's first waiter for the lock: it tries again at once. */
  wake(): void
  /**
   * The database the store's table is in: two stores whose values are equal (`===`, and not
   * `undefined`) use the same rows. `undefined` until the store has asked its server.
   */
  readonly database: unknown
  /** The store's instance name, which a row handed to it carries. */
  readonly instanceName: string
  /** Whether the store's first waiter for the lock is asleep and could take the lock handed over now. */
  canTake(): boolean
  /**
   * Gives the store's first waiter the lock that is being handed to it as the acquisition
   * `token`: `fence` resolves the row's new fence once written, or `null` if the hand-over did
   * not happen (the waiter then tries on its own). `handOvers` counts hand-overs in a row.
   */
  take(token: string, handOvers: number, fence: Promise<bigint | null>): void
}

const waitingStores = new Map<string, WaitingStore[]>()

// The stores of this process by table, held weakly (a store that is never closed must not be
// kept alive here), so that a waiter can tell whether another store of the process holds a lock.
const storesByTable = new Map<string, Set<WeakRef<LocalStore>>>()

/** A store of this process, as the others see it before asking the database for a lock. */
export interface LocalStore {
  /** As `WaitingStore.database`. */
  readonly database: unknown
  /** Whether the store holds the lock `lockId`, or is being handed it. */
  holds(lockId: string): boolean
}

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

/**
 * Whether a store of this process other than `asking` holds `lockId` in `table` on `database`:
 * its release will hand the lock to a waiting store of the process or wake one.
 */
export function isHeldHere(table: string, lockId: string, database: unknown, asking: LocalStore): boolean {
  const stores = storesByTable.get(table)
  if (database === undefined || !stores) return false
  for (const ref of stores) {
    const store = ref.deref()
    if (store === undefined) stores.delete(ref) // collected without close()
    else if (store !== asking && store.database === database && store.holds(lockId)) return true
  }
  return false
}

/** Registers `store`, which waits for `lockId` in `table`; the returned function unregisters it. */
export function waitForLocalRelease(table: string, lockId: string, store: WaitingStore): () => void {
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
function nextInLine(table: string, lockId: string): WaitingStore | undefined {
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
  nextInLine(table, lockId)?.wake()
}

/**
 * The store whose turn it is to get the lock being released (the one that has waited longest),
 * if `accept` agrees to hand it the lock; that store then goes to the back of the line, as if the
 * release had woken it. `undefined` (and nobody moves) otherwise.
 */
export function takeTurn(table: string, lockId: string, accept: (store: WaitingStore) => boolean): WaitingStore | undefined {
  const first = waitingStores.get(`${table}\0${lockId}`)?.[0]
  if (first === undefined || !accept(first)) return undefined
  return nextInLine(table, lockId)
}
