/** How a waiter spaces its attempts while a lock is busy. */
export interface BackoffOptions {
  /** The first wait after a refused attempt. @default 100 */
  initialDelayMs?: number
  /** The longest wait between attempts, jitter included. @default 5_000 */
  maxDelayMs?: number
  /** Each wait that ran its full length makes the next this many times longer. @default 2 */
  multiplier?: number
  /** Random spread as a fraction of the delay (0.1 = ±10 %), applied inside the cap. @default 0.1 */
  jitter?: number
}

/** Backoff options with every default filled in. */
export type Backoff = Required<BackoffOptions>

export const DEFAULT_BACKOFF: Backoff = { initialDelayMs: 100, maxDelayMs: 5_000, multiplier: 2, jitter: 0.1 }

const MAX_TIMER_MS = 2 ** 31 - 1

/** Checks backoff options and fills in the defaults; throws TypeError/RangeError naming the problem. */
export function resolveBackoff(options: unknown, what: string): Backoff {
  if (options === undefined) return DEFAULT_BACKOFF
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new TypeError(`${what} must be an object.`)
  const o = options as Record<string, unknown>
  for (const name of Object.keys(o)) {
    if (!Object.hasOwn(DEFAULT_BACKOFF, name)) throw new TypeError(`Unknown ${what} option ${JSON.stringify(name)}; known options are ${Object.keys(DEFAULT_BACKOFF).join(', ')}.`)
  }
  const initialDelayMs = backoffNumber(o, what, 'initialDelayMs', 1, MAX_TIMER_MS, true)
  const maxDelayMs = backoffNumber(o, what, 'maxDelayMs', 1, MAX_TIMER_MS, true)
  if (maxDelayMs < initialDelayMs) throw new RangeError(`${what}.maxDelayMs (${maxDelayMs}) must not be less than initialDelayMs (${initialDelayMs}).`)
  return { initialDelayMs, maxDelayMs, multiplier: backoffNumber(o, what, 'multiplier', 1, 100, false), jitter: backoffNumber(o, what, 'jitter', 0, 1, false) }
}

function backoffNumber(o: Record<string, unknown>, what: string, name: keyof Backoff, min: number, max: number, integer: boolean): number {
  const value = o[name] === undefined ? DEFAULT_BACKOFF[name] : o[name]
  if (typeof value !== 'number' || Number.isNaN(value) || (integer && !Number.isInteger(value))) {
    throw new TypeError(`${what}.${name} must be ${integer ? 'an integer' : 'a number'}, got ${String(value)}.`)
  }
  if (value < min || value > max) throw new RangeError(`${what}.${name} must be between ${min} and ${max}, got ${value}.`)
  return value
}

/**
 * The wait before the next attempt after `grown` full-length waits: exponential from
 * `initialDelayMs`, capped, then spread by the jitter and capped again, so it never exceeds
 * `maxDelayMs` however long the wait. `random` returns a number in [0, 1).
 */
export function backoffDelay(backoff: Backoff, grown: number, random: () => number = Math.random): number {
  // The exponent stops growing once the cap is reached, so the number never overflows.
  const base = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * backoff.multiplier ** Math.min(grown, 64))
  const spread = base * backoff.jitter * (2 * random() - 1)
  return Math.max(1, Math.min(backoff.maxDelayMs, Math.round(base + spread)))
}
