import { resolveBackoff, type Backoff, type BackoffOptions } from './backoff.js'
import type { Clock } from './clock.js'
import { InvalidLockNameError } from './errors.js'
import type { Logger } from './logger.js'

/**
 * The longest lock name, lock key or instance name, in Unicode code points. 255 code points of
 * UTF-8 fit InnoDB's key limit for the two-column primary key on MySQL/MariaDB; the same limit
 * applies on every database so that code moves between them unchanged.
 */
export const MAX_NAME_LENGTH = 255

// PostgreSQL keeps identifiers of up to 63 bytes, MySQL 64. The table's name is also the stem of
// the names made from it (`_fence_seq`, `_released`, `_migrations_lock`), which must fit too.
const TABLE_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,47}$/

/** Milliseconds setTimeout can wait for; longer delays fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * How long a lock survives without renewal when no `lockTimeoutMs` is given: the library's
 * default, and `worker-locks run --lock-timeout`'s.
 */
export const DEFAULT_LOCK_TIMEOUT_MS = 120_000

// A renewal interval is at least 1 ms and must be shorter than the timeout.
const MIN_LOCK_TIMEOUT_MS = 2

/** The lock table's name when none is given. */
export const DEFAULT_TABLE_NAME = 'worker_locks'

/** Returns `value` if it is a plain SQL identifier; throws a TypeError naming `what` otherwise. */
export function validateTableName(value: unknown, what: string): string {
  if (typeof value !== 'string' || !TABLE_NAME_PATTERN.test(value)) {
    throw new TypeError(
      `${what} must be 1 to 48 letters, digits and underscores, not starting with a digit, got ${typeof value === 'string' ? JSON.stringify(value) : describe(value)}.`,
    )
  }
  return value
}

/** A value as error messages name it, without printing what may be huge or secret. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return `a string of length ${value.length}`
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value === 'number' ? `the number ${String(value)}` : `a value of type ${typeof value}`
}

/**
 * `value` as an options object with only the `known` keys: a TypeError names `what` when it is
 * not an object, and the first unknown key as an `option` otherwise.
 */
export function knownOptions(value: unknown, what: string, option: string, known: readonly string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError(`${what} must be an object, got ${describe(value)}.`)
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) throw new TypeError(`Unknown ${option} ${JSON.stringify(name)}; known options are ${known.join(', ')}.`)
  }
  return value as Record<string, unknown>
}

