// The PgBouncer of the torture's pooler runs: the transaction-mode instance that .ci/pgbouncer
// starts (PGBOUNCER_TRANSACTION_URL points at it; .ci/run sets it), found through the state file
// the script leaves under ${TMPDIR:-/tmp}, and its restart fault: SIGKILL, some time down, start.
// The harness restarts it with the script itself, so that a run restarts the pooler the way CI
// starts it, and checks by the pidfile that a new process really took over.
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { connect } from '../test/targets.mjs'

const run = promisify(execFile)

export const POOLER_VARIABLE = 'PGBOUNCER_TRANSACTION_URL'
const SCRIPT = join(import.meta.dirname, '..', '..', '.ci', 'pgbouncer')
/** Where `.ci/pgbouncer start` records its directory: the script's `${TMPDIR:-/tmp}`, read the same way. */
const stateFile = (): string => join(process.env.TMPDIR || '/tmp', 'worker-locks-pgbouncer.dir')

/** The transaction pooler: where clients connect, and the pidfile of the instance behind it. */
export interface Pooler {
  url: string
  pidFile: string
}

/** What one restart did. */
export interface PoolerRestart {
  oldPid: number
  newPid: number
}

const describeError = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/** Whether `pid` is a running pgbouncer (a zombie nobody reaped is not: in a container, nobody may). */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'pgbouncer' && !/^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))
  } catch {
    return false
  }
}

/** The pid in `pidFile`, if that process is a running pgbouncer. */
export function poolerPid(pidFile: string): number | undefined {
  let pid: number
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim())
  } catch {
    return undefined
  }
  return Number.isSafeInteger(pid) && pid > 0 && alive(pid) ? pid : undefined
}

/** Whether a knex instance through `url` gets an answer. */
export async function poolerAnswers(url: string): Promise<string | undefined> {
  const knex = connect('postgres', { postgresUrl: url, poolMax: 1 })
  try {
    await knex.raw('SELECT 1')
    return undefined
  } catch (error) {
    return describeError(error)
  } finally {
    await knex.destroy()
  }
}

/**
 * The transaction pooler and its control, or why the harness cannot use it: the URL is not set,
 * nothing answers there, or the instance answering is not one `.ci/pgbouncer start` runs under
 * this TMPDIR (then the harness could not restart it).
 */
export async function findPooler(): Promise<{ pooler: Pooler } | { reason: string }> {
  const url = process.env[POOLER_VARIABLE]
  if (!url) return { reason: `${POOLER_VARIABLE} is not set (.ci/pgbouncer start runs the pooler; .ci/run sets it)` }
  const silent = await poolerAnswers(url)
  if (silent) return { reason: `${POOLER_VARIABLE}=${url} does not answer: ${silent}` }
  let dir: string
  try {
    dir = readFileSync(stateFile(), 'utf8').trim()
  } catch {
    return { reason: `${stateFile()} is missing: the pooler at ${url} was not started by .ci/pgbouncer start with this TMPDIR, so this run cannot restart it` }
  }
  let port: string | undefined
  try {
    port = /^listen_port\s*=\s*(\d+)/m.exec(readFileSync(join(dir, 'transaction.ini'), 'utf8'))?.[1]
  } catch (error) {
    return { reason: `cannot read the pooler's settings in ${dir}: ${describeError(error)}` }
  }
  const wanted = new URL(url).port || '5432'
  if (port !== wanted) return { reason: `the transaction pooler .ci/pgbouncer runs (${dir}) listens on port ${port ?? '?'}, but ${POOLER_VARIABLE} is on port ${wanted}` }
  const pidFile = join(dir, 'transaction.pid')
  if (poolerPid(pidFile) === undefined) return { reason: `${pidFile} names no running pgbouncer` }
  return { pooler: { url, pidFile } }
}

/**
 * SIGKILLs the pooler, keeps it down `downMs`, starts it again (`.ci/pgbouncer restart`), which
 * returns once it answers; throws unless a new process now runs and the old one is gone.
 */
export async function restartPooler(pooler: Pooler, downMs: number): Promise<PoolerRestart> {
  const oldPid = poolerPid(pooler.pidFile)
  if (oldPid === undefined) throw new Error(`PgBouncer was not running before its restart (${pooler.pidFile} names no running pgbouncer): it died by itself`)
  try {
    await run(SCRIPT, ['restart', 'transaction', (downMs / 1000).toFixed(1)], { timeout: 60_000 })
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim()
    throw new Error(`.ci/pgbouncer restart failed: ${stderr || describeError(error)}`)
  }
  const newPid = poolerPid(pooler.pidFile)
  if (newPid === undefined) throw new Error(`after the restart, ${pooler.pidFile} names no running pgbouncer`)
  if (newPid === oldPid) throw new Error(`the pooler still runs as pid ${oldPid}: it was not restarted`)
  if (alive(oldPid)) throw new Error(`the old pooler process ${oldPid} still runs beside the new one ${newPid}`)
  return { oldPid, newPid }
}
