import knexFactory, { type Knex } from 'knex'

// knex prints pool and connection trouble itself; the CLI reports failures in one line instead.
const quiet = { warn() {}, error() {}, deprecate() {}, debug() {} }

/** Where the CLI's database is when neither --db nor DATABASE_URL says. */
export const DEFAULT_DATABASE = './worker-locks.sqlite'

/** A database URL the CLI cannot use; the message is for people. */
export class DatabaseUrlError extends Error {}

/**
 * Turns `postgres://…`, `mysql://…`, `sqlite:PATH` or a plain file path into a knex instance.
 * SQLite files run in WAL mode with a busy timeout, as several processes share them.
 */
export function openDatabase(url: string): Knex {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase()
  if (scheme === 'postgres' || scheme === 'postgresql') return knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 2 }, log: quiet })
  if (scheme === 'mysql' || scheme === 'mariadb') {
    return knexFactory({ client: 'mysql2', connection: url.replace(/^mariadb:/i, 'mysql:'), pool: { min: 0, max: 2 }, log: quiet })
  }
  // A Windows drive letter (C:\…) is a path, not a scheme.
  if (scheme === undefined || scheme === 'sqlite' || scheme === 'file' || /^[a-z]:[\\/]/i.test(url)) return openSqlite(url, scheme)
  throw new DatabaseUrlError(`unsupported database URL scheme ${JSON.stringify(`${scheme}:`)}; use postgres://, mysql://, sqlite:PATH or a file path`)
}

/** The SQLite file `url` names (`sqlite:PATH`, `file:PATH` or a plain path), in WAL mode with a busy timeout. */
function openSqlite(url: string, scheme: string | undefined): Knex {
  const filename = scheme === 'sqlite' || scheme === 'file' ? url.replace(/^(sqlite|file):(\/\/)?/i, '') : url
  if (filename === '') throw new DatabaseUrlError(`the SQLite URL ${JSON.stringify(url)} names no file; use sqlite:PATH`)
  return knexFactory({
    client: 'better-sqlite3',
    connection: { filename },
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
