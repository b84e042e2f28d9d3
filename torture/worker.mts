// One torture worker: a process that keeps taking one of a few locks and, holding it, does an
// unguarded read-modify-write of that lock's counter, fenced with the lock's fence. It reports
// every step as a JSON line on stdout for the harness (main.mts), which injects the faults.
//
// Told through its environment what to do (see WorkerConfig in shared.mts). On stdin: "stall"
// makes its next critical section block the event loop for longer than the lock timeout;
// "stop" (or the end of stdin, or SIGTERM) makes it finish the section under way, close its
// store and exit.
import { simulatedSkewMs } from './skew.mjs' // first: shifts Date.now() before anything else is loaded
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { LockLostError, LockStore, LockTimeoutError, type Lock } from '../src/index.js'
import { connect } from '../test/targets.mjs'
import {
  LOCK_TIMEOUT_MS, RENEWAL_INTERVAL_MS, STALL_MS, changedRows, realNow, resourceSql, selectedRows, workerConfigFromEnv,
  type Outcome, type WorkerEvent,
} from './shared.mjs'

const config = workerConfigFromEnv(process.env)
const TASKS = 2
const worker = config.instance
// stdout is a pipe, and writes to pipes are synchronous on Linux: a line printed is a line the
// harness reads, even if this process is SIGKILLed right after.
const emit = (event: WorkerEvent): void => { process.stdout.write(`${JSON.stringify(event)}\n`) }
const message = (error: unknown): string => {
  if (!(error instanceof Error)) return String(error)
  const cause = error.cause instanceof Error ? `: ${error.cause.message}` : ''
  return `${error.message}${cause}`
}

// Anything unhandled is a failure of the run, whatever caused it.
process.on('unhandledRejection', (reason) => {
  emit({ t: 'violation', worker, message: `unhandled rejection: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`, at: realNow() })
  process.exit(70)
})
process.on('uncaughtException', (error) => {
  emit({ t: 'violation', worker, message: `uncaught exception: ${error.stack ?? error.message}`, at: realNow() })
  process.exit(70)
})

let stopping = false
let stallNext = false
const input = createInterface({ input: process.stdin })
input.on('line', (line) => {
  const command = line.trim()
  if (command === 'stop') stopping = true
  else if (command === 'stall') stallNext = true
})
input.on('close', () => { stopping = true })
process.on('SIGTERM', () => { stopping = true })

// How long the event loop goes without running a timer: a blocked loop is the one way a holder
// can miss its own lease's end (its expiry timer cannot run either).
// Event-loop lag, kept per beat for the last minute, so that each of the tasks' critical sections
// can read the worst lag since it began.
const BEAT_MS = 20
let lastBeat = performance.now()
const beats: Array<{ at: number; lagMs: number }> = []
setInterval(() => {
  const now = performance.now()
  beats.push({ at: now, lagMs: now - lastBeat - BEAT_MS })
  while ((beats[0]?.at ?? now) < now - 60_000) beats.shift()
  lastBeat = now
}, BEAT_MS).unref()
/** The longest the event loop was blocked since `since` (a performance.now() time), up to now. */
const lagSince = (since: number): number =>
  beats.reduce((max, beat) => (beat.at >= since ? Math.max(max, beat.lagMs) : max), performance.now() - lastBeat - BEAT_MS)

let warnings = 0
let errors = 0
let sections = 0
// Notifications the store dropped as malformed (on PostgreSQL, the forger's): debug logs, never errors.
let ignoredNotifications = 0
const logger = {
  debug: (_details: object, text: string) => {
    if (text.startsWith('worker-locks: ignored a notification')) ignoredNotifications++
  },
  warn: (_details: object, text: string) => {
    warnings++
    emit({ t: 'log', worker, level: 'warn', message: text, at: realNow() })
  },
  error: (_details: object, text: string) => emit({ t: 'log', worker, level: 'error', message: text, at: realNow() }),
}

