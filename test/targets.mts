// Which (database × strategy) pairs a test run covers, and how to connect to each.
// DIALECTS=sqlite,postgres,mysql picks databases (default: all). Connection URLs come from
// POSTGRES_URL and MYSQL_URL. Without CI=true an unreachable server is skipped loudly; with
// CI=true it fails the run.
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import knexFactory, { type Knex } from 'knex'

export type Database = 'sqlite' | 'postgres' | 'mysql'
export type StrategyName = 'native' | 'emulated'

export const POSTGRES_URL = process.env.POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
export const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
export const inCI = process.env.CI === 'true' || process.env.CI === '1'

/** A name unique to this test run, for tables and files shared with everything else on the machine. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`
}

/** The SQLite file of this test run; a child process is handed its parent's in WL_SQLITE_FILE. */
export const sqliteFile = process.env.WL_SQLITE_FILE ?? join(tmpdir(), `${uniqueName('worker_locks_test')}.sqlite`)
if (process.env.WL_SQLITE_FILE === undefined) {
  process.on('exit', () => {
    for (const suffix of ['', '-wal', '-shm']) rmSync(sqliteFile + suffix, { force: true })
  })
}

/** Extra connection settings a test may ask for (mysql2 flags, say). */
export interface ConnectionTweaks {
  mysqlFlags?: string[]
  poolMax?: number
  /** A statement each new connection runs first (session settings; on SQLite, after the pragmas below). */
  sessionSql?: string
  /** SQLite only: open the file read-only. */
  sqliteReadonly?: boolean
  /** MySQL only: mysql2's `charset` option (the connection's character set and collation). */
  mysqlCharset?: string
  /** PostgreSQL only: connect to this URL instead of POSTGRES_URL (a connection pooler's, say). */
  postgresUrl?: string
  /** PostgreSQL and MySQL: connect to this port of the usual host (a proxy's, say). */
  port?: number
  /**
   * PostgreSQL only: the pool's connections swallow a listener's probe (its NOTIFY is not sent),
   * as a transaction pooler makes it miss the listening session. The listener's own connection,
   * outside the pool, is untouched.
   */
  swallowProbes?: boolean
}

type Callback = (error: Error | null, connection: unknown) => void
function runOnConnect(sql: string | undefined) {
  if (sql === undefined) return {}
  return {
    afterCreate(conn: { query(sql: string, cb: (error: Error | null) => void): void }, done: Callback) {
      conn.query(sql, (error) => done(error, conn))
    },
  }
}

function swallowingProbes() {
  return {
    afterCreate(conn: { query: (config: unknown, ...rest: unknown[]) => unknown }, done: Callback) {
      const query = conn.query.bind(conn)
      conn.query = (config: unknown, ...rest: unknown[]) => {
        const values = (config as { values?: unknown[] } | null)?.values
        const probe = values?.some((value) => typeof value === 'string' && value.startsWith('wl_probe_'))
        return query(probe ? { text: 'SELECT 1', values: [] } : config, ...rest)
      }
      done(null, conn)
    },
  }
}

/** A new knex instance for `database`; the caller destroys it. */
/** `url` with its port replaced by `port`, if given. */
function withPort(url: string, port: number | undefined): string {
  if (port === undefined) return url
  const parsed = new URL(url)
  parsed.port = String(port)
  return parsed.href
}

/** The port of `database`'s server in the usual URLs. */
export const serverPort = (database: 'postgres' | 'mysql'): number =>
  Number(new URL(database === 'postgres' ? POSTGRES_URL : MYSQL_URL).port || (database === 'postgres' ? 5432 : 3306))

export function connect(database: Database, tweaks: ConnectionTweaks = {}): Knex {
  const pool = { min: 0, max: tweaks.poolMax ?? 4 }
  switch (database) {
    case 'sqlite':
      return knexFactory({
        client: 'better-sqlite3',
        connection: { filename: sqliteFile, ...(tweaks.sqliteReadonly ? { options: { readonly: true } } : {}) },
        useNullAsDefault: true,
        // As applications run SQLite: WAL, several connections, a busy timeout.
        pool: {
          ...pool,
          afterCreate(conn: { pragma(s: string): unknown; exec(sql: string): unknown }, done: Callback) {
            if (!tweaks.sqliteReadonly) conn.pragma('journal_mode = WAL')
            conn.pragma('busy_timeout = 5000')
            if (tweaks.sessionSql !== undefined) conn.exec(tweaks.sessionSql)
            done(null, conn)
          },
        },
      })
    case 'postgres':
      return knexFactory({
        client: 'pg',
        connection: { connectionString: withPort(tweaks.postgresUrl ?? POSTGRES_URL, tweaks.port), connectionTimeoutMillis: 3000 },
        pool: { ...pool, ...(tweaks.swallowProbes ? swallowingProbes() : runOnConnect(tweaks.sessionSql)) },
      })
    case 'mysql': {
      const url = new URL(MYSQL_URL)
      return knexFactory({
        client: 'mysql2',
        connection: {
          host: url.hostname, port: tweaks.port ?? Number(url.port || 3306), user: decodeURIComponent(url.username),
          password: decodeURIComponent(url.password), database: url.pathname.slice(1), connectTimeout: 3000,
          ...(tweaks.mysqlFlags ? { flags: tweaks.mysqlFlags } : {}), ...(tweaks.mysqlCharset ? { charset: tweaks.mysqlCharset } : {}),
        },
        pool: { ...pool, ...runOnConnect(tweaks.sessionSql) },
      })
    }
  }
}

/** One pair of the matrix. */
export interface Target {
  readonly id: string
  readonly database: Database
  readonly strategy: StrategyName
}

const ALL: readonly Database[] = ['sqlite', 'postgres', 'mysql']

function requestedDatabases(): Database[] {
  const raw = process.env.DIALECTS?.trim()
  if (!raw) return [...ALL]
  const names = raw.split(',').map((s) => s.trim()).filter(Boolean)
  for (const name of names) {
    if (!(ALL as readonly string[]).includes(name)) throw new Error(`DIALECTS names an unknown database ${JSON.stringify(name)}; use ${ALL.join(', ')}.`)
  }
  return names as Database[]
}

/** Why `database` cannot be reached, or undefined when it answers. */
async function unreachable(database: Database): Promise<string | undefined> {
  const knex = connect(database, { poolMax: 1 })
  try {
    await knex.raw('SELECT 1')
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  } finally {
    await knex.destroy()
  }
}

export interface Matrix {
  readonly targets: readonly Target[]
  /** Databases asked for but not reachable, with the reason. */
  readonly missing: ReadonlyArray<{ database: Database; reason: string }>
}

/** The pairs to run, after asking each requested server whether it answers. */
export async function resolveMatrix(): Promise<Matrix> {
  const targets: Target[] = []
  const missing: Array<{ database: Database; reason: string }> = []
  for (const database of requestedDatabases()) {
    const reason = await unreachable(database)
    if (reason !== undefined) {
      missing.push({ database, reason })
      continue
    }
    for (const strategy of ['native', 'emulated'] as const) targets.push({ id: `${database}/${strategy}`, database, strategy })
  }
  return { targets, missing }
}
