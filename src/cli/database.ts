import { resolve } from 'node:path'
import knexFactory, { type Knex } from 'knex'
import { UsageError } from './args.js'
import { quoted, statementFailed } from './failure.js'

// knex prints pool and connection trouble itself; the CLI reports failures in one line instead.
const quiet = { warn() {}, error() {}, deprecate() {}, debug() {} }

/** Where the CLI's database is when neither --db nor DATABASE_URL says. */
export const DEFAULT_DATABASE = './worker-locks.sqlite'

const FORMS = 'use postgres://…, mysql://…, sqlite:PATH, or a file path with a / or ending in .sqlite or .db'

/** The database the CLI was pointed at, checked but not yet opened. */
export interface DatabaseChoice {
  readonly client: 'pg' | 'mysql2' | 'better-sqlite3'
  /** The URL for pg and mysql2 (mariadb: written as mysql:), the file for SQLite. */
  readonly connection: string
  /** How messages name it: the URL with any password as ***, or sqlite: and the file's absolute path. */
  readonly display: string
  /** Whether it is the default file, neither --db nor DATABASE_URL being given. */
  readonly implicit: boolean
}

/**
 * The database `--db` (else `DATABASE_URL`, else the default SQLite file) names. Anything but a
 * postgres:, postgresql:, mysql: or mariadb: URL with a host, or an explicit SQLite form (sqlite:PATH,
 * file:PATH, a path with a / or \, or ending in .sqlite, .sqlite3 or .db) is a UsageError: a
 * mistyped URL must never become a file of its own.
 */
export function chooseDatabase(db: string | undefined, environment: string | undefined): DatabaseChoice {
  if (db === undefined && environment === undefined) return { ...sqlite(DEFAULT_DATABASE), implicit: true }
  const [source, url] = db !== undefined ? ['--db', db] : ['DATABASE_URL', environment ?? '']
  if (url.trim() === '') throw new UsageError(`${source} is empty; ${FORMS}`)
  const named = `${source} ${quoted(maskPassword(url))}`
  // A Windows drive letter (C:\…) is a path, not a scheme.
  const scheme = /^[a-z]:[\\/]/i.test(url) ? undefined : /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase()
  if (scheme === 'postgres' || scheme === 'postgresql' || scheme === 'mysql' || scheme === 'mariadb') return server(url, scheme, named)
  if (scheme === 'sqlite' || scheme === 'file') {
    const filename = url.replace(/^(sqlite|file):(\/\/)?/i, '')
    if (filename === '') throw new UsageError(`${named} names no SQLite file; use sqlite:PATH`)
    return sqlite(filename)
  }
  if (scheme !== undefined) throw new UsageError(`${named}: unsupported database URL scheme ${quoted(`${scheme}:`)}; ${FORMS}`)
  if (/[\\/]/.test(url) || /\.(sqlite3?|db)$/i.test(url)) return sqlite(url)
  throw new UsageError(`${named} is not a database URL; ${FORMS}`)
}

function sqlite(filename: string): DatabaseChoice {
  return { client: 'better-sqlite3', connection: filename, display: `sqlite:${resolve(filename)}`, implicit: false }
}

/** A postgres or mysql URL that `new URL()` accepts and that names a host (or a socket). */
function server(url: string, scheme: string, named: string): DatabaseChoice {
  if (!URL.canParse(url)) throw new UsageError(`${named} is not a valid URL`)
  const parsed = new URL(url)
  const socket = parsed.searchParams.has('host') || parsed.searchParams.has('socketPath')
  if (parsed.hostname === '' && !socket) throw new UsageError(`${named} names no host`)
  const pg = scheme === 'postgres' || scheme === 'postgresql'
  return { client: pg ? 'pg' : 'mysql2', connection: pg ? url : url.replace(/^mariadb:/i, 'mysql:'), display: maskPassword(url), implicit: false }
}

/** `url` with the password of its user part, and any password= parameter, written as ***. */
export function maskPassword(url: string): string {
  // The password runs from the user's first colon to the authority's last @ (URLs that `new URL()`
  // rejects included: they are named in the error).
  return url.replace(/^([^/]*\/\/[^/?#:]*:)[^/?#]+@/, '$1***@').replace(/([?&]password=)[^&#]*/gi, '$1***')
}

/** A knex instance for `database`; SQLite files, shared by several processes, run in WAL mode with a busy timeout. */
export function openDatabase({ client, connection }: DatabaseChoice): Knex {
  const sqlite = client === 'better-sqlite3'
  const afterCreate = (conn: { pragma(sql: string): unknown }, done: (error: Error | null, conn: unknown) => void): void => {
    conn.pragma('journal_mode = WAL')
    conn.pragma('busy_timeout = 5000')
    done(null, conn)
  }
  // Without its values, the statement knex puts in front of a server's reason in a failed
  // statement's message is the one it reports, so the two can be told apart.
  const knex = knexFactory({ client, connection: sqlite ? { filename: connection } : connection, useNullAsDefault: sqlite,
    log: quiet, compileSqlOnError: false, pool: { min: 0, max: 2, ...sqlite ? { afterCreate } : {} } })
  knex.on('query-error', (error: unknown, query: { sql: string }) => { statementFailed(error, query.sql) })
  return knex
}
