// Every check of a caller's arguments, with its sentence: names, keys, options. They run before
// any SQL, so a mistake costs nothing held.
import { DEFAULT_BACKOFF, type Backoff, type BackoffOptions } from './backoff.js'
import { MAX_TIMER_MS, type Clock } from './clock.js'
import { InvalidLockNameError } from './errors.js'
import type { Logger } from './logger.js'

/**
 * The longest lock name, lock key or instance name, in Unicode code points. 255 code points of
 * UTF-8 fit InnoDB's key limit for the two-column primary key on MySQL/MariaDB; the same limit
 * applies on every database so that code moves between them unchanged.
 */
export const MAX_NAME_LENGTH = 255

// PostgreSQL keeps identifiers of up to 63 bytes, MySQL 64. The table's name is also the stem of
// the names made from it (`_fence_seq`, `_released`, `_rw_holders`), which must fit too.
const TABLE_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,47}$/

/** How long a lock survives without renewal when no `lockTimeoutMs` is given (also `worker-locks run --lock-timeout`'s default). */
export const DEFAULT_LOCK_TIMEOUT_MS = 120_000

/** The lock table's name when none is given. */
export const DEFAULT_TABLE_NAME = 'worker_locks'

/** A value as error messages name it, without printing what may be huge or secret. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return `a string of length ${value.length}`
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value === 'number' ? `the number ${String(value)}` : `a value of type ${typeof value}`
}

/**
 * `value` as the options object of `what` (`undefined`: `{}`) with only the `known` keys, none of
 * them `null`: only a missing option means the default. Throws a TypeError naming the problem.
 */
export function optionsObject(value: unknown, what: string, known: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError(`${what} options must be an object, got ${describe(value)}.`)
  for (const [name, member] of Object.entries(value)) {
    if (!known.includes(name)) throw new TypeError(`Unknown ${what} option ${JSON.stringify(name)}; known options are ${known.join(', ')}.`)
    if (member === null) throw new TypeError(`${what} option ${name} must not be null; leave it out (or undefined) for the default.`)
  }
  return value as Record<string, unknown>
}

/**
 * `value` as a whole number of milliseconds from `min` to `max` (`fallback` when undefined;
 * `Infinity` too when `max` is). Throws a TypeError or RangeError naming `what`.
 */
export function wholeMs(what: string, value: unknown, fallback: number, min = 0, max = MAX_TIMER_MS): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !(Number.isInteger(value) || value === max)) {
    throw new TypeError(`${what} must be a whole number of milliseconds${max === Infinity ? ' or Infinity' : ''}, got ${describe(value)}.`)
  }
  if (value < min || value > max) throw new RangeError(`${what} must be between ${min} and ${max} milliseconds, got ${value}.`)
  return value
}

/** Returns `value` if it is a plain SQL identifier; throws a TypeError naming `what` otherwise. */
export function validateTableName(value: unknown, what: string): string {
  if (typeof value !== 'string' || !TABLE_NAME_PATTERN.test(value)) {
    throw new TypeError(`${what} must be 1 to 48 letters, digits and underscores, not starting with a digit, got ${typeof value === 'string' ? JSON.stringify(value) : describe(value)}.`)
  }
  return value
}

