// Tells the stores of this process that a lock was released, so a waiter for it tries again at
// once instead of at its next backoff. One release frees one lock, so it wakes one store: the
// one that has waited for that lock longest (then the next, in turn). (Waking every store would send them all to the
// database for a lock only one can get.) Keyed by table name: stores on different databases
// that share a table name may get a wake-up too many, which costs one attempt.

interface WaitingStore {
  /** Identifies the store (compared by reference). */
  readonly owner: object
  readonly wake: () => void
}

const waitingStores = new Map<string, WaitingStore[]>()

/** Registers `owner`, a store that waits for `lockId` in `table`; the returned function unregisters it. */
export function waitForLocalRelease(table: string, lockId: string, owner: object, wake: () => void): () => void {
  const key = `${table}\0${lockId}`
  let queue = waitingStores.get(key)
  if (!queue) waitingStores.set(key, (queue = []))
  const entry = { owner, wake }
  queue.push(entry)
  return () => {
    const index = queue.indexOf(entry)
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
 * Whether `owner` may keep a lock it is releasing for one of its own waiters: it may if it is
 * the store whose turn it is (the first in line, or the only one waiting), and then it goes to
 * the back of the line as if the release had woken it.
 */
export function takeTurn(table: string, lockId: string, owner: object): boolean {
  const queue = waitingStores.get(`${table}\0${lockId}`)
  if (queue?.[0]?.owner !== owner) return false
  nextInLine(table, lockId)
  return true
}
