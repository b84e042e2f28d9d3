// One torture worker: a process that keeps taking one of a few locks and, holding it, does an
// unguarded read-modify-write of that lock's counter, fenced with the lock's fence. It reports
// every step as a JSON line on stdout for the harness (main.mts), which injects the faults.
// Of kind `rw` it takes read/write locks instead (about 70 % reads), and multi-locks over two of
// them: a writer does the same fenced read-modify-write; a reader claims the counter with its
// fence too, reads it, and reads it again at the end, which must find it unchanged.
//
// Told through its environment what to do (see WorkerConfig in shared.mts). On stdin: "stall"
// makes its next critical section block the event loop for longer than the lock timeout;
// "stop" (or the end of stdin, or SIGTERM) makes it finish the section under way, close its
// store and exit.
import { simulatedSkewMs } from './skew.mjs' // first: shifts Date.now() before anything else is loaded
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { LockLostError, LockStore, LockTimeoutError, type Lock, type MultiLock } from '../src/index.js'
import { connect } from '../test/targets.mjs'
import {
  LOCK_TIMEOUT_MS, RENEWAL_INTERVAL_MS, STALL_MS, changedRows, realNow, resourceSql, selectedRows, workerConfigFromEnv,
  type Outcome, type RwMode, type WorkerEvent,
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
// When each acquisition's write was sent (by lock and fence): the row is at least that fresh.
const leaseFrom = new Map<string, number>()
const leaseKey = (name: string, fence: bigint): string => `${name}\0${fence}`
// Locks whose release() is under way: an acquisition of one of them before that release returns
// went to another task of this worker, woken by the release.
const releasing = new Set<string>()
let handOvers = 0
store.on('acquired', (e) => {
  leaseFrom.set(leaseKey(e.name, e.fence), realNow() - e.durationMs)
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
  emit({ t: 'acq', worker, lock: lock.name, fence: String(lock.fence), via, at: start, leaseFrom: leaseFrom.get(leaseKey(lock.name, lock.fence)) ?? start })
  leaseFrom.delete(leaseKey(lock.name, lock.fence))
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

/**
 * Kind `rw`: the critical section of a read/write lock or of a multi-lock's parts, all at once.
 * Every part claims its counter with its own fence and reads it; then the "work" (or a stall);
 * then a writer stores read + 1 (fenced), and a reader reads again: the lock kept writers out
 * meanwhile, so it must find the same value, unless it lost its lease.
 */
async function readWriteSection(locks: readonly Lock[], via: 'try' | 'wait'): Promise<void> {
  const start = realNow()
  const multi = locks.length > 1
  const parts = locks.map((lock) => ({
    lock, mode: (lock.mode === 'write' ? 'write' : 'read') as RwMode, fence: Number(lock.fence),
    claim: 'skipped' as Outcome, write: 'skipped' as Outcome, read: undefined as number | undefined, reread: undefined as number | undefined,
    onAbort: () => {
      const reason = lock.signal.reason instanceof LockLostError ? lock.signal.reason.reason : String(lock.signal.reason)
      emit({ t: 'lost', worker, lock: lock.name, fence: String(lock.fence), reason, at: realNow() })
    },
  }))
  for (const p of parts) {
    const key = leaseKey(p.lock.name, p.lock.fence)
    emit({ t: 'acq', worker, lock: p.lock.name, fence: String(p.lock.fence), via, at: start, leaseFrom: leaseFrom.get(key) ?? start, mode: p.mode, ...(multi ? { multi } : {}) })
    leaseFrom.delete(key)
    p.lock.signal.addEventListener('abort', p.onAbort)
  }
  const sectionStart = performance.now()
  let stall: { ms: number; abortedOnWake: boolean; reason?: string } | undefined
  const readValue = async (name: string): Promise<number> => {
    const rows = selectedRows(config.database, await run(resourceSql.read(config.table), [name]))
    const value = Number(rows[0]?.value)
    if (!Number.isSafeInteger(value)) throw new Error(`counter ${name} has no value: ${JSON.stringify(rows)}`)
    return value
  }
  try {
    for (const p of parts) {
      p.claim = 'error'
      p.claim = unfenced ? 'skipped' : changedRows(config.database, await run(resourceSql.claim(config.table), [p.fence, worker, p.lock.name, p.fence])) === 1 ? 'ok' : 'refused'
      p.read = await readValue(p.lock.name)
    }
    if (stallNext) {
      stallNext = false
      const stalledAt = performance.now()
      busyWait(STALL_MS)
      await sleep(25) // the overdue renewal runs first
      const lost = parts.find((p) => p.lock.signal.aborted)
      const reason = lost?.lock.signal.reason instanceof LockLostError ? lost.lock.signal.reason.reason : undefined
      stall = { ms: Math.round(performance.now() - stalledAt), abortedOnWake: parts.every((p) => p.lock.signal.aborted), ...(reason ? { reason } : {}) }
    } else {
      await sleep(config.work === 'long' ? between(50, 400) : Math.random() < 0.1 ? between(200, 700) : between(2, 25))
    }
    for (const p of parts) {
      if (p.mode === 'write') {
        p.write = 'error'
        p.write = changedRows(config.database, await run((unfenced ? resourceSql.unfencedWrite : resourceSql.write)(config.table),
          [p.read! + 1, p.fence, worker, p.read!, p.lock.name, p.fence])) === 1 ? 'ok' : 'refused'
      } else {
        p.reread = await readValue(p.lock.name)
      }
    }
  } catch (error) {
    errors++
    emit({ t: 'err', worker, where: `read/write section (${parts.map((p) => `${p.lock.name} ${p.mode}: claim ${p.claim}, write ${p.write}`).join('; ')})`, message: message(error), at: realNow() })
  }
  const end = realNow()
  const maxLagMs = Math.round(lagSince(sectionStart))
  for (const p of parts) {
    sections++
    emit({
      t: 'sec', worker, lock: p.lock.name, fence: String(p.lock.fence), start, end, claim: p.claim, write: p.write, mode: p.mode,
      ...(p.read === undefined ? {} : { read: String(p.read) }), ...(p.reread === undefined ? {} : { reread: String(p.reread) }),
      aborted: p.lock.signal.aborted, maxLagMs, ...(stall ? { stall } : {}),
    })
    p.lock.signal.removeEventListener('abort', p.onAbort)
  }
}

/**
 * Kind `rw`: one acquisition, a read/write lock (70 % read) or a multi-lock over two of them
 * (20 %), by one attempt or a short wait; a write lock while a stall is pending.
 */
async function readWriteTask(): Promise<void> {
  while (!stopping) {
    const via = Math.random() < 0.5 ? 'try' : 'wait'
    const timeoutMs = Math.round(between(100, 600))
    let held: { locks: readonly Lock[]; release(): Promise<void> } | null = null
    try {
      // A section told to stall takes one write side, so that its late write meets the fence.
      if (!stallNext && Math.random() < 0.2) {
        const first = pick(config.locks)
        const second = pick(config.locks.filter((name) => name !== first))
        const list = [first, second].map((name) => ({ name, write: Math.random() < 0.3 }))
        const multi: MultiLock | null = via === 'try' ? await store.tryAcquireMultiLock(list) : await store.acquireMultiLock(list, { timeoutMs })
        held = multi
      } else {
        const name = pick(config.locks)
        const write = stallNext || Math.random() < 0.3
        const lock = via === 'try' ? await store.tryAcquireReadWriteLock(name, '', { write }) : await store.acquireReadWriteLock(name, '', { write, timeoutMs })
        held = lock ? { locks: [lock], release: () => lock.release() } : null
      }
    } catch (error) {
      if (!(error instanceof LockTimeoutError)) {
        errors++
        emit({ t: 'err', worker, where: `acquire read/write (${via})`, message: message(error), at: realNow() })
        await sleep(between(200, 400)) // the database is down or restarting: do not spin
        continue
      }
    }
    if (held) {
      await readWriteSection(held.locks, via)
      try {
        await held.release()
      } catch (error) {
        errors++
        emit({ t: 'err', worker, where: 'release read/write', message: message(error), at: realNow() })
      }
    }
    await sleep(between(5, 60))
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
// lock exercise a release that wakes a waiter of the same store.
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
await Promise.all(Array.from({ length: TASKS }, () => (config.kind === 'rw' ? readWriteTask() : task())))

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
