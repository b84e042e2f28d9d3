// Tells the stores of this process that a lock was released, so a waiter for it tries again at
// once instead of at its next backoff. One release frees one lock, so it wakes one store: the
// one that has waited for that lock longest (then the next, in turn). (Waking every store would send them all to the
// database for a lock only one can get.) Keyed by table name: stores on different databases
// that share a table name may get a wake-up too many, which costs one attempt.

type Wake = () => void

const waitingStores = new Map<string, Wake[]>()

/** Registers a store that waits for `lockId` in `table`; the returned function unregisters it. */
export function waitForLocalRelease(table: string, lockId: string, wake: Wake): () => void {
  const key = `${table}\0${lockId}`
  let queue = waitingStores.get(key)
  if (!queue) waitingStores.set(key, (queue = []))
  queue.push(wake)
  return () => {
    const index = queue.indexOf(wake)
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
  first()
}
