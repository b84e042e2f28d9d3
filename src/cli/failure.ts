// Turning errors into the one line the CLI prints for people.
import { LockError, LockTableError } from '../index.js'
import { UsageError } from './args.js'
import { DatabaseUrlError } from './database.js'
import { printable, quoted } from './printable.js'

/** What `run` and the other commands tell people to do about a missing or unmigrated table. */
export const MIGRATE_HINT = '(run "worker-locks migrate" first)'

// Only messages that name the table (or a column of it) as missing; "database \"x\" does not
// exist" and "role \"x\" does not exist" are not cured by migrating.
const TABLE_MISSING = [
  /\brelation "[^"]*" does not exist/i, // PostgreSQL
  /\bcolumn "[^"]*"(?: of relation "[^"]*")? does not exist/i,
  /\bno such table\b/i, // SQLite
  /\bno such column\b/i,
  /\bhas no column named\b/i,
  /\bTable '[^']*' doesn't exist/i, // MySQL, MariaDB
  /\bUnknown column '[^']*'/i,
]

// Errors that mean the server was not there to ask, rather than that it refused the statement.
const CONNECTION_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH',
  'EPIPE', 'PROTOCOL_CONNECTION_LOST', '57P01', '57P02', '57P03',
])

/** The errors `error` wraps, itself first, following `cause` and the members of an AggregateError. */
function* chain(error: unknown, depth = 0): Generator<unknown> {
  if (depth > 8) return
  yield error
  if (error instanceof AggregateError) for (const member of error.errors) yield* chain(member, depth + 1)
  if (error instanceof Error && error.cause !== undefined) yield* chain(error.cause, depth + 1)
}

/** The innermost error `error` wraps: usually the driver's, which says what really happened. */
function rootCause(error: unknown): unknown {
  let current = error
  for (let depth = 0; current instanceof Error && current.cause !== undefined && depth < 8; depth++) current = current.cause
  return current
}

/** The first line of `error`'s message, without the SQL statement knex puts in front of the driver's reason. */
function firstLine(error: unknown): string {
  let message = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? ''
  // Node reports a refused connection to a name with several addresses as an AggregateError
  // without a message of its own.
  if (message === '' && error instanceof AggregateError) message = error.errors.map(firstLine).find((m) => m !== '') ?? ''
  if (message === '' && error instanceof Error) message = String((error as NodeJS.ErrnoException).code ?? error.name)
  // knex's form is "STATEMENT - REASON", the statement either first or after a "…: " of ours.
  const statement = message.match(/^((?:.*?: )?)(?:select|insert|update|delete|with|create|alter|pragma)\b.* - (.*)$/is)
  return printable(statement ? `${statement[1]}${statement[2]}` : message)
}

/** The driver's reason for `error`, in one line: what people need to see of a wrapped error. */
export function reasonOf(error: unknown): string {
  return firstLine(rootCause(error))
}

/** Whether `error` says the database could not be reached at all. */
export function isConnectionFailure(error: unknown): boolean {
  for (const e of chain(error)) {
    if (!(e instanceof Error)) continue
    const code = (e as NodeJS.ErrnoException).code
    if (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('08'))) return true
    if (e.name === 'KnexTimeoutError') return true
  }
  return false
}

/**
 * One line on a failed database statement: "could not reach the database" when it was not
 * there, with the driver's reason in brackets. `seconds`: how long it was tried.
 */
export function databaseTrouble(error: unknown, seconds?: number): string {
  const reason = reasonOf(error)
  if (isConnectionFailure(error)) return `could not reach the database${seconds === undefined ? '' : ` within ${seconds} s`} (${reason})`
  return `the database failed${seconds === undefined ? '' : ` for ${seconds} s`} (${reason})`
}

/** One line on a missing or unmigrated lock table, without the hint. */
export function tableTrouble(error: LockTableError): string {
  return `the lock table ${quoted(error.tableName)} is missing or not migrated (${reasonOf(error)})`
}

/** One line for people, never a stack trace. */
export function describeFailure(error: unknown): string {
  if (error instanceof UsageError || error instanceof DatabaseUrlError) return printable(error.message)
  if (error instanceof LockTableError) return `${tableTrouble(error)} ${MIGRATE_HINT}`
  const message = firstLine(error).replace(/^worker-locks /, '')
  if (error instanceof LockError && TABLE_MISSING.some((pattern) => pattern.test(message))) return `${message} ${MIGRATE_HINT}`
  return message
}
