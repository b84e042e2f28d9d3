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

/**
 * The wait before the next attempt after `grown` full-length waits: exponential from
 * `initialDelayMs`, capped, then spread by the jitter and capped again, so it never exceeds
 * `maxDelayMs`. `random` returns a number in [0, 1).
 */
export function backoffDelay(backoff: Backoff, grown: number, random: () => number = Math.random): number {
  // The exponent stops growing once the cap is reached, so the number never overflows.
  const base = Math.min(backoff.maxDelayMs, backoff.initialDelayMs * backoff.multiplier ** Math.min(grown, 64))
  const spread = base * backoff.jitter * (2 * random() - 1)
  return Math.max(1, Math.min(backoff.maxDelayMs, Math.round(base + spread)))
}