/** Why `value` is not an acceptable name string, or `undefined` when it is. */
function nameProblem(value: unknown, allowEmpty: boolean): string | undefined {
  if (typeof value !== 'string') return `must be a string, got ${describe(value)}`
  if (!allowEmpty && value.length === 0) return 'must not be empty'
  // A code point is one or two UTF-16 code units, so a longer string cannot fit; judging by the
  // length alone keeps a huge string from costing more than a short one.
  if (value.length > 2 * MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters, got a string of length ${value.length}`
  if (value.includes('\0')) return 'must not contain NUL characters (U+0000)'
  // A lone surrogate cannot be stored as UTF-8: databases would make two strings one lock.
  if (!value.isWellFormed()) return 'must be well-formed Unicode (it contains a lone surrogate)'
  const codePoints = value.length <= MAX_NAME_LENGTH ? value.length : [...value].length
  if (codePoints > MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters, got ${codePoints}`
  return undefined
}

/** Throws {@link InvalidLockNameError} unless `name` and `key` identify a lock. */
export function validateLockId(name: unknown, key: unknown): asserts name is string {
  const nameError = nameProblem(name, false)
  if (nameError) throw new InvalidLockNameError(`Lock name ${nameError}.`)
  const keyError = nameProblem(key, true)
  if (keyError) throw new InvalidLockNameError(`Lock key ${keyError}.`)
}

/** How a store gets `now`: from the database, from `Date.now()`, or from a {@link Clock}. */
export type ClockOption = 'database' | 'local' | Clock

/** Which acquire statement a store uses; `auto` picks native where the server supports it. */
export type StrategyOption = 'auto' | 'native' | 'emulated'

/** Options of `new LockStore(knex, options)`. */
export interface LockStoreOptions {
  /**
   * Who this store is. A store takes over, at once, locks whose row carries its own instance
   * name: give a restarted worker the name of the one it replaces (its hostname, a pod name) to
   * reclaim that worker's locks without waiting for them to time out. Two live stores must never
   * share a name, or each may take the other's locks.
   * @default a random name made for each store, so a restarted process waits `lockTimeoutMs`
   * for its predecessor's locks
   */
  instanceName?: string
  /** The lock table, created by the shipped migrations. @default 'worker_locks' */
  tableName?: string
  /** A lock whose row has not been renewed for this long may be taken by another worker; at least 2. @default 120_000 */
  lockTimeoutMs?: number
  /** How often held locks are renewed; must be less than `lockTimeoutMs`. @default 30_000 (or lockTimeoutMs / 4) */
  renewalIntervalMs?: number
  /** Which acquire statement to use. @default 'auto' */
  strategy?: StrategyOption
  /**
   * Where `now` comes from. `'database'` reads the database server's clock in each statement, so
   * workers with wrong clocks still agree; `'local'` uses `Date.now()`; a {@link Clock} drives
   * both `now` and the store's timers (see `ManualClock`).
   * @default 'database'
   */
  clock?: ClockOption
  /** Receives renewal failures, lost and leaked locks. @default silent */
  logger?: Logger
  /** How waits space their attempts. @default 100 ms doubling to 5 s, ±10 % jitter */
  backoff?: BackoffOptions
  /** A waiter that has waited this long logs a warning, then again every time as long. @default 600_000 */
  slowWaitWarningMs?: number
  /**
   * Whether a release waits until the database has it on disk. By default it does not where the
   * database can skip that for one transaction (PostgreSQL): a release lost in a crash only leaves
   * the lock held until its lease ends, as a crashed holder's does. Acquisitions and renewals are
   * always durable; SQLite and MySQL/MariaDB releases are as durable as every commit there.
   * @default false
   */
  durableReleases?: boolean
  /**
   * The longest any statement of the store may take, waiting for a connection of knex's pool
   * included: then it is cancelled (on SQLite, its wait for another writer is cut short) and the
   * call rejects with a `LockDatabaseError` saying what it waited for. A wait's attempts end at
   * the wait's deadline or signal sooner. Renewals have their own, shorter bound
   * (`renewalIntervalMs`, at least a second).
   * @default 30_000
   */
  statementTimeoutMs?: number
  /**
   * PostgreSQL: run the library's statements as named prepared statements, planned once per
   * server connection (faster: see bench/RESULTS.md). Only on a direct connection or a pooler
   * that keeps prepared statements (PgBouncer 1.21+ with `max_prepared_statements` set): behind a
   * transaction pooler without that, statements fail. Ignored by other databases.
   * @default false
   */
  preparedStatements?: boolean
}

/** Options of `acquireLock` and `withLock`. */
export interface WaitOptions {
  /** Give up with `LockTimeoutError` after this many milliseconds; 0 tries once. @default Infinity */
  timeoutMs?: number
  /** Give up with the signal's reason when it aborts. */
  signal?: AbortSignal
}

/** Options with every default filled in. */
export interface ResolvedOptions {
  readonly instanceName: string | undefined
  readonly tableName: string
  readonly lockTimeoutMs: number
  readonly renewalIntervalMs: number
  readonly strategy: StrategyOption
  readonly clock: ClockOption
  readonly logger: Logger | undefined
  readonly backoff: Backoff
  readonly slowWaitWarningMs: number
  readonly durableReleases: boolean
  readonly preparedStatements: boolean
  readonly statementTimeoutMs: number
}

const STORE_OPTIONS = ['instanceName', 'tableName', 'lockTimeoutMs', 'renewalIntervalMs', 'strategy', 'clock', 'logger', 'backoff', 'slowWaitWarningMs', 'durableReleases', 'preparedStatements', 'statementTimeoutMs']

function oneOf<T extends string>(what: string, value: unknown, allowed: readonly T[]): T {
  if (value === undefined) return allowed[0] as T
  if (!allowed.includes(value as T)) throw new TypeError(`${what} must be ${allowed.map((a) => `'${a}'`).join(', ')}, got ${typeof value === 'string' ? JSON.stringify(value) : describe(value)}.`)
  return value as T
}

function booleanOption(what: string, value: unknown, fallback: boolean): boolean {
  if (value !== undefined && typeof value !== 'boolean') throw new TypeError(`${what} must be true or false, got ${describe(value)}.`)
  return (value as boolean | undefined) ?? fallback
}

function clockOption(value: unknown): ClockOption {
  if (value === undefined || value === 'database' || value === 'local') return value ?? 'database'
  const c = value as Partial<Clock>
  if (typeof value === 'object' && typeof c.now === 'function' && typeof c.setTimeout === 'function' && typeof c.clearTimeout === 'function') return value as Clock
  throw new TypeError("LockStore option clock must be 'database', 'local' or an object with now(), setTimeout() and clearTimeout().")
}

/** The `backoff` option of a store, checked, with the defaults filled in. */
export function resolveBackoff(value: unknown): Backoff {
  const o = optionsObject(value, 'backoff', Object.keys(DEFAULT_BACKOFF))
  const ms = (name: 'initialDelayMs' | 'maxDelayMs'): number => wholeMs(`backoff option ${name}`, o[name], DEFAULT_BACKOFF[name], 1)
  const number = (name: 'multiplier' | 'jitter', min: number, max: number): number => {
    const v = o[name] ?? DEFAULT_BACKOFF[name]
    if (typeof v !== 'number' || Number.isNaN(v)) throw new TypeError(`backoff option ${name} must be a number, got ${describe(v)}.`)
    if (v < min || v > max) throw new RangeError(`backoff option ${name} must be between ${min} and ${max}, got ${v}.`)
    return v
  }
  const backoff = { initialDelayMs: ms('initialDelayMs'), maxDelayMs: ms('maxDelayMs'), multiplier: number('multiplier', 1, 100), jitter: number('jitter', 0, 1) }
  if (backoff.maxDelayMs < backoff.initialDelayMs) throw new RangeError(`backoff option maxDelayMs (${backoff.maxDelayMs}) must not be less than initialDelayMs (${backoff.initialDelayMs}).`)
  return backoff
}

/** Checks every option of a store and fills in the defaults; throws TypeError/RangeError naming the problem. */
export function resolveOptions(options: unknown): ResolvedOptions {
  const o = optionsObject(options, 'LockStore', STORE_OPTIONS)
  const lockTimeoutMs = wholeMs('LockStore option lockTimeoutMs', o.lockTimeoutMs, DEFAULT_LOCK_TIMEOUT_MS, 2)
  const renewalIntervalMs = wholeMs('LockStore option renewalIntervalMs', o.renewalIntervalMs, Math.min(30_000, Math.max(1, Math.floor(lockTimeoutMs / 4))), 1)
  if (renewalIntervalMs >= lockTimeoutMs) {
    throw new RangeError(`LockStore option renewalIntervalMs (${renewalIntervalMs}) must be less than lockTimeoutMs (${lockTimeoutMs}), or locks expire between renewals.`)
  }
  let instanceName: string | undefined
  if (o.instanceName !== undefined) {
    const problem = nameProblem(o.instanceName, false)
    if (problem) throw new TypeError(`LockStore option instanceName ${problem}.`)
    instanceName = o.instanceName as string
  }
  if (o.logger !== undefined && typeof o.logger !== 'object') throw new TypeError(`LockStore option logger must be an object such as console or a pino logger, got ${describe(o.logger)}.`)
  return {
    instanceName,
    tableName: o.tableName === undefined ? DEFAULT_TABLE_NAME : validateTableName(o.tableName, 'LockStore option tableName'),
    lockTimeoutMs,
    renewalIntervalMs,
    strategy: oneOf('LockStore option strategy', o.strategy, ['auto', 'native', 'emulated']),
    clock: clockOption(o.clock),
    logger: o.logger as Logger | undefined,
    backoff: resolveBackoff(o.backoff),
    slowWaitWarningMs: wholeMs('LockStore option slowWaitWarningMs', o.slowWaitWarningMs, 600_000, 1),
    durableReleases: booleanOption('LockStore option durableReleases', o.durableReleases, false),
    preparedStatements: booleanOption('LockStore option preparedStatements', o.preparedStatements, false),
    statementTimeoutMs: wholeMs('LockStore option statementTimeoutMs', o.statementTimeoutMs, 30_000, 1),
  }
}

/** A wait's deadline and signal, checked. */
export interface Wait {
  readonly timeoutMs: number
  readonly signal: AbortSignal | undefined
}

/** The wait options (`timeoutMs`, `signal`) among `o`, checked; `what` names the call. */
export function resolveWait(o: Record<string, unknown>, what: string): Wait {
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError(`${what} option signal must be an AbortSignal, got ${describe(o.signal)}.`)
  return { timeoutMs: wholeMs(`${what} option timeoutMs`, o.timeoutMs, Infinity, 0, Infinity), signal: o.signal }
}

/** Which rows `listLocks` returns: those whose fields equal every value given. */
export interface LockFilter {
  name?: string
  key?: string
  /** `''` lists the locks kept after their release (`release({ keepForMs })`), which have no holder. */
  instanceName?: string
}

/** Checks a `listLocks` filter; throws InvalidLockNameError or TypeError naming the problem. */
export function validateLockFilter(filter: unknown): LockFilter {
  const o = optionsObject(filter ?? {}, 'listLocks filter', ['name', 'key', 'instanceName'])
  for (const [field, value] of Object.entries(o)) {
    const problem = value === undefined ? undefined : nameProblem(value, field !== 'name')
    if (problem) throw new InvalidLockNameError(`listLocks filter ${field} ${problem}.`)
  }
  return o as LockFilter
}

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
   * readers in meanwhile. Ignored for readers.
   * @default true
   */
  blockNewReaders?: boolean
}

