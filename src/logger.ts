/**
 * Where worker-locks reports what it cannot throw (renewal failures, leaked locks). Any object
 * with some of these methods works: `console`, a pino or bunyan logger. Each is called as
 * `(details, message)`, pino's order; `console` prints both.
 */
export interface Logger {
  debug?(details: object, message: string): void
  info?(details: object, message: string): void
  warn?(details: object, message: string): void
  error?(details: object, message: string): void
}

/** The levels worker-locks logs at. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** How the parts of a store log: to its logger, if it has one. */
export type Log = (level: LogLevel, details: object, message: string) => void

/** Calls a logger without letting a faulty one break the caller (a renewal must go on). */
export function logTo(logger: Logger | undefined, level: LogLevel, details: object, message: string): void {
  const method = logger?.[level]
  if (typeof method !== 'function') return
  try {
    method.call(logger, details, message)
  } catch {
    // A throwing logger has nowhere to report to; the lock work matters more.
  }
}
