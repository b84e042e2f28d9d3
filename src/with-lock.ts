// The callback forms (withLock, tryWithLock): run a function while holding a lock and release it
// whatever the function does; and the argument shapes the waiting calls accept, with or without
// a key (a function or an options object where the key would be).
import { describeLock } from './held-locks.js'
import type { Lock } from './lock.js'
import type { LogLevel } from './logger.js'

/** What `withLock` and `tryWithLock` run under the lock. */
export type LockedFunction<T> = (lock: Lock) => T | Promise<T>

/** `(key, options)`, or `(options)` where the key would be: the key, then the options. */
export function keyThenOptions(keyOrOptions: unknown, options: unknown): [unknown, unknown] {
  if (typeof keyOrOptions !== 'object' || keyOrOptions === null) return [keyOrOptions === undefined ? '' : keyOrOptions, options]
  if (options !== undefined) throw new TypeError('Wait options were given twice: pass (name, key, options) or (name, options).')
  return ['', keyOrOptions]
}

/** `(key, fn, …rest)`, or `(fn, …rest)` where the key would be: the key, the function, and the rest. */
export function keyThenFunction<T>(method: string, args: readonly unknown[]): { key: unknown; fn: LockedFunction<T>; rest: unknown } {
  const [first, second, third] = args
  const [key, fn, rest] = typeof first === 'function' ? ['', first, second] : [first === undefined ? '' : first, second, third]
  if (typeof fn !== 'function') throw new TypeError(`${method} needs a function to run under the lock: (name, fn), (name, key, fn) or with options last.`)
  return { key, fn: fn as LockedFunction<T>, rest }
}

/** How `runHolding` releases: where failures go, the lease they mention, and how long to keep the lock at least. */
export interface Holding {
  readonly log: (level: LogLevel, details: object, message: string) => void
  readonly lockTimeoutMs: number
  /** The lock stays taken at least this long after `fn` was called (0: freed at once). */
  readonly minHoldMs: number
  /** The store's clock for durations. */
  readonly now: () => number
}

/**
 * Runs `fn` with `lock`, then releases it whatever `fn` did, keeping it taken until `minHoldMs`
 * after `fn` was called; a failed release is logged, not thrown.
 */
export async function runHolding<T>(lock: Lock, fn: LockedFunction<T>, holding: Holding): Promise<T> {
  const startedAt = holding.now()
  const release = (): Promise<void> => {
    const keepForMs = Math.max(0, Math.ceil(startedAt + holding.minHoldMs - holding.now()))
    return lock.release({ keepForMs }).catch((error: unknown) => holding.log('warn', { err: error, lockName: lock.name, lockKey: lock.key },
      `worker-locks: could not release lock ${describeLock(lock.name, lock.key)} after its work; it expires after ${holding.lockTimeoutMs} ms.`))
  }
  let value: T
  try {
    value = await fn(lock)
  } catch (error) {
    await release()
    throw error
  }
  await release()
  return value
}
