// Tells every store in this process that a lock was released, so their waiters for it try again
// at once instead of at their next backoff. Keyed by table name: stores on different databases
// that share a table name only get a wake-up too many, which costs one attempt.

type OnRelease = (name: string, key: string) => void

const byTable = new Map<string, Set<OnRelease>>()

/** Hears of every release of a lock in `table` in this process, until the returned function is called. */
export function onLocalRelease(table: string, onRelease: OnRelease): () => void {
  let listeners = byTable.get(table)
  if (!listeners) byTable.set(table, (listeners = new Set()))
  listeners.add(onRelease)
  return () => {
    listeners.delete(onRelease)
    if (listeners.size === 0 && byTable.get(table) === listeners) byTable.delete(table)
  }
}

/** Announces a release that has committed. */
export function announceRelease(table: string, name: string, key: string): void {
  const listeners = byTable.get(table)
  if (!listeners) return
  for (const onRelease of [...listeners]) onRelease(name, key)
}
