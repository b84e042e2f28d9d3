// The arguments of the read/write and multi-lock calls, checked before any SQL runs.
import { describe, knownOptions, resolveWaitOptions, validateLockId, type WaitOptions } from './validate.js'

/** One lock of a multi-lock: `(name, key)` in read or write mode. */
export interface MultiLockPart {
  name: string
  /** @default '' */
  key?: string
  /** `true` for the write side (exclusive), `false` for the read side (shared). Required. */
  write: boolean
}

/** Options of `tryAcquireReadWriteLock`. */
export interface ReadWriteOptions {
  /** `true` for the write side (exclusive), `false` for the read side (shared). Required. */
  write: boolean
}

/** Options of `acquireReadWriteLock` and `withReadWriteLock`. */
export interface ReadWriteWaitOptions extends ReadWriteOptions, WaitOptions {
  /**
   * While a writer waits, new readers of the key are refused, so that a stream of readers
   * cannot keep it out for ever; its claim lapses soon after it stops trying. `false` lets
   * readers in meanwhile (for read-mostly work that prefers readers). Ignored for readers.
   * @default true
   */
  blockNewReaders?: boolean
}

/** Options of `acquireMultiLock`. */
export interface MultiLockWaitOptions extends WaitOptions {
  /** As for `acquireReadWriteLock`, for the parts in write mode. @default true */
  blockNewReaders?: boolean
}

/** A part with every default filled in, and its id among the store's waits. */
export interface ResolvedPart {
  readonly name: string
  readonly key: string
  readonly write: boolean
}

// A multi-lock is one transaction; this bounds how long it may hold key rows.
export const MAX_PARTS = 1_000

function writeOption(where: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new TypeError(`${where} needs write: true (the write side) or false (the read side), got ${describe(value)}.`)
  return value
}

/** `value` as the options object `where` names, with only the `known` keys. */
function objectOf(where: string, value: unknown, known: readonly string[]): Record<string, unknown> {
  return knownOptions(value, where, `option of ${where}`, known)
}

/** `tryAcquireReadWriteLock`'s arguments, checked: the one part. */
export function resolveReadWrite(name: unknown, key: unknown, options: unknown): ResolvedPart {
  validateLockId(name, key)
  const o = objectOf('read/write lock options', options, ['write'])
  return { name, key: key as string, write: writeOption('A read/write lock', o.write) }
}

/** `acquireReadWriteLock`'s arguments, checked: the part, the wait, and whether it blocks new readers. */
export function resolveReadWriteWait(name: unknown, key: unknown, options: unknown): { part: ResolvedPart; blockNewReaders: boolean; wait: { timeoutMs: number; signal: AbortSignal | undefined } } {
  validateLockId(name, key)
  const o = objectOf('read/write lock options', options, ['write', 'timeoutMs', 'signal', 'blockNewReaders'])
  const { write, blockNewReaders, ...wait } = o
  return { part: { name, key: key as string, write: writeOption('A read/write lock', write) }, blockNewReaders: blockingOption(blockNewReaders), wait: resolveWaitOptions(wait) }
}

function blockingOption(value: unknown): boolean {
  if (value !== undefined && typeof value !== 'boolean') throw new TypeError(`Option blockNewReaders must be a boolean, got ${describe(value)}.`)
  return value ?? true
}

/**
 * A multi-lock's list, checked and merged: one part per distinct `(name, key)`, in the order
 * first given, in write mode if any entry for it asked for write.
 */
export function resolveParts(list: unknown): ResolvedPart[] {
  if (!Array.isArray(list)) throw new TypeError(`A multi-lock needs an array of { name, key, write }, got ${describe(list)}.`)
  if (list.length === 0) throw new RangeError('A multi-lock needs at least one lock.')
  if (list.length > MAX_PARTS) throw new RangeError(`A multi-lock takes at most ${MAX_PARTS} locks, got ${list.length}.`)
  const merged = new Map<string, ResolvedPart>()
  for (const [index, entry] of list.entries()) {
    const o = objectOf(`multi-lock entry ${index}`, entry, ['name', 'key', 'write'])
    const key = o.key === undefined ? '' : o.key
    validateLockId(o.name, key)
    const part = { name: o.name, key: key as string, write: writeOption(`Multi-lock entry ${index}`, o.write) }
    const id = `${part.name}\0${part.key}`
    const before = merged.get(id)
    merged.set(id, before ? { ...before, write: before.write || part.write } : part)
  }
  return [...merged.values()]
}

/** `acquireMultiLock`'s options, checked. */
export function resolveMultiWait(options: unknown): { blockNewReaders: boolean; wait: { timeoutMs: number; signal: AbortSignal | undefined } } {
  if (options === undefined) return { blockNewReaders: true, wait: resolveWaitOptions(undefined) }
  const { blockNewReaders, ...wait } = objectOf('multi-lock options', options, ['timeoutMs', 'signal', 'blockNewReaders'])
  return { blockNewReaders: blockingOption(blockNewReaders), wait: resolveWaitOptions(wait) }
}