/** Why `value` is not an acceptable name string, or `undefined` when it is. */
function nameProblem(value: unknown, allowEmpty: boolean): string | undefined {
  if (typeof value !== 'string') return `must be a string, got ${describe(value)}`
  if (!allowEmpty && value.length === 0) return 'must not be empty'
  // A code point is one or two UTF-16 code units, so a longer string cannot fit; judging by the
  // length alone keeps a huge string from costing more than a short one.
  if (value.length > 2 * MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters, got a string of length ${value.length}`
  if (value.includes('\0')) return 'must not contain NUL characters (U+0000)'
  // A lone surrogate cannot be stored as UTF-8; databases would turn it into U+FFFD and two
  // different strings would become one lock.
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
  /**
   * A lock whose row has not been renewed for this long may be taken by another worker; at
   * least 2, so that a renewal interval fits inside it. @default 120_000
   */
  lockTimeoutMs?: number
  /** How often held locks are renewed; must be less than `lockTimeoutMs`. @default 30_000 */
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
  /** How `acquireLock`/`withLock` space their attempts. @default 100 ms doubling to 5 s, ±10 % jitter */
  backoff?: BackoffOptions
  /** A waiter that has waited this long logs a warning, then again every time as long. @default 600_000 */
  slowWaitWarningMs?: number
  /**
   * Whether a release waits until the database has it on disk. By default it does not where the
   * database can skip that for one transaction (PostgreSQL: `synchronous_commit` off for the
   * release alone): a release lost in a crash only leaves the lock looking held until its lease
   * ends, as a crashed holder's does. Acquisitions and renewals are always durable. SQLite and
   * MySQL/MariaDB releases are as durable as the connection's settings make every commit.
   * @default false
   */
  durableReleases?: boolean
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
}

const OPTION_NAMES: ReadonlySet<string> = new Set([
  'instanceName', 'tableName', 'lockTimeoutMs', 'renewalIntervalMs', 'strategy', 'clock', 'logger',
  'backoff', 'slowWaitWarningMs', 'durableReleases',
])

function positiveInteger(option: string, value: unknown, fallback: number, min = 1, why = ''): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new TypeError(`LockStore option ${option} must be an integer number of milliseconds, got ${describe(value)}.`)
  }
  if (value < min || value > MAX_TIMER_MS) {
    throw new RangeError(`LockStore option ${option} must be between ${min} and ${MAX_TIMER_MS} milliseconds${why}, got ${value}.`)
  }
  return value
}

function isClock(value: unknown): value is Clock {
  const c = value as Partial<Clock> | null
  return typeof c === 'object' && c !== null && typeof c.now === 'function'
    && typeof c.setTimeout === 'function' && typeof c.clearTimeout === 'function'
}

/** The options as a record of known names, none of them null (only a missing option means the default). */
function optionRecord(options: unknown): Record<string, unknown> {
  if (options === undefined) return {}
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new TypeError(`LockStore options must be an object, got ${describe(options)}.`)
  }
  const o = options as Record<string, unknown>
  for (const name of Object.keys(o)) {
    if (!OPTION_NAMES.has(name)) {
      throw new TypeError(`Unknown LockStore option ${JSON.stringify(name)}; known options are ${[...OPTION_NAMES].join(', ')}.`)
    }
    // null is a value someone computed, probably by mistake; only a missing option means the default.
    if (o[name] === null) throw new TypeError(`LockStore option ${name} must not be null; leave it out (or undefined) for the default.`)
  }
  const backoff = o.backoff
  if (typeof backoff === 'object' && backoff !== null) {
    for (const [name, value] of Object.entries(backoff)) {
      if (value === null) throw new TypeError(`LockStore option backoff.${name} must not be null; leave it out (or undefined) for the default.`)
    }
  }
  return o
}

function instanceNameOption(value: unknown): string | undefined {
  if (value === undefined) return undefined
  const problem = nameProblem(value, false)
  if (problem) throw new TypeError(`LockStore option instanceName ${problem}.`)
  return value as string
}

function timingOptions(o: Record<string, unknown>): { lockTimeoutMs: number; renewalIntervalMs: number } {
  const lockTimeoutMs = positiveInteger('lockTimeoutMs', o.lockTimeoutMs, DEFAULT_LOCK_TIMEOUT_MS, MIN_LOCK_TIMEOUT_MS, ' (a renewal interval must fit inside it)')
  const renewalDefault = Math.min(30_000, Math.max(1, Math.floor(lockTimeoutMs / 4)))
  const renewalIntervalMs = positiveInteger('renewalIntervalMs', o.renewalIntervalMs, renewalDefault)
  if (renewalIntervalMs >= lockTimeoutMs) {
    throw new RangeError(
      `LockStore option renewalIntervalMs (${renewalIntervalMs}) must be less than lockTimeoutMs (${lockTimeoutMs}), or locks expire between renewals.`,
    )
  }
  return { lockTimeoutMs, renewalIntervalMs }
}

function strategyOption(value: unknown): StrategyOption {
  if (value === undefined) return 'auto'
  if (value !== 'auto' && value !== 'native' && value !== 'emulated') {
    throw new TypeError(`LockStore option strategy must be 'auto', 'native' or 'emulated', got ${JSON.stringify(value)}.`)
  }
  return value
}

function clockOption(value: unknown): ClockOption {
  if (value === undefined) return 'database'
  if (value !== 'database' && value !== 'local' && !isClock(value)) {
    throw new TypeError("LockStore option clock must be 'database', 'local' or an object with now(), setTimeout() and clearTimeout().")
  }
  return value
}

function loggerOption(value: unknown): Logger | undefined {
  if (value !== undefined && (typeof value !== 'object' || value === null)) {
    throw new TypeError(`LockStore option logger must be an object such as console or a pino logger, got ${describe(value)}.`)
  }
  return value as Logger | undefined
}

/** Checks every option and fills in the defaults; throws TypeError/RangeError naming the problem. */
export function resolveOptions(options: unknown): ResolvedOptions {
  const o = optionRecord(options)
  return {
    instanceName: instanceNameOption(o.instanceName),
    tableName: o.tableName === undefined ? DEFAULT_TABLE_NAME : validateTableName(o.tableName, 'LockStore option tableName'),
    ...timingOptions(o),
    strategy: strategyOption(o.strategy),
    clock: clockOption(o.clock),
    logger: loggerOption(o.logger),
    backoff: resolveBackoff(o.backoff, 'LockStore option backoff'),
    slowWaitWarningMs: positiveInteger('slowWaitWarningMs', o.slowWaitWarningMs, 600_000),
    durableReleases: booleanOption('durableReleases', o.durableReleases, false),
  }
}

function booleanOption(option: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback
  if (typeof value !== 'boolean') throw new TypeError(`LockStore option ${option} must be true or false, got ${describe(value)}.`)
  return value
}

/** Checks the options of a waiting call; throws TypeError/RangeError naming the problem. */
export function resolveWaitOptions(options: unknown): { timeoutMs: number; signal: AbortSignal | undefined } {
  if (options === undefined) return { timeoutMs: Infinity, signal: undefined }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new TypeError(`Wait options must be an object, got ${describe(options)}.`)
  }
  const o = options as Record<string, unknown>
  for (const name of Object.keys(o)) {
    if (name !== 'timeoutMs' && name !== 'signal') throw new TypeError(`Unknown wait option ${JSON.stringify(name)}; known options are timeoutMs, signal.`)
  }
  return { timeoutMs: waitTimeout(o.timeoutMs), signal: waitSignal(o.signal) }
}

function waitTimeout(value: unknown): number {
  const timeoutMs = value === undefined ? Infinity : value
  if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || (Number.isFinite(timeoutMs) && !Number.isInteger(timeoutMs))) {
    throw new TypeError(`Wait option timeoutMs must be a whole number of milliseconds or Infinity, got ${describe(timeoutMs)}.`)
  }
  if (timeoutMs < 0 || (Number.isFinite(timeoutMs) && timeoutMs > MAX_TIMER_MS)) {
    throw new RangeError(`Wait option timeoutMs must be between 0 and ${MAX_TIMER_MS} (or Infinity), got ${timeoutMs}.`)
  }
  return timeoutMs
}

function waitSignal(value: unknown): AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) {
    throw new TypeError(`Wait option signal must be an AbortSignal, got ${describe(value)}.`)
  }
  return value
}

/** Which rows `listLocks` returns: those whose fields equal every value given. */
export interface LockFilter {
  name?: string
  key?: string
  instanceName?: string
}

/** Checks a `listLocks` filter; throws InvalidLockNameError or TypeError naming the problem. */
export function validateLockFilter(filter: unknown): LockFilter {
  if (typeof filter !== 'object' || filter === null || Array.isArray(filter)) {
    throw new TypeError(`listLocks filter must be an object, got ${describe(filter)}.`)
  }
  const checked: LockFilter = {}
  for (const [field, value] of Object.entries(filter)) {
    if (field !== 'name' && field !== 'key' && field !== 'instanceName') {
      throw new TypeError(`Unknown listLocks filter ${JSON.stringify(field)}; known filters are name, key, instanceName.`)
    }
    if (value === undefined) continue
    const problem = nameProblem(value, field === 'key')
    if (problem) throw new InvalidLockNameError(`listLocks filter ${field} ${problem}.`)
    checked[field] = value as string
  }
  return checked
}
