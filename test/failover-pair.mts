// A PostgreSQL primary and standby of their own (.ci/pg-failover) for one test: its own ports and
// state directory, so that it never touches the pair other tests use. Under CI=true a pair that
// cannot start fails the test; elsewhere the test is skipped with a loud warning.
import { execFile } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { TestContext } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { inCI } from './targets.mjs'

const SCRIPT = fileURLToPath(new URL('../../.ci/pg-failover', import.meta.url))
const BIN = process.env.PG_FAILOVER_BIN ?? '/usr/lib/postgresql/15/bin'

export interface PairOptions {
  readonly primaryPort: number
  readonly standbyPort: number
  readonly async: boolean
}

export class FailoverPair {
  readonly primaryPort: number
  readonly standbyPort: number
  readonly #env: NodeJS.ProcessEnv
  readonly #dir: string

  private constructor(options: PairOptions, dir: string) {
    this.primaryPort = options.primaryPort
    this.standbyPort = options.standbyPort
    this.#dir = dir
    this.#env = { ...process.env, TMPDIR: dir, PG_FAILOVER_PRIMARY_PORT: String(options.primaryPort), PG_FAILOVER_STANDBY_PORT: String(options.standbyPort) }
  }

  /** Starts a pair, or (outside CI) skips `t` loudly and resolves `undefined` when it cannot. */
  static async startOrSkip(t: TestContext, options: PairOptions): Promise<FailoverPair | undefined> {
    const dir = mkdtempSync('/tmp/wl-failover-')
    // The servers run as the postgres user when this runs as root: it must reach its folder.
    chmodSync(dir, 0o755)
    const pair = new FailoverPair(options, dir)
    try {
      if (!existsSync(`${BIN}/initdb`)) throw new Error(`no PostgreSQL binaries in ${BIN}`)
      await pair.run('start', ...(options.async ? ['--async'] : []))
      return pair
    } catch (error) {
      await pair.stop()
      const reason = `a PostgreSQL pair on ports ${options.primaryPort}/${options.standbyPort} could not start: ${error instanceof Error ? error.message : String(error)}`
      if (inCI) throw new Error(`${reason} (CI=true forbids skipping it)`)
      console.warn(`\n*** SKIPPED ${t.name}: ${reason}\n*** CI=true makes this a failure.\n`)
      t.skip(reason)
      return undefined
    }
  }

  /** Runs a subcommand of .ci/pg-failover on this pair. */
  run(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(SCRIPT, args, { env: this.#env, timeout: 120_000 }, (error, stdout, stderr) => {
        if (error) reject(new Error(`.ci/pg-failover ${args.join(' ')}: ${stderr || error.message}`))
        else resolve(stdout)
      })
    })
  }

  /** Stops both servers and removes their files, whatever state they are in. */
  async stop(): Promise<void> {
    await this.run('stop').catch((error: unknown) => console.warn(`pg-failover stop: ${String(error)}`))
    rmSync(this.#dir, { recursive: true, force: true })
  }
}

/** Where a knex instance's new connections go: switched by a test as a virtual IP moves. */
export interface Target {
  port: number
}

const quiet = (): void => undefined

/** A knex instance whose every new connection goes to `target.port` at that moment. */
export function following(target: Target, poolMax = 4): Knex {
  return knexFactory({
    client: 'pg',
    connection: () => {
      const port = target.port
      // Read again (and the pool's idle connections dropped) once the target has moved.
      return { host: '127.0.0.1', port, user: 'postgres', database: 'test', connectionTimeoutMillis: 2_000, expirationChecker: () => target.port !== port }
    },
    pool: { min: 0, max: poolMax },
    // Each connection the failover breaks would be logged.
    log: { warn: quiet, error: quiet, debug: quiet, deprecate: quiet },
  })
}

/** A knex instance on one server. */
export const on = (port: number, poolMax = 2): Knex => following({ port }, poolMax)
