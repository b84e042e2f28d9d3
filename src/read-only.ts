// Servers that take no writes: a standby, or a server, session or file set read-only. Said once
// by the server's facts before any lock work, or by a statement's failure later.
import type { Dialect, ServerFacts } from '../dialects/index.js'
import { ReadOnlyDatabaseError } from './errors.js'

/** The error for a server whose facts say it takes no writes (`facts.readOnly` not empty). */
export function readOnlyError(facts: ServerFacts): ReadOnlyDatabaseError {
  return new ReadOnlyDatabaseError(`worker-locks cannot write to ${facts.server}: ${facts.readOnly}.`, facts.standby)
}

/**
 * A statement's failure as a {@link ReadOnlyDatabaseError} when `dialect` says the server, session
 * or file refused it as read-only (it became a standby or read-only after the store asked), else
 * `undefined`: `LockTable.#call` throws it in place of a `LockDatabaseError`. `server` names it.
 */
export function readOnlyFailure(dialect: Dialect, error: unknown, server: string = dialect.name): ReadOnlyDatabaseError | undefined {
  if (!dialect.isReadOnly(error)) return undefined
  return new ReadOnlyDatabaseError(`worker-locks cannot write to ${server}: the server or session is read-only now (a standby, or read-only settings); the driver's error is the cause.`, false, { cause: error })
}
