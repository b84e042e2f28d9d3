// The 3-node MariaDB Galera cluster of .ci/galera, as the tests see it: its URLs (GALERA_URLS),
// whether it can be used, each node's wsrep status, and the script that kills and restarts a
// node. The script finds its cluster through a state file under ${TMPDIR:-/tmp} and its ports
// through GALERA_PORT and GALERA_WSREP_PORT, all inherited from this process's environment.
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Knex } from 'knex'
import { connectMysql, describeError, unreachable } from './topology-helpers.mjs'

export const GALERA_NODES = 3

export const galeraUrls: readonly string[] = (process.env.GALERA_URLS ?? '').split(',').map((s) => s.trim()).filter(Boolean)

const script = join(import.meta.dirname, '..', '..', '.ci', 'galera')
const run = promisify(execFile)

/** Runs `.ci/galera ARGS…`; rejects with its output when it fails. */
export async function galeraScript(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run(script, args, { timeout: 180_000 })
    return stdout
  } catch (error) {
    const { stdout = '', stderr = '' } = error as { stdout?: string; stderr?: string }
    throw new Error(`.ci/galera ${args.join(' ')} failed: ${describeError(error)}\n${stdout}${stderr}`)
  }
}

/** Why the cluster at `urls` cannot be used, or undefined when every node answers. */
export async function galeraReason(urls: readonly string[]): Promise<string | undefined> {
  if (urls.length === 0) return 'GALERA_URLS is not set (.ci/galera start runs the cluster; .ci/run sets it)'
  if (urls.length !== GALERA_NODES) return `GALERA_URLS names ${urls.length} node(s), not ${GALERA_NODES}: ${urls.join(',')}`
  for (const [index, url] of urls.entries()) {
    const reason = await unreachable(`GALERA_URLS node ${index + 1}`, url, (u) => connectMysql(u))
    if (reason !== undefined) return reason
  }
  return undefined
}

/**
 * Why the nodes at `urls` cannot be killed and restarted by .ci/galera from this process, or
 * undefined when they can: the script must run a cluster (its state file under this TMPDIR) on
 * the very ports GALERA_URLS names.
 */
export async function galeraControlReason(urls: readonly string[]): Promise<string | undefined> {
  try {
    const [env, status] = await Promise.all([galeraScript('env'), galeraScript('status')])
    const managed = env.trim().replace(/^GALERA_URLS=/, '')
    if (managed !== urls.join(',')) return `.ci/galera manages ${managed}, not GALERA_URLS=${urls.join(',')} (set GALERA_PORT as for its start)`
    if (!/runs;/.test(status)) return `.ci/galera status finds no running cluster (same TMPDIR as its start?): ${status.trim()}`
    return undefined
  } catch (error) {
    return describeError(error)
  }
}

/** Node status variables by name (SHOW GLOBAL STATUS). */
export async function globalStatus(knex: Knex, names: readonly string[]): Promise<Record<string, string>> {
  const [rows] = (await knex.raw(`SHOW GLOBAL STATUS WHERE Variable_name IN (${names.map(() => '?').join(', ')})`, [...names])) as
    [Array<{ Variable_name: string; Value: string }>]
  return Object.fromEntries(rows.map((r) => [r.Variable_name, r.Value]))
}

/** What a node counted of the conflicts between its transactions and the cluster's. */
export interface ConflictCounters {
  /** Local transactions that failed certification against one certified first. */
  certFailures: number
  /** Local transactions aborted by a replicated one (brute-force aborts). */
  bfAborts: number
}

export async function conflictCounters(knex: Knex): Promise<ConflictCounters> {
  const status = await globalStatus(knex, ['wsrep_local_cert_failures', 'wsrep_local_bf_aborts'])
  return { certFailures: Number(status.wsrep_local_cert_failures), bfAborts: Number(status.wsrep_local_bf_aborts) }
}
