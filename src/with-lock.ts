// The callback forms (withLock, tryWithLock, withReadWriteLock): run a function while holding a
// lock and release it whatever the function does; and the argument shapes they accept, with or
// without a key.
import { describeLock } from './held-locks.js'
import type { Lock } from './lock.js'
import type { Log } from './logger.js'
import { optionsObject, resolveWait, wholeMs, type Wait, type WaitOptions } from './validate.js'

/** What `withLock` and `tryWithLock` run under the lock. */
export type LockedFunction<T> = (lock: Lock) => T | Promise<T>

/** Options of `withLock`: those of the wait, and how long the lock is taken at least. */
export interface WithLockOptions extends WaitOptions {
  /**
   * If `fn` settles sooner than this many milliseconds after it was called, the lock stays taken
   * until then (see `ReleaseOptions.keepForMs`), whether `fn` resolved or threw: a job that
   * several hosts start on the same schedule runs once per slot even when it is quick. Make it
   * shorter than the schedule's interval.
   * @default 0
   */
  minHoldMs?: number
}

/** Options of `tryWithLock`. */
export interface TryWithLockOptions {
  /** As for `withLock`. @default 0 */
  minHoldMs?: number
}

/** `(key, options)`, or `(options)` where the key would be: the key, then the options. */
export function keyThenOptions(keyOrOptions: unknown, options: unknown): [unknown, unknown] {
  if (typeof keyOrOptions !== 'object' || keyOrOptions === null) return [keyOrOptions === undefined ? '' : keyOrOptions, options]
  if (options !== undefined) throw new TypeError('Wait options were given twice: pass (name, key, options) or (name, options).')
  return ['', keyOrOptions]
}

/**
 * `(key, fn, options)` or `(fn, options)` of `method`: the key, the function, the wait (none for
 * tryWithLock) and `minHoldMs`, checked.
 */
export function lockedCall<T>(method: 'withLock' | 'tryWithLock', args: readonly unknown[]): { key: unknown; fn: LockedFunction<T>; wait: Wait; minHoldMs: number } {
  const [first, second, third] = args
  const [key, fn, options] = typeof first === 'function' ? ['', first, second] : [first === undefined ? '' : first, second, third]
  if (typeof fn !== 'function') throw new TypeError(`${method} needs a function to run under the lock: (name, fn), (name, key, fn) or with options last.`)
  const o = optionsObject(options, method, method === 'withLock' ? ['timeoutMs', 'signal', 'minHoldMs'] : ['minHoldMs'])
  return { key, fn: fn as LockedFunction<T>, wait: resolveWait(o, method), minHoldMs: wholeMs(`${method} option minHoldMs`, o.minHoldMs, 0) }
}

/**
 * Runs `fn` with `lock`, then releases it whatever `fn` did, keeping it taken until `minHoldMs`
 * after `fn` was called (`now`: the store's monotonic clock); a failed release is logged, not
 * thrown: the lock then expires after `lockTimeoutMs`.
 */
export async function runHolding<T>(lock: Lock, fn: LockedFunction<T>, minHoldMs: number, now: () => number, log: Log, lockTimeoutMs: number): Promise<T> {
  const startedAt = now()
  const release = (): Promise<void> => lock.release(minHoldMs > 0 ? { keepForMs: Math.max(0, Math.ceil(startedAt + minHoldMs - now())) } : undefined)
    .catch((error: unknown) => log('warn', { err: error, lockName: lock.name, lockKey: lock.key },
      `worker-locks: could not release lock ${describeLock(lock.name, lock.key)} after its work; it expires after ${lockTimeoutMs} ms.`))
  try {
    return await fn(lock)
  } finally {
    await release()
  }
}
