import { constants } from 'node:os'
import type { LockStore } from './lock-store.js'
import { describe, optionsObject, wholeMs } from './validate.js'

/** Options of {@link releaseOnSignals}. */
export interface ReleaseOnSignalsOptions {
  /** The signals to handle. @default ['SIGINT', 'SIGTERM'] */
  signals?: readonly NodeJS.Signals[]
  /** The longest wait for the store to release its locks before the process goes on. @default 5_000 */
  timeoutMs?: number
}

interface Registration {
  readonly store: LockStore
  readonly timeoutMs: number
}

// One handler per signal for the whole process, however many stores registered: the process
// must go on only once every store has released its locks (or run out of time).
const registrations = new Map<NodeJS.Signals, Set<Registration>>()

function onSignal(signal: NodeJS.Signals): void {
  const registered = [...(registrations.get(signal) ?? [])]
  // Stop handling every signal: a second signal while closing gets the default behaviour.
  for (const [handled, set] of registrations) {
    process.removeListener(handled, onSignal)
    set.clear()
  }
  registrations.clear()
  const closing = registered.map(({ store, timeoutMs }) => {
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })
    // A failed close has nowhere to be reported here; those locks then expire on their own.
    const closed = store.close().catch(() => undefined)
    return Promise.race([closed, deadline]).finally(() => clearTimeout(timer))
  })
  void Promise.all(closing).then(() => {
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
  })
}

// Node cannot install a handler for these: the kernel never delivers them to the process.
const UNCATCHABLE: ReadonlySet<string> = new Set(['SIGKILL', 'SIGSTOP'])

/** Checks the arguments of {@link releaseOnSignals}; throws TypeError/RangeError naming the problem. */
function resolveArguments(store: unknown, options: unknown): { signals: NodeJS.Signals[]; timeoutMs: number } {
  // Anything that closes like a store is accepted, so an application can wrap one.
  if (typeof store !== 'object' || store === null || typeof (store as { close?: unknown }).close !== 'function') {
    throw new TypeError(`releaseOnSignals needs a LockStore as its first argument, got ${describe(store)}.`)
  }
  const o = optionsObject(options, 'releaseOnSignals', ['signals', 'timeoutMs'])
  const signals = o.signals ?? ['SIGINT', 'SIGTERM']
  if (!Array.isArray(signals) || signals.length === 0) {
    throw new TypeError(`releaseOnSignals option signals must be a non-empty array of signal names such as 'SIGTERM', got ${describe(signals)}.`)
  }
  for (const signal of signals as unknown[]) {
    if (typeof signal !== 'string' || !Object.hasOwn(constants.signals, signal)) {
      throw new TypeError(`releaseOnSignals option signals: ${JSON.stringify(signal)} is not a signal of this platform (see os.constants.signals).`)
    }
    if (UNCATCHABLE.has(signal)) throw new TypeError(`releaseOnSignals option signals: ${signal} cannot be caught, so it cannot trigger a clean shutdown.`)
  }
  // A copy: the caller may change its array after registering.
  return { signals: [...signals] as NodeJS.Signals[], timeoutMs: wholeMs('releaseOnSignals option timeoutMs', o.timeoutMs, 5_000) }
}

/**
 * Opt-in clean shutdown: on the first of `signals`, closes `store` (releasing its locks, so
 * other processes can take them at once instead of after `lockTimeoutMs`), waiting at most
 * `timeoutMs`, then lets the process do what it would have done without this call. If nothing
 * else listens for the signal, that is dying of it (the exit status says so); if the
 * application has its own handlers, they run as usual and decide. Several stores may register;
 * the process goes on once all of them are done. A second signal while closing gets the default
 * behaviour at once.
 *
 * Without this call worker-locks never touches signal handling.
 * @returns a function that removes this registration again
 * @throws TypeError or RangeError, before any handler is installed, for a first argument that is
 *   not a store, unknown options, or signals that are not names in `os.constants.signals`
 *   or cannot be caught (SIGKILL, SIGSTOP)
 */
export function releaseOnSignals(store: LockStore, options?: ReleaseOnSignalsOptions): () => void {
  const { signals, timeoutMs } = resolveArguments(store, options)
  const registration: Registration = { store, timeoutMs }
  for (const signal of new Set(signals)) {
    let set = registrations.get(signal)
    if (!set) {
      registrations.set(signal, (set = new Set()))
      process.on(signal, onSignal)
    }
    set.add(registration)
  }
  return () => {
    for (const signal of signals) {
      const set = registrations.get(signal)
      if (!set?.delete(registration) || set.size > 0) continue
      registrations.delete(signal)
      process.removeListener(signal, onSignal)
    }
  }
}
