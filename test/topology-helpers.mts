// What the tests of replicated servers (.ci/pg-failover, .ci/galera) share: connecting to a server
// named by a URL, asking whether it answers, and declaring a topology's tests so that a missing
// one fails under CI=true and is skipped loudly otherwise.
import { it, describe } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { connect, inCI } from './targets.mjs'

export const describeError = (error: unknown): string => (error instanceof Error ? `${error.name}: ${error.message}` : String(error))
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Whether DIALECTS (default: every database) asks for `database`. */
export const wanted = (database: string): boolean =>
  !process.env.DIALECTS?.trim() || process.env.DIALECTS.split(',').map((s) => s.trim()).includes(database)

/** A knex instance on the MySQL/MariaDB server at `url`, with one connection unless told (session settings stick). */
export function connectMysql(url: string, poolMax = 1): Knex {
  const parsed = new URL(url)
  return knexFactory({
    client: 'mysql2',
    connection: {
      host: parsed.hostname, port: Number(parsed.port || 3306), user: decodeURIComponent(parsed.username),
      password: decodeURIComponent(parsed.password), database: decodeURIComponent(parsed.pathname.slice(1)), connectTimeout: 3000,
    },
    pool: { min: 0, max: poolMax },
  })
}

export const connectPostgres = (url: string): Knex => connect('postgres', { postgresUrl: url, poolMax: 1 })

/** Why the server at `url` cannot be used, or undefined when it answers. */
export async function unreachable(label: string, url: string, open: (url: string) => Knex): Promise<string | undefined> {
  const knex = open(url)
  try {
    await knex.raw('SELECT 1')
    return undefined
  } catch (error) {
    return `${label}=${url}: ${describeError(error)}`
  } finally {
    await knex.destroy()
  }
}

/** Declares the topology's tests, or, when a server is missing, a failure (CI=true) or a loud skip. */
export function topology(title: string, setUp: string, reason: string | undefined, body: () => void): void {
  if (reason === undefined) {
    describe(title, body)
  } else if (inCI) {
    it(`${title}: servers are reachable (CI=true)`, () => {
      throw new Error(`${title} could not be used and CI=true forbids skipping it: ${reason}`)
    })
  } else {
    console.warn(`\n*** SKIPPED ${title}: ${reason}\n*** ${setUp}; CI=true makes this a failure.\n`)
    it(`${title}: skipped, not reachable`, { skip: reason }, () => undefined)
  }
}
