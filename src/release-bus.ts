// The stores of this process that wait for a lock, by table and lock, so that a release in this
// process wakes the store that has waited longest (then the next, in turn), instead of leaving
// it to its next backoff. Waking every store would send them all to the database for a lock only
// one can get. A wake-up is a hint: the store asks the row. Keyed by table name: stores on
// different databases that share a table name may get a wake-up too many, which costs one attempt.

/** A store of this process, as a release in another store sees it. */
export interface WaitingStore {
  /** Wakes the store's first waiter for the lock `id`: it tries again at once. */
  wake(id: string): void
}

// The stores waiting for each lock, by table and lock, in the order they began to wait.
const waitingStores = new Map<string, WaitingStore[]>()

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

/**
 * Announces a release that has committed: wakes the store that has waited longest for it, and
 * moves that store to the back of the line, so that stores take turns.
 */
export function announceRelease(table: string, lockId: string): void {
  const queue = waitingStores.get(`${table}\0${lockId}`)
  const first = queue?.shift()
  if (!queue || !first) return
  queue.push(first)
  first.wake(lockId)
}

/**
 * Announces the release of a read/write holder: wakes every store that waits for that key, since
 * several of them (readers) may get in at once. Waking only the longest waiter, as for a plain
 * lock, left the other readers asleep until their backoff ran out.
 */
export function announceReleaseToAll(table: string, lockId: string): void {
  const queue = waitingStores.get(`${table}\0${lockId}`)
  for (const store of [...(queue ?? [])]) store.wake(lockId)
}
