// The one-line messages the CLI prints for people: errors, and text from the database made safe.
import { InvalidLockNameError, LockTableError } from '../index.js'
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

// What the server said in each error of a statement run through knex (migrations), whose message
// is "SQL - REASON".
const reasons = new WeakMap<object, string>()

/** Notes the server's reason in `error`, thrown by `sql` (as knex reports it with `compileSqlOnError: false`). */
export function statementFailed(error: unknown, sql: string): void {
  if (error instanceof Error && error.message.startsWith(`${sql} - `)) reasons.set(error, error.message.slice(sql.length + 3))
}

// MySQL/MariaDB: triggers need SUPER while binary logging is on, unless the server trusts them.
const TRIGGER_FIX = 'to fix: set log_bin_trust_function_creators = 1 on the server (on every node of a cluster), or run "worker-locks migrate" as a user with SUPER'

/**
 * `error`'s whole message, without the SQL knex puts in front of the server's reason (a cause's
 * message embedded in it too), with PostgreSQL's DETAIL and HINT, and the fix where we know it.
 */
function whole(error: unknown, depth = 0): string {
  if (!(error instanceof Error)) return String(error)
  const e = error as Error & { code?: unknown, errno?: unknown, sqlMessage?: unknown, detail?: unknown, hint?: unknown }
  // mysql2 keeps the server's text apart.
  let message = reasons.get(error) ?? (typeof e.sqlMessage === 'string' ? e.sqlMessage : e.message)
  // Node reports a refused connection to a name with several addresses as an AggregateError
  // without a message of its own.
  if (message === '' && error instanceof AggregateError) message = error.errors.map((m) => whole(m, depth + 1)).find((m) => m !== '') ?? ''
  if (message === '') message = String(e.code ?? e.name)
  // The library's messages end with their cause's, which may carry the statement.
  const cause = error.cause
  if (cause instanceof Error && cause.message !== '' && depth < 8) message = message.replace(cause.message, () => whole(cause, depth + 1))
  for (const [label, text] of [['DETAIL', e.detail], ['HINT', e.hint]]) if (typeof text === 'string' && text !== '') message += `; ${label}: ${text}`
  if (e.errno === 1419 || (e.errno === 1227 && /\btrigger\b/i.test(e.message))) message += `; ${TRIGGER_FIX}`
  return message
}

/** `error`'s whole message in one line: newlines folded, control characters escaped, no SQL of ours. */
const oneLine = (error: unknown): string => printable(whole(error).replace(/\s*[\r\n]+\s*/g, ' ').trim())

/** The reason of the innermost error `error` wraps (usually the driver's), in one line. */
export function reasonOf(error: unknown): string {
  let root = error
  for (let depth = 0; root instanceof Error && root.cause !== undefined && depth < 8; depth++) root = root.cause
  return oneLine(root)
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
  // An invalid name is not the database's business; everything else (any LockError: a read-only
  // server, say) happened in it, and names it.
  const where = database === undefined || error instanceof InvalidLockNameError ? '' : `${database}: `
  return `${where}${oneLine(error).replace(/^worker-locks /, '')}`
}
