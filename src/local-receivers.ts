// The stores of this process by their names in the waiting line. A release that hands a lock to
// a store of the same process gives it straight to that store: the statement sends no
// notification to a store of its own process (whose listener would ignore it, as it ignores
// everything this process announces), so this is the only way such a lock reaches its store.
import type { HandedLock } from '../dialects/index.js'

/** What a store does with a lock handed to it (see `LockStore`). */
export interface HandOverReceiver {
  receive(name: string, key: string, handed: HandedLock): void
}

// Weakly held: a store that is never closed must not be kept alive by this map.
const receivers = new Map<string, WeakRef<HandOverReceiver>>()
const forget = new FinalizationRegistry<string>((waiter) => {
  if (receivers.get(waiter)?.deref() === undefined) receivers.delete(waiter)
})

/** Registers the store named `waiter` in the line; the returned function unregisters it. */
export function registerReceiver(waiter: string, receiver: HandOverReceiver): () => void {
  receivers.set(waiter, new WeakRef(receiver))
  forget.register(receiver, waiter)
  return () => {
    if (receivers.get(waiter)?.deref() === receiver) receivers.delete(waiter)
  }
}

/** Gives `handed` to the store of this process named `waiter`; false if there is none. */
export function handToReceiver(waiter: string, name: string, key: string, handed: HandedLock): boolean {
  const receiver = receivers.get(waiter)?.deref()
  if (!receiver) return false
  receiver.receive(name, key, handed)
  return true
}
