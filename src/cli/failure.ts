// Turning errors into the one line the CLI prints for people.
import { LockDatabaseError, LockError, LockTableError } from '../index.js'
import { UsageError } from './args.js'
import { DatabaseUrlError } from './database.js'
import { printable, quoted } from './printable.js'

/** What `run` and the other commands tell people to do about a missing or unmigrated table. */
export const MIGRATE_HINT = '(run "worker-locks migrate" first)'

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
 * One line on a failed database statement: "could not reach the database DB" when it was not
 * there, with the driver's reason in brackets. `seconds`: how long it was tried; `database`:
 * how to name the database (its URL, password masked).
 */
export function databaseTrouble(error: unknown, seconds: number | undefined, database: string): string {
  const reason = reasonOf(error)
  if (isConnectionFailure(error)) return `could not reach the database ${database}${seconds === undefined ? '' : ` within ${seconds} s`} (${reason})`
  return `the database ${database} failed${seconds === undefined ? '' : ` for ${seconds} s`} (${reason})`
}

/** One line on a missing or unmigrated lock table in `database`, without the hint. */
export function tableTrouble(error: LockTableError, database: string): string {
  return `the lock table ${quoted(error.tableName)} in ${database} is missing or not migrated (${reasonOf(error)})`
}

// knex's error when it cannot load a driver: "Knex: run\n$ npm install PACKAGE --save\nREASON".
const DRIVER_NOT_LOADED = /^Knex: run\n\$ npm install (\S+) --save\n(.*)/s

/**
 * One complete line for knex's error on a driver it could not load: which package to install
 * when it is not installed, else the package and why it did not load. Undefined for other errors.
 */
export function driverTrouble(error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined
  const match = DRIVER_NOT_LOADED.exec(error.message)
  if (!match) return undefined
  const [, pkg = '', reason = ''] = match
  const escaped = pkg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  if (new RegExp(`Cannot find (module|package) '${escaped}'`).test(reason)) return `the ${printable(pkg)} package is not installed; npm install ${printable(pkg)}`
  return `the ${printable(pkg)} package could not be loaded (${printable(reason.split('\n')[0] ?? '')})`
}

/**
 * One line for people, never a stack trace. `database`, when given, names the database the
 * failure happened in (usage errors and driver trouble do not need it).
 */
export function describeFailure(error: unknown, database?: string): string {
  if (error instanceof UsageError || error instanceof DatabaseUrlError) return printable(error.message)
  const driver = driverTrouble(error)
  if (driver !== undefined) return driver
  if (error instanceof LockTableError) return `${tableTrouble(error, database ?? 'the database')} ${MIGRATE_HINT}`
  if (database !== undefined && isConnectionFailure(error)) return databaseTrouble(error, undefined, database)
  const message = firstLine(error).replace(/^worker-locks /, '')
  // Invalid names and the like are not the database's business; its failures name it.
  const where = database === undefined || (error instanceof LockError && !(error instanceof LockDatabaseError)) ? '' : `${database}: `
  return `${where}${message}`
}