const knex = connect(config.database, { poolMax: 4 })
const store = new LockStore(knex, {
  tableName: config.table,
  strategy: config.strategy,
  instanceName: worker,
  lockTimeoutMs: LOCK_TIMEOUT_MS,
  renewalIntervalMs: RENEWAL_INTERVAL_MS,
  clock: config.clock,
  logger,
})

// A self-check of the harness: without the fence check, a stalled holder's late write is
// accepted and overwrites its successor's, and the run must report the lost update.
const unfenced = process.env.TORTURE_UNFENCED === '1'

// When the row of the lock held now was last written (acquired or renewed), as a lower bound of
// its timestamp: the harness judges a killed holder's lease by it.
// When each acquisition's write was sent (by fence): the row is at least that fresh.
const leaseFrom = new Map<string, number>()
// Locks whose release() is under way: an acquisition of one of them before that release returns
// is a hand-over to another task of this worker.
const releasing = new Set<string>()
let handOvers = 0
store.on('acquired', (e) => {
  leaseFrom.set(String(e.fence), realNow() - e.durationMs)
  if (releasing.has(e.name)) handOvers++
})
store.on('renewed', (e) => emit({ t: 'renew', worker, sentAt: realNow() - e.durationMs }))

// Statements on the resource may hang while the server restarts; never for long.
const cancels = config.database !== 'sqlite'
const run = (sql: string, bindings: unknown[]): Promise<unknown> =>
  Promise.resolve(cancels ? knex.raw(sql, bindings as never).timeout(5_000, { cancel: true }) : knex.raw(sql, bindings as never))

const between = (min: number, max: number): number => min + Math.random() * (max - min)
const pick = <T,>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T

/** Blocks the event loop: a long GC pause, a synchronous call gone wrong. */
function busyWait(ms: number): void {
  const until = performance.now() + ms
  while (performance.now() < until) { /* stalled */ }
}

async function criticalSection(lock: Lock, via: 'try' | 'wait'): Promise<void> {
  const fence = Number(lock.fence) // far below 2^53; every driver binds numbers the same way
  const start = realNow()
  emit({ t: 'acq', worker, lock: lock.name, fence: String(lock.fence), via, at: start, leaseFrom: leaseFrom.get(String(lock.fence)) ?? start })
  leaseFrom.delete(String(lock.fence))
  const onAbort = (): void => {
    const reason = lock.signal.reason instanceof LockLostError ? lock.signal.reason.reason : String(lock.signal.reason)
    emit({ t: 'lost', worker, lock: lock.name, fence: String(lock.fence), reason, at: realNow() })
  }
  lock.signal.addEventListener('abort', onAbort)
  const sectionStart = performance.now()
  let claim: Outcome = 'skipped'
  let write: Outcome = 'skipped'
  let read: number | undefined
  let stall: { ms: number; abortedOnWake: boolean; reason?: string } | undefined
  try {
    // Tell the resource our fence before reading, so that an older holder's late write is
    // refused from now on. A refused claim means a newer holder got there first; carry on
    // anyway: the write must then be refused too, and the check sees that it is.
    claim = 'error'
    if (unfenced) claim = 'skipped'
    else claim = changedRows(config.database, await run(resourceSql.claim(config.table), [fence, worker, lock.name, fence])) === 1 ? 'ok' : 'refused'
    const rows = selectedRows(config.database, await run(resourceSql.read(config.table), [lock.name]))
    read = Number(rows[0]?.value)
    if (!Number.isSafeInteger(read)) throw new Error(`counter ${lock.name} has no value: ${JSON.stringify(rows)}`)
    if (stallNext) {
      stallNext = false
      const stalledAt = performance.now()
      busyWait(STALL_MS)
      // Awake again. The store's renewal timer is overdue and runs first; let it.
      await sleep(25)
      const reason = lock.signal.reason instanceof LockLostError ? lock.signal.reason.reason : undefined
      stall = { ms: Math.round(performance.now() - stalledAt), abortedOnWake: lock.signal.aborted, ...(reason ? { reason } : {}) }
      // The late write below goes ahead regardless, as a holder that ignored its signal would:
      // the resource's fence check has to stop it if someone else took the lock meanwhile.
    } else {
      // The "work": mostly a few ms; sometimes long enough that renewals run during it.
      await sleep(config.work === 'long' ? between(50, 400) : Math.random() < 0.1 ? between(200, 700) : between(2, 25))
    }
    write = 'error'
    write = changedRows(config.database, await run((unfenced ? resourceSql.unfencedWrite : resourceSql.write)(config.table), [read + 1, fence, worker, read, lock.name, fence])) === 1 ? 'ok' : 'refused'
  } catch (error) {
    errors++
    emit({ t: 'err', worker, where: `critical section (claim ${claim}, write ${write})`, message: message(error), at: realNow() })
  }
  const end = realNow()
  const aborted = lock.signal.aborted
  sections++
  emit({
    t: 'sec', worker, lock: lock.name, fence: String(lock.fence), start, end, claim, write,
    ...(read === undefined ? {} : { read: String(read) }),
    aborted, maxLagMs: Math.round(lagSince(sectionStart)), ...(stall ? { stall } : {}),
  })
  lock.signal.removeEventListener('abort', onAbort)
  releasing.add(lock.name)
  try {
    await lock.release()
  } catch (error) {
    errors++
    emit({ t: 'err', worker, where: 'release', message: message(error), at: realNow() })
  } finally {
    releasing.delete(lock.name)
  }
}

