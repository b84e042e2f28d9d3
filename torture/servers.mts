// What the harness does to the database servers themselves: kill one worker's connections,
// restart the server, and a login per worker slot on MySQL/MariaDB so that KILL hits only the
// torture workers. Other processes use these servers too; nothing here touches their sessions.
import { execFile } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { Knex } from 'knex'
import { MYSQL_URL, POSTGRES_URL, type Database } from '../test/targets.mjs'
import { selectedRows } from './shared.mjs'

const run = promisify(execFile)

/** How one worker slot connects, and how the harness finds that slot's connections. */
export interface SlotLogin {
  /** POSTGRES_URL / MYSQL_URL for the worker's environment. */
  env: Record<string, string>
  /** PostgreSQL: the application_name of every connection of the slot. MySQL: its user. */
  tag: string | undefined
}

const isLocal = (url: string): boolean => ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(new URL(url).hostname)

/**
 * A login for worker slot `slot` of the run using `table`: its own application_name, or its own
 * MySQL user. PostgreSQL workers connect to `postgresUrl` (a pooler's, say); PgBouncer passes the
 * application_name on to the server connections its clients use.
 */
export async function slotLogin(knex: Knex, database: Database, table: string, slot: number, postgresUrl = POSTGRES_URL): Promise<SlotLogin> {
  const tag = `${table}_w${slot}`
  switch (database) {
    case 'sqlite':
      return { env: {}, tag: undefined }
    case 'postgres': {
      // In the URL rather than a session SET: it then covers the connection worker-locks opens
      // outside knex's pool to LISTEN for releases, too.
      const url = new URL(postgresUrl)
      url.searchParams.set('application_name', tag)
      return { env: { POSTGRES_URL: url.toString() }, tag }
    }
    case 'mysql': {
      const url = new URL(MYSQL_URL)
      const schema = decodeURIComponent(url.pathname.slice(1))
      await knex.raw(`CREATE USER IF NOT EXISTS ?@'%'`, [tag])
      await knex.raw(`GRANT ALL PRIVILEGES ON ??.* TO ?@'%'`, [schema, tag])
      url.username = tag
      url.password = ''
      return { env: { MYSQL_URL: url.toString() }, tag }
    }
  }
}

export async function dropSlotLogin(knex: Knex, database: Database, login: SlotLogin): Promise<void> {
  if (database === 'mysql' && login.tag) await knex.raw(`DROP USER IF EXISTS ?@'%'`, [login.tag])
}

/** Kills every server connection of one worker slot; resolves how many there were. */
export async function killConnections(knex: Knex, database: Database, login: SlotLogin): Promise<number> {
  if (!login.tag) return 0
  if (database === 'postgres') {
    const rows = selectedRows(database, await knex.raw(
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = ? AND pid <> pg_backend_pid()', [login.tag]))
    return rows.filter((row) => row.killed === true).length
  }
  if (database === 'mysql') {
    const rows = selectedRows(database, await knex.raw('SELECT ID AS id FROM information_schema.PROCESSLIST WHERE USER = ?', [login.tag]))
    let killed = 0
    for (const row of rows) {
      try {
        await knex.raw('KILL CONNECTION ?', [Number(row.id)])
        killed++
      } catch {
        // gone already
      }
    }
    return killed
  }
  return 0
}

/** Why this harness cannot restart `database`'s server, or undefined when it can. */
export function cannotRestart(database: Database): string | undefined {
  if (process.env.TORTURE_NO_RESTART === '1') return 'TORTURE_NO_RESTART=1'
  if (database === 'sqlite') return 'SQLite has no server'
  const url = database === 'postgres' ? POSTGRES_URL : MYSQL_URL
  if (!isLocal(url)) return `the server at ${new URL(url).host} is not on this machine`
  if (process.getuid?.() !== 0) return 'restarting the server needs root'
  return undefined
}

async function answers(knex: Knex): Promise<boolean> {
  try {
    await knex.raw('SELECT 1')
    return true
  } catch {
    return false
  }
}

/** Waits until `knex` can talk to its server again; throws after `ms`. */
export async function waitUntilUp(knex: Knex, ms = 60_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await answers(knex))) {
    if (Date.now() > until) throw new Error(`the server did not answer again within ${ms / 1000} s`)
    await sleep(200)
  }
}

function mysqlAdmin(...command: string[]): Promise<unknown> {
  const url = new URL(MYSQL_URL)
  return run('mariadb-admin', ['--protocol=tcp', `-h${url.hostname}`, `-P${url.port || '3306'}`, '-uroot', ...command], { timeout: 60_000 })
}

// The server is told apart from other mariadbd processes on the machine (CI's Galera nodes) by
// its pid file: matching the executable alone would take a Galera node for the server.
let mariadbPidFile = '/run/mysqld/mysqld.pid' // Debian's, until the server says otherwise

const mariadbRunning = (): Promise<boolean> =>
  run('start-stop-daemon', ['--status', '--pidfile', mariadbPidFile, '--exec', '/usr/sbin/mariadbd']).then(() => true, () => false)

async function startMariadb(): Promise<void> {
  await run('start-stop-daemon', ['--start', '--oknodo', '--background', '--pidfile', mariadbPidFile, '--exec', '/usr/sbin/mariadbd'])
  const until = Date.now() + 60_000
  while (!(await mysqlAdmin('ping').then(() => true, () => false))) {
    if (Date.now() > until) throw new Error('MariaDB did not answer within 60 s of being started')
    await sleep(200)
  }
}

/** Restarts the server of `database` and waits until `knex` gets answers again. */
export async function restartServer(knex: Knex, database: Database): Promise<void> {
  if (database === 'postgres') {
    const version = readdirSync('/etc/postgresql').sort().at(-1)
    if (!version) throw new Error('no cluster under /etc/postgresql')
    await run('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'restart'], { timeout: 60_000 })
  } else if (database === 'mysql') {
    const [rows] = (await knex.raw('SELECT @@pid_file AS pidFile')) as [Array<{ pidFile: string }>]
    if (rows[0]?.pidFile) mariadbPidFile = rows[0].pidFile
    await mysqlAdmin('shutdown')
    const until = Date.now() + 60_000
    while (await mariadbRunning()) {
      if (Date.now() > until) throw new Error('MariaDB did not stop within 60 s')
      await sleep(100)
    }
    await startMariadb()
  } else {
    throw new Error(`cannot restart ${database}`)
  }
  await waitUntilUp(knex)
}

/** After a run, whatever happened: the server this harness may have stopped is running again. */
export async function ensureServerUp(database: Database): Promise<void> {
  if (database === 'mysql' && cannotRestart(database) === undefined && !(await mysqlAdmin('ping').then(() => true, () => false))) {
    if (!(await mariadbRunning())) await startMariadb()
  }
  if (database === 'postgres' && cannotRestart(database) === undefined) {
    const version = readdirSync('/etc/postgresql').sort().at(-1)
    if (version && !(await run('pg_isready', ['-q', '-h', new URL(POSTGRES_URL).hostname]).then(() => true, () => false))) {
      await run('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'start'], { timeout: 60_000 }).catch(() => undefined)
    }
  }
}