/** Options of `acquireMultiLock`. */
export interface MultiLockWaitOptions extends WaitOptions {
  /** As for `acquireReadWriteLock`, for the parts in write mode. @default true */
  blockNewReaders?: boolean
}

/** A read/write part, checked. */
export interface Part {
  readonly name: string
  readonly key: string
  readonly write: boolean
}

// A multi-lock is one transaction; this bounds how long it may hold key rows.
const MAX_PARTS = 1_000

function part(what: string, name: unknown, key: unknown, write: unknown): Part {
  validateLockId(name, key ?? '')
  if (typeof write !== 'boolean') throw new TypeError(`${what} needs write: true (the write side) or false (the read side), got ${describe(write)}.`)
  return { name, key: (key ?? '') as string, write }
}

/** The arguments of a read/write call: its part, and (waiting calls) the wait and `blockNewReaders`. */
export function resolveReadWrite(name: unknown, key: unknown, options: unknown, waits: boolean): { part: Part; wait: Wait; blockNewReaders: boolean } {
  if (options === undefined) throw new TypeError('A read/write lock needs options with write: true or false.')
  const o = optionsObject(options, 'read/write lock', waits ? ['write', 'timeoutMs', 'signal', 'blockNewReaders'] : ['write'])
  validateLockId(name, key)
  return { part: part('A read/write lock', name, key, o.write), wait: resolveWait(o, 'read/write lock'), blockNewReaders: booleanOption('Option blockNewReaders', o.blockNewReaders, true) }
}