emit({ t: 'ready', worker, pid: process.pid, at: realNow() })
if (simulatedSkewMs !== 0) emit({ t: 'log', worker, level: 'info', message: `Date.now() runs ${simulatedSkewMs} ms off`, at: realNow() })

// A restarted worker with the name of one killed while holding a lock takes that lock first:
// the row carries its instance name, so it must get it at once, without waiting for the timeout.
await Promise.all(config.reclaim.map(async (name) => {
  const start = realNow()
  try {
    const lock = await store.tryAcquireLock(name)
    emit({ t: 'reclaim', worker, lock: name, acquired: lock !== null, ...(lock ? { fence: String(lock.fence) } : {}), start, at: realNow() })
    if (lock) await criticalSection(lock, 'try')
  } catch (error) {
    errors++
    emit({ t: 'err', worker, where: 'reclaim', message: message(error), at: realNow() })
    emit({ t: 'reclaim', worker, lock: name, acquired: false, start, at: realNow() })
  }
}))

// Tasks of one process share its store, as the jobs of a service do; two of them after the same
// lock exercise the hand-over from a release to a waiter of the same store.
async function task(): Promise<void> {
  while (!stopping) {
    const name = pick(config.locks)
    const via = Math.random() < 0.5 ? 'try' : 'wait'
    let lock: Lock | null = null
    try {
      lock = via === 'try' ? await store.tryAcquireLock(name) : await store.acquireLock(name, '', { timeoutMs: Math.round(between(100, 600)) })
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) {
        errors++
        emit({ t: 'err', worker, where: `acquire (${via})`, message: message(error), at: realNow() })
        await sleep(between(200, 400)) // the database is down or restarting: do not spin
        continue
      }
    }
    if (lock) await criticalSection(lock, via)
    await sleep(between(5, 60))
  }
}
await Promise.all(Array.from({ length: TASKS }, () => task()))

input.close()
try {
  await store.close()
} catch (error) {
  errors++
  emit({ t: 'err', worker, where: 'close', message: message(error), at: realNow() })
}
await knex.destroy()
emit({ t: 'summary', worker, sections, errors, warnings, handOvers, ignoredNotifications, at: realNow() })
// No process.exit(): the process must end by itself once its work is done. One that does not
// (a timer or connection left behind) is reported by the harness as a worker that never finished.
