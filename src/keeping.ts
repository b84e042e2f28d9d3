// Keeping a lock taken after its work is done, so that a job run on a schedule by several hosts
// runs once per slot: `lock.release({ keepForMs })` and the `minHoldMs` of withLock/tryWithLock.
import { describe, knownOptions, type WaitOptions } from './validate.js'

// The lease column and timers take at most this many milliseconds (about 24.8 days).
const MAX_KEEP_MS = 2 ** 31 - 1

/** Options of `Lock#release`. */
export interface ReleaseOptions {
  /**
   * Instead of freeing the lock now, keep it taken for this many more milliseconds: for that
   * long no worker can acquire it (this store and a restarted worker with the same `instanceName`
   * included), and after it anyone can. Nobody renews it meanwhile; `listLocks` shows it with an
   * empty `instanceName`. `0` (the default) frees the lock at once.
   * @default 0
   */
  keepForMs?: number
}

/** Options of `withLock`: those of the wait, and how long the lock is taken at least. */
export interface WithLockOptions extends WaitOptions {
  /**
   * If `fn` settles sooner than this many milliseconds after it was called, the lock stays taken
   * until then (see `ReleaseOptions.keepForMs`), whether `fn` resolved or threw: a job that
   * several hosts start on the same schedule runs once per slot even when it is quick and the
   * hosts' clocks differ by less than this. Make it shorter than the schedule's interval.
   * @default 0
   */
  minHoldMs?: number
}

/** Options of `tryWithLock`. */
export interface TryWithLockOptions {
  /** As for `withLock`. @default 0 */
  minHoldMs?: number
}

/** `value` as a number of milliseconds a lock is kept, checked; `what` names it in errors. */
function keepMs(what: string, value: unknown): number {
  if (value === undefined) return 0
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new TypeError(`${what} must be a whole number of milliseconds, got ${describe(value)}.`)
  if (value < 0 || value > MAX_KEEP_MS) throw new RangeError(`${what} must be between 0 and ${MAX_KEEP_MS} milliseconds, got ${value}.`)
  return value
}

/** The options object `options` (none: `{}`), with only the `known` keys; `label` names one option in errors. */
function optionsObject(label: string, options: unknown, known: readonly string[]): Record<string, unknown> {
  return options === undefined ? {} : knownOptions(options, `${label}s`, label, known)
}

/** The `keepForMs` of `lock.release(options)`, checked. */
export function resolveReleaseOptions(options: unknown): number {
  return keepMs('Lock#release option keepForMs', optionsObject('Lock#release option', options, ['keepForMs']).keepForMs)
}

/** `withLock`'s options split into the wait's (checked by the wait) and `minHoldMs`, checked. */
export function splitWithLockOptions(options: unknown): { wait: unknown; minHoldMs: number } {
  if (typeof options !== 'object' || options === null || !('minHoldMs' in options)) return { wait: options, minHoldMs: 0 }
  const { minHoldMs, ...wait } = options as WithLockOptions
  return { wait, minHoldMs: keepMs('withLock option minHoldMs', minHoldMs) }
}

/** The `minHoldMs` of `tryWithLock`'s options, checked. */
export function resolveTryWithLockOptions(options: unknown): number {
  return keepMs('tryWithLock option minHoldMs', optionsObject('tryWithLock option', options, ['minHoldMs']).minHoldMs)
}
