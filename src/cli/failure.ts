// The one-line messages the CLI prints for people: errors, and text from the database made safe.
import { LockDatabaseError, LockError, LockTableError } from '../index.js'
import { UsageError } from './args.js'

/** Prints `message` as one line of ours on stderr. */
export const say = (message: string): void => { console.error(`worker-locks: ${message}`) }

/** What the commands tell people to do about a missing or unmigrated table. */
export const MIGRATE_HINT = '(run "worker-locks migrate" first)'

// C0 and C1 controls, DEL, and the two Unicode line separators some terminals and editors obey.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g
const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * `text` with every control character escaped (`\n`, `\x1b`, `\u2028`): names, keys and holders
 * come from the database, where anyone may have put anything, and must not start a new line or
 * send the terminal an escape sequence.
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => {
    const code = c.charCodeAt(0)
    return NAMED[c] ?? (code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16)}`)
  })
}

/** `JSON.stringify(text)`, with the control characters JSON leaves alone escaped too. */
export function quoted(text: string): string {
  return printable(JSON.stringify(text))
}

// Errors that mean the server was not there to ask, rather than that it refused the statement.
const CONNECTION_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT',
  'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'PROTOCOL_CONNECTION_LOST', '57P01', '57P02', '57P03'])

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

/** The reason of the innermost error `error` wraps (usually the driver's), in one line. */
export function reasonOf(error: unknown): string {
  let root = error
  for (let depth = 0; root instanceof Error && root.cause !== undefined && depth < 8; depth++) root = root.cause
  return firstLine(root)
}

/** Whether `error`, or an error it wraps (its cause, an AggregateError's members), says the database was not there to ask. */
function isConnectionFailure(error: unknown, depth = 0): boolean {
  if (!(error instanceof Error) || depth > 8) return false
  const code = (error as NodeJS.ErrnoException).code
  if (error.name === 'KnexTimeoutError' || (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('08')))) return true
  return [...(error instanceof AggregateError ? error.errors : []), error.cause].some((e) => isConnectionFailure(e, depth + 1))
}

/** A failed statement in `database`, tried for `seconds` if given: unreachable, or failed, with the driver's reason. */
export function databaseTrouble(error: unknown, seconds: number | undefined, database: string): string {
  const reason = reasonOf(error)
  if (isConnectionFailure(error)) return `could not reach the database ${database}${seconds === undefined ? '' : ` within ${seconds} s`} (${reason})`
  return `the database ${database} failed${seconds === undefined ? '' : ` for ${seconds} s`} (${reason})`
}

/** A missing or unmigrated lock table in `database`, without the hint. */
export function tableTrouble(error: LockTableError, database: string): string {
  return `the lock table ${quoted(error.tableName)} in ${database} is missing or not migrated (${reasonOf(error)})`
}

/** knex's error on a driver it could not load: which package to install, or why it did not load; else undefined. */
export function driverTrouble(error: unknown): string | undefined {
  // knex's form: "Knex: run\n$ npm install PACKAGE --save\nREASON".
  const match = error instanceof Error ? /^Knex: run\n\$ npm install (\S+) --save\n(.*)/s.exec(error.message) : null
  if (!match) return undefined
  const pkg = printable(match[1] ?? '')
  const reason = match[2] ?? ''
  if (/Cannot find (?:module|package) '([^']*)'/.exec(reason)?.[1] === match[1]) return `the ${pkg} package is not installed; npm install ${pkg}`
  return `the ${pkg} package could not be loaded (${printable(reason.split('\n')[0] ?? '')})`
}

/** One line for people, never a stack trace; `database` names the database the failure happened in. */
export function describeFailure(error: unknown, database?: string): string {
  if (error instanceof UsageError) return printable(error.message)
  const driver = driverTrouble(error)
  if (driver !== undefined) return driver
  if (error instanceof LockTableError) return `${tableTrouble(error, database ?? 'the database')} ${MIGRATE_HINT}`
  if (database !== undefined && isConnectionFailure(error)) return databaseTrouble(error, undefined, database)
  // Invalid names and the like are not the database's business; its failures name it.
  const where = database === undefined || (error instanceof LockError && !(error instanceof LockDatabaseError)) ? '' : `${database}: `
  return `${where}${firstLine(error).replace(/^worker-locks /, '')}`
}
