import { resolve } from 'node:path'
import knexFactory, { type Knex } from 'knex'
import { UsageError } from './args.js'
import { quoted } from './printable.js'

// knex prints pool and connection trouble itself; the CLI reports failures in one line instead.
const quiet = { warn() {}, error() {}, deprecate() {}, debug() {} }

/** Where the CLI's database is when neither --db nor DATABASE_URL says. */
export const DEFAULT_DATABASE = './worker-locks.sqlite'

/** A database URL the CLI cannot use: a usage error (exit 2); the message is for people. */
export class DatabaseUrlError extends UsageError {}

const FORMS = 'use postgres://…, mysql://…, sqlite:PATH, or a file path with a / or ending in .sqlite or .db'

/** The database the CLI was pointed at, checked but not yet opened. */
export interface DatabaseChoice {
  readonly client: 'pg' | 'mysql2' | 'better-sqlite3'
  /** The URL for pg and mysql2 (mariadb: written as mysql:), the file for SQLite. */
  readonly connection: string
  /** How messages name it: the URL with any password as ***, or sqlite: and the file's absolute path. */
  readonly display: string
  /** True when neither --db nor DATABASE_URL was given and the default file is used. */
  readonly implicit: boolean
}

/**
 * The database `--db` (else `DATABASE_URL`, else the default SQLite file) names. Anything that
 * is neither a postgres://, postgresql://, mysql:// or mariadb:// URL with a host, nor an
 * explicit SQLite form (sqlite:PATH, file:PATH, a path with a / or \, or one ending in .sqlite,
 * .sqlite3 or .db) is a DatabaseUrlError: a mistyped URL must never become a file of its own.
 */
export function chooseDatabase(db: string | undefined, environment: string | undefined): DatabaseChoice {
  if (db === undefined && environment === undefined) {
    return { client: 'better-sqlite3', connection: DEFAULT_DATABASE, display: `sqlite:${resolve(DEFAULT_DATABASE)}`, implicit: true }
  }
  const [source, url] = db !== undefined ? ['--db', db] : ['DATABASE_URL', environment ?? '']
  if (url.trim() === '') throw new DatabaseUrlError(`${source} is empty; ${FORMS}`)
  return databaseOf(url, `${source} ${quoted(maskPassword(url))}`)
}

/** The URL scheme of `url`, lower case, or undefined for a path (a Windows drive letter, C:\…, is one). */
function schemeOf(url: string): string | undefined {
  if (/^[a-z]:[\\/]/i.test(url)) return undefined
  return /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase()
}

/** The database `url` names (`named`: how to refer to it in an error). */
function databaseOf(url: string, named: string): DatabaseChoice {
  const scheme = schemeOf(url)
  if (scheme === 'postgres' || scheme === 'postgresql' || scheme === 'mysql' || scheme === 'mariadb') return serverDatabase(url, scheme, named)
  if (scheme === 'sqlite' || scheme === 'file') {
    const filename = url.replace(/^(sqlite|file):(\/\/)?/i, '')
    if (filename === '') throw new DatabaseUrlError(`${named} names no SQLite file; use sqlite:PATH`)
    return sqliteDatabase(filename)
  }
  if (scheme !== undefined) throw new DatabaseUrlError(`${named}: unsupported database URL scheme ${quoted(`${scheme}:`)}; ${FORMS}`)
  if (/[\\/]/.test(url) || /\.(sqlite3?|db)$/i.test(url)) return sqliteDatabase(url)
  throw new DatabaseUrlError(`${named} is not a database URL; ${FORMS}`)
}

function sqliteDatabase(filename: string): DatabaseChoice {
  return { client: 'better-sqlite3', connection: filename, display: `sqlite:${resolve(filename)}`, implicit: false }
}

/** A postgres or mysql URL that `new URL()` accepts and that names a host (or a socket). */
function serverDatabase(url: string, scheme: string, named: string): DatabaseChoice {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new DatabaseUrlError(`${named} is not a valid URL`)
  }
  const socket = parsed.searchParams.has('host') || parsed.searchParams.has('socketPath')
  if (parsed.hostname === '' && !socket) throw new DatabaseUrlError(`${named} names no host`)
  const server = scheme === 'postgres' || scheme === 'postgresql'
    ? { client: 'pg' as const, connection: url }
    : { client: 'mysql2' as const, connection: url.replace(/^mariadb:/i, 'mysql:') }
  return { ...server, display: maskPassword(url), implicit: false }
}

/** `url` with the password of its user part, and any password= parameter, written as ***. */
export function maskPassword(url: string): string {
  const start = url.indexOf('//')
  let masked = url
  if (start >= 0) {
    const rest = url.slice(start + 2)
    const end = rest.search(/[/?#]/)
    const authority = end < 0 ? rest : rest.slice(0, end)
    const at = authority.lastIndexOf('@')
    const colon = authority.indexOf(':')
    if (at >= 0 && colon >= 0 && colon < at - 1) {
      masked = `${url.slice(0, start + 2)}${authority.slice(0, colon)}:***${authority.slice(at)}${rest.slice(authority.length)}`
    }
  }
  return masked.replace(/([?&]password=)[^&#]*/gi, '$1***')
}

/**
 * A knex instance for `database`. SQLite files run in WAL mode with a busy timeout, as several
 * processes share them. Throws knex's error when the driver package cannot be loaded.
 */
export function openDatabase(database: DatabaseChoice): Knex {
  if (database.client !== 'better-sqlite3') {
    return knexFactory({ client: database.client, connection: database.connection, pool: { min: 0, max: 2 }, log: quiet })
  }
  return knexFactory({
    client: 'better-sqlite3',
    connection: { filename: database.connection },
    useNullAsDefault: true,
    log: quiet,
    pool: {
      min: 0,
      max: 2,
      afterCreate(conn: { pragma(sql: string): unknown }, done: (error: Error | null, conn: unknown) => void) {
        conn.pragma('journal_mode = WAL')
        conn.pragma('busy_timeout = 5000')
        done(null, conn)
      },
    },
  })
}
