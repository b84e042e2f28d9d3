import type { LockStore } from './lock-store.js'

/** Options of {@link releaseOnSignals}. */
export interface ReleaseOnSignalsOptions {
  /** The signals to handle. @default ['SIGINT', 'SIGTERM'] */
  signals?: readonly NodeJS.Signals[]
  /** The longest wait for the store to release its locks before the process goes on. @default 5_000 */
  timeoutMs?: number
}

/**
 * Opt-in clean shutdown: on the first of `signals`, closes `store` (releasing its locks, so
 * other processes can take them at once instead of after `lockTimeoutMs`), waiting at most
 * `timeoutMs`, then lets the process do what it would have done without this call. If nothing
 * else listens for the signal, that is dying of it (the exit status says so); if the
 * application has its own handlers, they run as usual and decide. A second signal while closing
 * gets the default behaviour at once.
 *
 * Without this call worker-locks never touches signal handling.
 * @returns a function that removes the handlers again
 */
export function releaseOnSignals(store: LockStore, options: ReleaseOnSignalsOptions = {}): () => void {
  const signals = options.signals ?? ['SIGINT', 'SIGTERM']
  const timeoutMs = options.timeoutMs ?? 5_000
  if (!Array.isArray(signals) || signals.length === 0 || !signals.every((s) => typeof s === 'string' && /^SIG[A-Z0-9]+$/.test(s))) {
    throw new TypeError(`releaseOnSignals option signals must be a non-empty array of signal names such as 'SIGTERM', got ${JSON.stringify(signals)}.`)
  }
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 2 ** 31 - 1) {
    throw new RangeError(`releaseOnSignals option timeoutMs must be a whole number of milliseconds from 0 to ${2 ** 31 - 1}, got ${String(timeoutMs)}.`)
  }

  const remove = (): void => {
    for (const signal of signals) process.removeListener(signal, onSignal)
  }
  function onSignal(signal: NodeJS.Signals): void {
    remove()
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
    // A failed close has nowhere to be reported here; the locks then expire on their own.
    const closed = store.close().catch(() => undefined)
    void Promise.race([closed, deadline]).then(() => {
      clearTimeout(timer)
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
    })
  }
  for (const signal of signals) process.on(signal, onSignal)
  return remove
}