/** A multi-lock's list, checked and merged: one part per distinct `(name, key)`, in the order first given, in write mode if any entry asks for it. */
export function resolveParts(list: unknown): Part[] {
  if (!Array.isArray(list)) throw new TypeError(`A multi-lock needs an array of { name, key, write }, got ${describe(list)}.`)
  if (list.length === 0) throw new RangeError('A multi-lock needs at least one lock.')
  if (list.length > MAX_PARTS) throw new RangeError(`A multi-lock takes at most ${MAX_PARTS} locks, got ${list.length}.`)
  const merged = new Map<string, Part>()
  for (const [index, entry] of list.entries()) {
    if (entry === undefined) throw new TypeError(`multi-lock entry ${index} must be an object, got undefined.`)
    const o = optionsObject(entry, `multi-lock entry ${index}`, ['name', 'key', 'write'])
    const p = part(`Multi-lock entry ${index}`, o.name, o.key, o.write)
    const id = `${p.name}\0${p.key}`
    merged.set(id, { ...p, write: p.write || merged.get(id)?.write === true })
  }
  return [...merged.values()]
}

/** `acquireMultiLock`'s options, checked. */
export function resolveMultiWait(options: unknown): { wait: Wait; blockNewReaders: boolean } {
  const o = optionsObject(options, 'multi-lock', ['timeoutMs', 'signal', 'blockNewReaders'])
  return { wait: resolveWait(o, 'multi-lock'), blockNewReaders: booleanOption('Option blockNewReaders', o.blockNewReaders, true) }
}
