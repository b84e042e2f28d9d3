// `npm run torture`: worker-locks under faults. For each (database × strategy) pair, a few worker
// processes contend for a few locks; holding one, a worker does an unguarded read-modify-write of
// that lock's counter, fenced with the lock's fence. Meanwhile the harness SIGKILLs holders (and
// restarts them, with the same instance name or a new one), kills a holder's database
// connections, restarts the database server, makes holders stall past their lease, and runs two
// of the workers with their clock minutes off; on PostgreSQL a forger process (forger.mts) floods
// the stores' notification channels with malformed, forged and replayed payloads. Then it checks,
// from the resource's journal, the database's record of grants and what the workers reported,
// that no update was lost, no write was accepted with a stale fence, fences strictly grew in
// grant order, no worker held a fence the database had not granted it, no worker failed or hung,
// and no lock is left held. Then, per database, the same under the same faults with read/write
// locks and multi-locks (workers of kind `rw`): writers do the fenced read-modify-write, readers
// claim the counter with their fence and must read it unchanged at the end of their section, and
// no writer may share its lock with anyone unless a lease was lost. Finally, per database, a short
// demonstration of what `clock: 'local'` does with the same skewed workers. On PostgreSQL the
// pairs run once more with the workers connected through PgBouncer in transaction pooling mode
// (PGBOUNCER_TRANSACTION_URL, started by .ci/pgbouncer), which the harness SIGKILLs and starts
// again mid-run instead of restarting the server (pooler.mts).
//
//   npm run torture                  short mode, what CI runs (also: -- --short): about 3 minutes
//                                    for all six pairs, three read/write runs and the three
//                                    demonstrations on 2 cores
//   npm run torture -- --long        release checks: 150 s per pair (a fault cycle every 16 s), ~25 minutes
//   npm run torture -- --seconds=40  any length per pair
//   npm run torture -- --only=pgbouncer   only the runs through PgBouncer
//   npm run torture -- --help        these options
//   DIALECTS=sqlite npm run torture  some databases only (see test/targets.mts); CI=true fails on
//                                    an unreachable server instead of skipping it
//   TORTURE_NO_RESTART=1             never restart the database servers
//   TORTURE_UNFENCED=1               self-check: workers write without the fence check; the run must FAIL
//   TORTURE_VERBOSE=1                also print every error and library warning of the workers
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Knex } from 'knex'
import { LockStore, createLockTable, dropLockTable } from '../src/index.js'
import { connect, inCI, resolveMatrix, sqliteFile, uniqueName, type Database, type StrategyName } from '../test/targets.mjs'
import {
  checkFences, checkJournal, checkKills, checkPoolerRestarts, checkReports, checkStableReads, findOverlaps, invariant,
  type Acquisition, type FenceVerdict, type Grant, type Invariant, type JournalEntry, type Kill, type Reclaim, type SectionRecord,
} from './check.mjs'
import { POOLER_VARIABLE, findPooler, poolerPid, restartPooler, type Pooler } from './pooler.mjs'
import { cannotRestart, dropSlotLogin, ensureServerUp, killConnections, restartServer, slotLogin, type SlotLogin } from './servers.mjs'
import {
  FORGED_FENCE, LOCK_TIMEOUT_MS, RENEWAL_INTERVAL_MS, STALL_MS, countersTable, createGrantJournal, createResource, dropResource,
  forgerEnv, grantsTable, journalTable, realNow, selectedRows, workerEnv, type ClockMode, type ForgerSummary, type RwMode, type WorkerEvent, type WorkerKind,
} from './shared.mjs'

// ---------------------------------------------------------------------------------------------
// Settings

const USAGE = `usage: node dist/torture/main.mjs [--short | --long | --seconds=N] [--only=pgbouncer]
  --short            what CI runs (the default): every pair once, with one server restart per server
  --long             release checks: 150 s per pair, a fault cycle every 16 s
  --seconds=N        N seconds per pair
  --only=pgbouncer   only the runs through PgBouncer (PostgreSQL, both strategies)
environment: DIALECTS=sqlite,postgres,mysql; CI=true (an unreachable server or pooler fails the run);
  PGBOUNCER_TRANSACTION_URL (the pooler .ci/pgbouncer start runs, under the same TMPDIR);
  TORTURE_NO_RESTART=1 (never restart the database servers); TORTURE_VERBOSE=1 (every worker error);
  TORTURE_UNFENCED=1 (self-check: workers skip the fence check, and the run must FAIL)`
const args = process.argv.slice(2)
if (args.includes('--help')) {
  console.log(USAGE)
  process.exit(0)
}
for (const arg of args) {
  if (!['--short', '--long', '--only=pgbouncer'].includes(arg) && !/^--seconds=\d+$/.test(arg)) {
    console.error(`${USAGE}\n(unknown argument ${JSON.stringify(arg)})`)
    process.exit(2)
  }
}
const onlyPooler = args.includes('--only=pgbouncer')
const long = args.includes('--long')
const secondsArg = args.find((a) => a.startsWith('--seconds='))
const mode = secondsArg ? `${secondsArg.slice(10)} s per pair` : long ? 'long' : 'short'
/** How long workers run in one pair, before the harness stops them. */
const pairMs = (database: Database): number => 1_000 * (secondsArg ? Number(secondsArg.slice(10)) : long ? 150 : database === 'sqlite' ? 12 : 16)
const demoMs = long ? 20_000 : 6_000
/**
 * A run through PgBouncer in short mode: long enough for its one pooler restart and a few
 * seconds of work after it, short enough to add little to CI.
 */
const poolerMs = (): number => 1_000 * (secondsArg ? Number(secondsArg.slice(10)) : long ? 150 : 10.5)
/** How long the pooler stays down: past the lock timeout, so that every lease held runs out meanwhile. */
const POOLER_DOWN_MS = 2_000
/** Worker errors this long after the pooler answers again still count as what its restart caused. */
const POOLER_AFTERMATH_MS = 3_000

const WORKERS = 4
const LOCKS = ['lock-a', 'lock-b', 'lock-c']
/** The read/write locks of the `rw` runs (key ''), a namespace apart from the plain locks. */
const RW_LOCKS = ['rw-x', 'rw-y', 'rw-z']
/** Simulated clock errors of the worker slots (slot 1 fast by 3 minutes, slot 2 slow by 2). */
const SKEWS = [180_000, -120_000, 0, 0]
/** A worker told to stop must have exited by then (a stall, a statement timeout and a close fit easily). */
const STOP_BOUND_MS = 15_000
/**
 * Two sections of one lock may seem to overlap by this much without anything wrong: the earlier
 * holder's expiry timer, due, may run just after its last statement returns.
 */
const OVERLAP_TOLERANCE_MS = 25
/** A holder's event loop blocked this long can miss the end of its own lease (its renewals stop meanwhile). */
const BLOCKED_MS = LOCK_TIMEOUT_MS - 2 * RENEWAL_INTERVAL_MS
/** A killed holder's lock must be free for others within this long. */
const AVAILABLE_WITHIN_MS = LOCK_TIMEOUT_MS + 5_000

const verbose = process.env.TORTURE_VERBOSE === '1'
const workerScript = join(import.meta.dirname, 'worker.mjs')
const forgerScript = join(import.meta.dirname, 'forger.mjs')
/** The forger must have exited this long after "stop" (it finishes the round under way). */
const FORGER_STOP_MS = 8_000
const fmtS = (ms: number): string => `${(ms / 1000).toFixed(1)} s`
const fmtSkew = (ms: number): string => (ms === 0 ? '0' : `${ms > 0 ? '+' : '-'}${Math.abs(ms) / 1000} s`)
const pick = <T,>(items: readonly T[]): T | undefined => items[Math.floor(Math.random() * items.length)]
const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/** The run under way, so that an interrupted harness still removes its tables, logins and workers. */
let current: Run | undefined
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.log(`\n${signal}: cleaning up`)
    const run = current
    void (run ? run.tearDown().catch(() => undefined).then(() => ensureServerUp(run.o.database)) : Promise.resolve())
      .catch(() => undefined).finally(() => process.exit(130))
  })
}

process.on('unhandledRejection', (reason) => {
  console.error(`torture harness: unhandled rejection: ${reason instanceof Error ? reason.stack : String(reason)}`)
  process.exit(1)
})

// ---------------------------------------------------------------------------------------------
// One run: a table, its workers, what they report

interface Slot {
  index: number
  skewMs: number
  base: string
  generation: number
  login: SlotLogin
}

interface Proc {
  slot: Slot
  name: string
  child: ChildProcess
  /** After the exit and the last line of output. */
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined
  /**
   * The sections under way (its tasks may each be in one), as far as its lines tell: from "acq"
   * to "sec", by lock and fence. `leaseFrom`: when it last sent a write of that lock's row
   * (acquire or renewal).
   */
  open: Map<string, { lock: string; fence: bigint; start: number; leaseFrom: number; mode?: RwMode }>
  killed: boolean
  stopRequested: boolean
  stallPendingSince: number | undefined
  lastWarnAt: number
  stderr: string[]
  summary: Extract<WorkerEvent, { t: 'summary' }> | undefined
}

/** The forger of a PostgreSQL pair (forger.mts). */
interface ForgerProc {
  child: ChildProcess
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined
  summary: ForgerSummary | undefined
  stderr: string[]
}

interface Faults {
  killSameName: number
  killNewName: number
  connectionKills: number
  connectionsKilled: number
  restarts: number
  restartMs: number[]
  /** PgBouncer restarts: from the SIGKILL until it answered again, and its processes before and after. */
  poolerRestarts: Array<{ start: number; end: number; oldPid: number; newPid: number }>
  stallsRequested: number
  skipped: string[]
}

type FaultKind = 'stall' | 'kill-same' | 'kill-new' | 'connection' | 'restart' | 'pooler-restart'

interface RunOptions {
  database: Database
  strategy: StrategyName
  clock: ClockMode
  durationMs: number
  work: 'mixed' | 'long'
  label: string
  /** Run the forger alongside the workers (PostgreSQL pairs). */
  forge: boolean
  /** Plain locks, or read/write locks and multi-locks. */
  kind: WorkerKind
  /** Workers connect through this transaction pooler, which the harness restarts instead of the server. */
  pooler?: Pooler
}

class Run {
  readonly table = uniqueName('wlt')
  readonly knex: Knex
  /** When all first workers were ready: the origin of the fault schedule and of the timeline. */
  started = realNow()
  readonly procs: Proc[] = []
  readonly slots: Slot[] = []
  readonly acquisitions: Acquisition[] = []
  readonly sections: SectionRecord[] = []
  readonly reclaims: Reclaim[] = []
  readonly kills: Kill[] = []
  readonly lost = new Set<string>()
  readonly lossReasons = new Map<string, number>()
  readonly violations: string[] = []
  readonly workerErrors: Array<{ at: number; text: string }> = []
  /** When a worker's lock signal aborted, and why. */
  readonly losses: Array<{ at: number; reason: string }> = []
  readonly libraryErrors: string[] = []
  readonly harnessErrors: string[] = []
  readonly restartEnds: number[] = []
  readonly stalls: Array<{ worker: string; lock: string; fence: string; ms: number; abortedOnWake: boolean; reason?: string; write: string }> = []
  /** Stalled sections already counted (a multi-lock reports one line per part). */
  readonly stalledSections = new Set<string>()
  /** Multi-lock parts acquired (kind `rw`). */
  multiParts = 0
  readonly sawReady = new Set<Proc>()
  forger: ForgerProc | undefined
  readonly faults: Faults = {
    killSameName: 0, killNewName: 0, connectionKills: 0, connectionsKilled: 0, restarts: 0, restartMs: [], poolerRestarts: [], stallsRequested: 0, skipped: [],
  }
  warnings = 0
  lastConnectionKill = 0
  lastRestartEnd = 0
  /** The pooler's process when the workers started (runs through a pooler). */
  poolerPidAtStart: number | undefined

  /** The locks its workers take. */
  get locks(): string[] {
    return this.o.kind === 'rw' ? RW_LOCKS : LOCKS
  }

  constructor(readonly o: RunOptions) {
    this.knex = connect(o.database, { poolMax: 3 })
    // knex reports its own dropped connections (a server restart) on the console; say whose they are.
    const logger = (this.knex.client as { logger?: { warn?: (message: string) => void } }).logger
    if (logger) logger.warn = (message: string) => { if (verbose) this.note(`(harness connection: ${message})`) }
  }

  note(text: string): void {
    console.log(`  ${`+${fmtS(realNow() - this.started)}`.padStart(8)}  ${text}`)
  }

  async setUp(): Promise<void> {
    await createLockTable(this.knex, { tableName: this.table })
    await createGrantJournal(this.knex, this.o.database, this.table)
    await createResource(this.knex, this.o.database, this.table, this.locks)
    // It stops by itself well after the pair's end, should the harness never tell it to.
    if (this.o.forge) this.spawnForger(realNow() + this.o.durationMs + LOCK_TIMEOUT_MS + STOP_BOUND_MS + 30_000)
    for (let index = 1; index <= WORKERS; index++) {
      const login = await slotLogin(this.knex, this.o.database, this.table, index, this.o.pooler?.url)
      const skewMs = SKEWS[index - 1] ?? 0
      this.slots.push({ index, skewMs, base: `worker-${index}`, generation: 0, login })
    }
    const first = this.slots.map((slot) => this.spawnWorker(slot, slot.base, []))
    await Promise.all(first.map((p) => this.ready(p)))
    this.started = realNow()
    if (this.o.pooler) this.poolerPidAtStart = poolerPid(this.o.pooler.pidFile)
  }

  spawnWorker(slot: Slot, name: string, reclaim: string[]): Proc {
    const child = spawn(process.execPath, [workerScript], {
      env: {
        ...process.env,
        ...workerEnv({
          database: this.o.database, strategy: this.o.strategy, table: this.table, instance: name,
          clock: this.o.clock, skewMs: slot.skewMs, locks: this.locks, reclaim, work: this.o.work, kind: this.o.kind,
        }),
        ...slot.login.env,
        WL_SQLITE_FILE: sqliteFile,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const proc: Proc = {
      slot, name, child, exit: undefined, open: new Map(), killed: false, stopRequested: false,
      stallPendingSince: undefined, lastWarnAt: 0, stderr: [], summary: undefined,
      closed: new Promise((resolve) => child.on('close', (code, signal) => {
        proc.exit = { code, signal }
        resolve({ code, signal })
      })),
    }
    child.stdin?.on('error', () => undefined) // writing to a worker that just died
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let event: WorkerEvent
      try {
        event = JSON.parse(line) as WorkerEvent
      } catch {
        proc.stderr.push(`stdout: ${line}`)
        return
      }
      this.onEvent(proc, event)
    })
    createInterface({ input: child.stderr! }).on('line', (line) => {
      proc.stderr.push(line)
      if (proc.stderr.length > 40) proc.stderr.shift()
    })
    this.procs.push(proc)
    return proc
  }

  spawnForger(until: number): void {
    const child = spawn(process.execPath, [forgerScript], {
      env: { ...process.env, ...forgerEnv({ table: this.table, locks: LOCKS, until }) },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const forger: ForgerProc = {
      child, exit: undefined, summary: undefined, stderr: [],
      closed: new Promise((resolve) => child.on('close', (code, signal) => {
        forger.exit = { code, signal }
        resolve({ code, signal })
      })),
    }
    child.stdin?.on('error', () => undefined)
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const parsed = JSON.parse(line) as ForgerSummary
        if (parsed.t === 'forger') forger.summary = parsed
      } catch {
        forger.stderr.push(`stdout: ${line}`)
      }
    })
    createInterface({ input: child.stderr! }).on('line', (line) => {
      if (verbose) this.note(`(forger: ${line})`)
      forger.stderr.push(line)
      if (forger.stderr.length > 40) forger.stderr.shift()
    })
    this.forger = forger
  }

  /** Tells the forger to stop and waits for its summary; resolves what went wrong with it. */
  async stopForger(): Promise<string[]> {
    const forger = this.forger
    if (!forger) return []
    const problems: string[] = []
    forger.child.stdin?.end('stop\n')
    const done = await Promise.race([forger.closed.then(() => true), sleep(FORGER_STOP_MS, false)])
    if (!done) {
      problems.push(`the forger had not exited ${FORGER_STOP_MS / 1000} s after "stop"; killed`)
      forger.child.kill('SIGKILL')
      await forger.closed
    }
    const exit = forger.exit
    if (done && exit && (exit.code !== 0 || exit.signal !== null)) {
      problems.push(`the forger exited with ${exit.signal ?? `code ${exit.code}`}${forger.stderr.length ? `: ${forger.stderr.slice(-5).join(' | ')}` : ''}`)
    }
    const f = forger.summary
    if (!f) problems.push('the forger exited without its summary line')
    else {
      if (f.forged === 0) problems.push('the forger sent no forged hand-over')
      if (f.malformed === 0) problems.push('the forger sent no malformed payload')
      this.note(`stopped the forger: ${f.sent} notifications sent, to ${f.ownChannels} probe channel(s) and ${this.table}_released`)
    }
    return problems
  }

  async ready(proc: Proc): Promise<void> {
    const until = realNow() + 30_000
    while (proc.exit === undefined && !this.sawReady.has(proc)) {
      if (realNow() > until) throw new Error(`${proc.name} did not start within 30 s`)
      await sleep(20)
    }
    if (!this.sawReady.has(proc)) throw new Error(`${proc.name} exited before it was ready: ${proc.stderr.slice(-10).join('\n')}`)
  }

  onEvent(proc: Proc, e: WorkerEvent): void {
    switch (e.t) {
      case 'ready':
        this.sawReady.add(proc)
        break
      case 'acq':
        this.acquisitions.push({ worker: e.worker, lock: e.lock, fence: BigInt(e.fence), at: e.at, ...(e.mode ? { mode: e.mode } : {}) })
        proc.open.set(`${e.lock}\0${e.fence}`, { lock: e.lock, fence: BigInt(e.fence), start: e.at, leaseFrom: e.leaseFrom, ...(e.mode ? { mode: e.mode } : {}) })
        if (e.multi) this.multiParts++
        break
      case 'renew':
        // One renewal statement covers every lock the store holds.
        for (const open of proc.open.values()) open.leaseFrom = Math.max(open.leaseFrom, e.sentAt)
        break
      case 'lost':
        this.lost.add(`${e.worker}\0${e.lock}\0${e.fence}`)
        this.lossReasons.set(e.reason, (this.lossReasons.get(e.reason) ?? 0) + 1)
        this.losses.push({ at: e.at, reason: e.reason })
        break
      case 'sec':
        this.sections.push({
          worker: e.worker, lock: e.lock, fence: BigInt(e.fence), start: e.start, end: e.end, claim: e.claim, write: e.write,
          aborted: e.aborted, maxLagMs: e.maxLagMs, stalled: e.stall !== undefined, killed: false,
          ...(e.mode ? { mode: e.mode } : {}),
          ...(e.read !== undefined && e.reread !== undefined ? { reads: { first: BigInt(e.read), again: BigInt(e.reread) } } : {}),
        })
        // One stall per section, however many parts of a multi-lock it reports.
        if (e.stall && !this.stalledSections.has(`${e.worker}\0${e.start}`)) {
          this.stalledSections.add(`${e.worker}\0${e.start}`)
          proc.stallPendingSince = undefined
          this.stalls.push({ worker: e.worker, lock: e.lock, fence: e.fence, ...e.stall, write: e.write })
          this.note(`${e.worker} woke from a ${fmtS(e.stall.ms)} stall holding ${e.lock} #${e.fence}: signal ${e.stall.abortedOnWake ? `aborted (${e.stall.reason})` : 'NOT aborted'}, late write ${e.write}`)
        }
        proc.open.delete(`${e.lock}\0${e.fence}`)
        break
      case 'reclaim':
        this.reclaims.push({ worker: e.worker, lock: e.lock, acquired: e.acquired, start: e.start, at: e.at })
        break
      case 'err':
        this.workerErrors.push({ at: e.at, text: `${e.where}: ${e.message}` })
        if (verbose) this.note(`(${e.worker} ${e.where}: ${e.message})`)
        break
      case 'log':
        if (verbose) this.note(`(${e.worker} ${e.level}: ${e.message})`)
        if (e.level === 'warn') {
          this.warnings++
          proc.lastWarnAt = e.at
        } else if (e.level === 'error') {
          this.libraryErrors.push(`${e.worker}: ${e.message}`)
        }
        break
      case 'violation':
        this.violations.push(`${e.worker}: ${e.message}`)
        break
      case 'summary':
        proc.summary = e
        break
    }
  }

  live(): Proc[] {
    return this.procs.filter((p) => p.exit === undefined && !p.killed && !p.stopRequested)
  }

  /** A live worker inside a critical section whose lease is not in doubt, or undefined after `waitMs`. */
  async holder(waitMs: number): Promise<Proc | undefined> {
    const until = realNow() + waitMs
    for (;;) {
      const now = realNow()
      const candidates = this.live().filter((p) => p.stallPendingSince === undefined && now - p.lastWarnAt > 2_500
        && [...p.open.values()].some((o) => !this.lost.has(`${p.name}\0${o.lock}\0${o.fence}`)))
      const chosen = pick(candidates)
      if (chosen || now > until) return chosen
      await sleep(10 + Math.random() * 30)
    }
  }

  // ----- faults

  async sigkillHolder(sameName: boolean): Promise<void> {
    const proc = await this.holder(3_000)
    if (!proc || proc.open.size === 0) {
      this.faults.skipped.push(`SIGKILL (${sameName ? 'same name' : 'new name'}): no holder found`)
      return
    }
    const held = [...proc.open.values()]
    const at = realNow()
    proc.killed = true
    proc.child.kill('SIGKILL')
    await proc.closed // every line it wrote has been read
    for (const h of held) {
      const key = `${proc.name}\0${h.lock}\0${h.fence}`
      const finished = this.sections.some((s) => s.worker === proc.name && s.lock === h.lock && s.fence === h.fence)
      let skip: string | undefined
      if (finished) skip = 'it had just left its critical section'
      else if (this.lost.has(key)) skip = 'it had already lost the lock'
      const open = proc.open.get(`${h.lock}\0${h.fence}`)
      if (open) {
        this.sections.push({
          worker: proc.name, lock: open.lock, fence: open.fence, start: open.start, end: at,
          claim: 'killed', write: 'killed', aborted: this.lost.has(key), maxLagMs: 0, stalled: false, killed: true, ...(open.mode ? { mode: open.mode } : {}),
        })
        proc.open.delete(`${h.lock}\0${h.fence}`)
      }
      this.kills.push({ worker: proc.name, lock: h.lock, fence: h.fence, at, heldSince: h.start, leaseFrom: h.leaseFrom, sameName, skip, ...(h.mode ? { mode: h.mode } : {}) })
    }
    if (sameName) this.faults.killSameName++
    else this.faults.killNewName++
    const slot = proc.slot
    const name = sameName ? proc.name : `${slot.base}.${++slot.generation}`
    const locks = held.map((h) => h.lock)
    const replacement = this.spawnWorker(slot, name, sameName ? locks : [])
    const what = held.map((h) => `${h.lock}${h.mode ? ` (${h.mode})` : ''} #${h.fence}`).join(' and ')
    this.note(`SIGKILL ${proc.name} holding ${what}; restarted as ${name} (${sameName ? `same instance name: it must get ${locks.join(' and ')} at once` : 'new instance name: the lock frees itself after the timeout'})`)
    await this.ready(replacement)
  }

  async killHolderConnections(): Promise<void> {
    const proc = (await this.holder(2_000)) ?? pick(this.live())
    if (!proc) return
    const held = proc.open.size > 0 ? [...proc.open.values()].map((o) => `${o.lock} #${o.fence}`).join(' and ') : undefined
    // A burst, so that some kill lands on a statement in flight (a renewal, a claim, a write)
    // rather than only on an idle pooled connection.
    let count = 0
    for (let i = 0; i < 4; i++) {
      if (i > 0) await sleep(60 + Math.random() * 120)
      count += await killConnections(this.knex, this.o.database, proc.slot.login)
    }
    this.faults.connectionKills++
    this.faults.connectionsKilled += count
    this.lastConnectionKill = realNow()
    this.note(`killed ${count} database connection(s) of ${proc.name}${held ? ` (holding ${held})` : ''} in a burst of 4 kills over 0.5 s`)
  }

  async restart(): Promise<void> {
    const started = realNow()
    this.note(`restarting the ${this.o.database} server`)
    await restartServer(this.knex, this.o.database)
    const ms = realNow() - started
    this.faults.restarts++
    this.faults.restartMs.push(ms)
    this.lastRestartEnd = realNow()
    this.restartEnds.push(this.lastRestartEnd)
    this.note(`the ${this.o.database} server answers again after ${fmtS(ms)}`)
  }

  async restartPooler(): Promise<void> {
    const pooler = this.o.pooler
    if (!pooler) throw new Error('this run has no pooler')
    const start = realNow()
    this.note(`SIGKILL PgBouncer (transaction pooling), keep it down ${fmtS(POOLER_DOWN_MS)}, start it again`)
    const { oldPid, newPid } = await restartPooler(pooler, POOLER_DOWN_MS)
    const end = realNow()
    this.faults.poolerRestarts.push({ start, end, oldPid, newPid })
    this.lastRestartEnd = end
    this.note(`PgBouncer answers again after ${fmtS(end - start)}: pid ${oldPid} SIGKILLed, now pid ${newPid}`)
  }

  stall(): void {
    const proc = pick(this.live().filter((p) => p.stallPendingSince === undefined))
    if (!proc) return
    proc.stallPendingSince = realNow()
    proc.child.stdin?.write('stall\n')
    this.faults.stallsRequested++
    this.note(`told ${proc.name} to stall ${fmtS(STALL_MS)} (lock timeout ${fmtS(LOCK_TIMEOUT_MS)}) in its next critical section`)
  }

  /** The faults of one run, at roughly these moments (ms), each after the previous one is done. */
  schedule(): Array<{ at: number; kind: FaultKind }> {
    const server = this.o.database !== 'sqlite'
    const restartable = this.o.pooler ? undefined : cannotRestart(this.o.database)
    if (server && restartable) this.faults.skipped.push(`server restart: ${restartable}`)
    // Through the pooler, the pooler is restarted instead of the server, early enough in a short
    // run (10.5 s) that the workers are seen to go on after it; what follows it is for longer runs.
    const cycle: Array<{ at: number; kind: FaultKind }> = this.o.pooler
      ? [
          { at: 1_000, kind: 'stall' }, { at: 2_000, kind: 'kill-same' }, { at: 3_500, kind: 'connection' }, { at: 5_000, kind: 'pooler-restart' },
          { at: 9_000, kind: 'stall' }, { at: 11_500, kind: 'kill-new' }, { at: 12_500, kind: 'connection' }, { at: 14_000, kind: 'kill-same' },
        ]
      : server
      ? [
          { at: 1_000, kind: 'stall' }, { at: 2_000, kind: 'kill-same' }, { at: 4_000, kind: 'connection' },
          { at: 6_000, kind: 'kill-new' }, { at: 7_500, kind: restartable ? 'connection' : 'restart' },
          { at: 9_500, kind: 'stall' }, { at: 10_500, kind: 'connection' }, { at: 12_500, kind: 'kill-same' }, { at: 13_500, kind: 'kill-new' },
        ]
      : [
          { at: 1_000, kind: 'stall' }, { at: 2_000, kind: 'kill-same' }, { at: 4_000, kind: 'kill-new' },
          { at: 7_000, kind: 'stall' }, { at: 8_000, kind: 'kill-same' }, { at: 9_500, kind: 'kill-new' },
        ]
    const cycleMs = server ? 16_000 : 12_000
    const out: typeof cycle = []
    for (let offset = 0; offset + cycleMs <= Math.max(cycleMs, this.o.durationMs); offset += cycleMs) {
      // Restart the server once per pair in short mode, once per cycle in long runs. Read/write
      // locks are not taken over at once by a store of the same instance name (only once the
      // lease has run out, as by anyone): there every killed worker comes back under a new name.
      for (const f of cycle) out.push({ at: offset + f.at + (Math.random() - 0.5) * 600, kind: this.o.kind === 'rw' && f.kind === 'kill-same' ? 'kill-new' : f.kind })
    }
    return out
  }

  async injectFaults(until: number): Promise<void> {
    for (const fault of this.schedule()) {
      const at = this.started + fault.at
      if (at > until) break
      if (realNow() < at) await sleep(at - realNow())
      try {
        switch (fault.kind) {
          case 'stall':
            this.stall()
            break
          case 'kill-same':
          case 'kill-new': {
            // A SIGKILL is judged by when its lease could end, so the holder's renewals must be
            // on time: not right after a connection kill or a restart.
            const calm = Math.max(this.lastConnectionKill + 2_500, this.lastRestartEnd + 3_000)
            if (realNow() < calm) await sleep(calm - realNow())
            await this.sigkillHolder(fault.kind === 'kill-same')
            break
          }
          case 'connection':
            await this.killHolderConnections()
            break
          case 'restart':
            await this.restart()
            break
          case 'pooler-restart':
            await this.restartPooler()
            break
        }
      } catch (error) {
        this.harnessErrors.push(`${fault.kind}: ${errorText(error)}`)
        this.note(`could not inject ${fault.kind}: ${errorText(error)}`)
      }
    }
  }

  // ----- the end

  async stopWorkers(): Promise<string[]> {
    const hung: string[] = []
    const running = this.procs.filter((p) => p.exit === undefined && !p.killed)
    for (const p of running) {
      p.stopRequested = true
      p.child.stdin?.end('stop\n')
    }
    await Promise.all(running.map(async (p) => {
      const done = await Promise.race([p.closed.then(() => true), sleep(STOP_BOUND_MS, false)])
      if (!done) {
        hung.push(`${p.name} had not exited ${STOP_BOUND_MS / 1000} s after "stop"${p.open.size > 0 ? ` (inside ${[...p.open.values()].map((o) => `${o.lock} #${o.fence}`).join(' and ')})` : ''}; killed`)
        p.child.kill('SIGKILL')
        await p.closed
      }
    }))
    return hung
  }

  /** Runs a harness query, retrying while the server is still coming back. */
  async query<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (error) {
        if (attempt >= 20) throw new Error(`${what}: ${errorText(error)}`)
        await sleep(500)
      }
    }
  }

  async leftoverLocks(): Promise<{ held: string[]; stale: number }> {
    const store = new LockStore(this.knex, { tableName: this.table, lockTimeoutMs: LOCK_TIMEOUT_MS, renewalIntervalMs: RENEWAL_INTERVAL_MS })
    try {
      let rows = await this.query('list locks', () => store.listLocks())
      if (rows.some((r) => !r.stale)) {
        // A holder killed shortly before the end: its row must go stale within one timeout.
        await sleep(LOCK_TIMEOUT_MS + 300)
        rows = await this.query('list locks', () => store.listLocks())
      }
      return {
        held: rows.filter((r) => !r.stale).map((r) => `${r.name} held by ${r.instanceName} (fence ${r.fence}, renewed ${Math.round(r.ageMs)} ms ago)`),
        stale: rows.filter((r) => r.stale).length,
      }
    } finally {
      await store.close()
    }
  }

  async journal(): Promise<{ entries: JournalEntry[]; counters: Map<string, bigint>; grants: Grant[] }> {
    const { database } = this.o
    const grantRows = selectedRows(database, await this.query('read the grants', () =>
      this.knex.raw(`SELECT id, lock_name, holder, fence FROM ${grantsTable(this.table)} ORDER BY id`)))
    const journalRows = selectedRows(database, await this.query('read the journal', () =>
      this.knex.raw(`SELECT id, lock_name, op, fence, writer, read_value, value FROM ${journalTable(this.table)} ORDER BY id`)))
    const counterRows = selectedRows(database, await this.query('read the counters', () =>
      this.knex.raw(`SELECT lock_name, value FROM ${countersTable(this.table)}`)))
    const big = (v: unknown): bigint => BigInt(String(v))
    return {
      entries: journalRows.map((r) => ({
        id: Number(r.id), lock: String(r.lock_name), op: String(r.op) as 'claim' | 'write', fence: big(r.fence),
        writer: r.writer === null ? null : String(r.writer), readValue: r.read_value === null ? null : big(r.read_value), value: big(r.value),
      })),
      counters: new Map(counterRows.map((r) => [String(r.lock_name), big(r.value)])),
      grants: grantRows.map((r) => ({ id: Number(r.id), lock: String(r.lock_name), holder: String(r.holder), fence: big(r.fence) })),
    }
  }

  #tornDown: Promise<void> | undefined
  tearDown(): Promise<void> {
    this.#tornDown ??= this.#tearDown()
    return this.#tornDown
  }

  async #tearDown(): Promise<void> {
    for (const p of this.procs) if (p.exit === undefined) p.child.kill('SIGKILL')
    if (this.forger && this.forger.exit === undefined) this.forger.child.kill('SIGKILL')
    await Promise.all([...this.procs.map((p) => p.closed), this.forger?.closed])
    await this.query('drop the tables', async () => {
      await dropResource(this.knex, this.o.database, this.table)
      await dropLockTable(this.knex, { tableName: this.table })
    }).catch((error: unknown) => console.log(`  could not drop ${this.table}: ${errorText(error)}`))
    for (const slot of this.slots) {
      await dropSlotLogin(this.knex, this.o.database, slot.login).catch((error: unknown) => console.log(`  could not drop a login: ${errorText(error)}`))
    }
    await this.knex.destroy()
  }
}

// ---------------------------------------------------------------------------------------------
// Verdicts

interface Verdict {
  label: string
  invariants: Invariant[]
  lines: string[]
  ok: boolean
  seconds: number
  /** For the summary: what the forger sent, if one ran. */
  forged?: string
  /** For the summary: anything else to say about the run (the pooler restarts). */
  note?: string
}

function count<T>(items: readonly T[], test: (item: T) => boolean): number {
  return items.filter(test).length
}

/** What every run must satisfy, faults or not, clocks right or wrong. */
async function commonInvariants(run: Run, hung: string[]): Promise<{ invariants: Invariant[]; stats: string[]; fences: FenceVerdict }> {
  const { entries, counters, grants } = await run.journal()
  const journal = checkJournal(entries, counters)
  const reports = checkReports(run.sections, entries)
  const fences = checkFences(grants, run.acquisitions)
  const leftovers = await run.leftoverLocks()
  const badExits = run.procs
    .filter((p) => !p.killed && p.exit && (p.exit.code !== 0 || p.exit.signal !== null) && !hung.some((h) => h.startsWith(`${p.name} `)))
    .map((p) => `${p.name} exited with ${p.exit?.signal ?? `code ${p.exit?.code}`}${p.stderr.length ? `: ${p.stderr.slice(-5).join(' | ')}` : ''}`)
  const noSummary = run.procs.filter((p) => !p.killed && p.exit?.code === 0 && !p.summary).map((p) => `${p.name} exited without its summary line`)
  const total = [...counters.values()].reduce((a, b) => a + b, 0n)
  const accepted = count(run.sections, (s) => s.write === 'ok')
  const invariants = [
    invariant('no lost update', journal.lostUpdates,
      journal.lostUpdates.length === 0
        ? `${counters.size} counters total ${total} = ${journal.writes} accepted writes; each read what the previous accepted write stored`
        : `${counters.size} counters total ${total} after ${journal.writes} accepted writes`),
    invariant('no write accepted with a stale fence', journal.staleFences,
      `${journal.writes} writes and ${journal.claims} claims accepted, in commit order, never below a fence seen before`),
    invariant('journal, counters and worker reports agree', [...journal.corrupt, ...reports],
      `${accepted} writes reported accepted, ${count(run.sections, (s) => s.write === 'refused')} reported refused`),
    invariant('fences strictly increasing per lock in grant order; each held fence granted by the database to its holder', fences.problems,
      `${grants.length} grants in the database's order, ${run.acquisitions.length} acquisitions reported${fences.problems.length === 0 ? ', each a grant to the worker that reported it' : ''}`),
    invariant('no unhandled rejection, uncaught exception or bad exit in any worker', [...run.violations, ...badExits, ...noSummary],
      `${run.procs.length} worker processes, ${run.procs.filter((p) => p.killed).length} of them SIGKILLed by the harness`),
    invariant('every worker finished after "stop"', hung, `all within ${STOP_BOUND_MS / 1000} s`),
    invariant('no lock held after all workers exited', leftovers.held,
      leftovers.stale > 0 ? `${leftovers.stale} stale row(s) left by killed workers, free for anyone` : 'no rows left'),
    invariant('the harness could inject every fault', run.harnessErrors, run.harnessErrors.length === 0 ? 'yes' : 'no'),
  ]
  const stats = [
    `critical sections ${run.sections.length}: writes accepted ${accepted}, refused ${count(run.sections, (s) => s.write === 'refused')}, ` +
      `failed ${count(run.sections, (s) => s.write === 'error')}, cut short by SIGKILL ${count(run.sections, (s) => s.killed)}; ` +
      `claims refused ${count(run.sections, (s) => s.claim === 'refused')}`,
    `acquisitions ${run.acquisitions.length} by ${new Set(run.acquisitions.map((a) => a.worker)).size} workers ` +
      `(${run.procs.reduce((n, p) => n + (p.summary?.handOvers ?? 0), 0)} taken by another task of the same worker as it was released); lost locks ${[...run.lossReasons].map(([r, n]) => `${r} ${n}`).join(', ') || 'none'}; ` +
      `library warnings ${run.warnings}, worker-side errors ${run.workerErrors.length}`,
  ]
  const kinds = errorKinds(run.workerErrors, 4)
  if (kinds) stats.push(`worker-side errors (all handled): ${kinds}`)
  if (run.libraryErrors.length > 0) stats.push(`library error-level logs: ${run.libraryErrors.slice(0, 3).join(' | ')}`)
  return { invariants, stats, fences }
}

/**
 * Worker errors grouped by kind (names and numbers masked), the most frequent `top` first.
 * `rootOnly`: a kind is where the error happened and its innermost cause (the driver's words).
 */
function errorKinds(errors: ReadonlyArray<{ text: string }>, top: number, rootOnly = false): string {
  const kinds = new Map<string, number>()
  for (const e of errors) {
    const parts = e.text.split(': ')
    // knex puts the statement before the driver's message: `<sql> - <message>`.
    const text = rootOnly && parts.length > 1 ? `${parts[0]}: ${parts.at(-1)!.split(' - ').at(-1)}` : e.text
    const kind = text.replace(/"[^"]*"/g, '"…"').replace(/\d+/g, 'N').slice(0, 140)
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1)
  }
  return [...kinds].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, n]) => `${n}× ${k}`).join(' | ')
}

/** What the workers saw of one pooler restart: their errors and lost leases from its SIGKILL to a little after it answered again. */
function poolerAftermath(run: Run, r: Faults['poolerRestarts'][number]): string {
  const within = (at: number): boolean => at >= r.start && at <= r.end + POOLER_AFTERMATH_MS
  const errors = run.workerErrors.filter((e) => within(e.at))
  const losses = new Map<string, number>()
  for (const l of run.losses.filter((x) => within(x.at))) losses.set(l.reason, (losses.get(l.reason) ?? 0) + 1)
  return `pid ${r.oldPid} → ${r.newPid}, down ${fmtS(r.end - r.start)}; until ${fmtS(POOLER_AFTERMATH_MS)} after, the workers saw ` +
    `${errors.length} error(s)${errors.length ? ` (${errorKinds(errors, 4, true)})` : ''} and lost ${[...losses].map(([reason, n]) => `${n} lock(s) '${reason}'`).join(', ') || 'no lock'}`
}

function faultLine(run: Run): string {
  const f = run.faults
  const parts = [
    `SIGKILL ${f.killSameName + f.killNewName} (restarted with the same name ${f.killSameName}, a new name ${f.killNewName})`,
    `stalls ${run.stalls.length}`,
    `skewed clocks ${run.slots.filter((s) => s.skewMs !== 0).map((s) => `${s.base} ${fmtSkew(s.skewMs)}`).join(', ') || 'none'}`,
  ]
  if (run.o.database !== 'sqlite') {
    parts.push(`connection kills ${f.connectionKills} (${f.connectionsKilled} connections)`)
    if (run.o.pooler) parts.push(`PgBouncer restarts ${f.poolerRestarts.length}${f.poolerRestarts.length ? ` (${f.poolerRestarts.map((r) => poolerAftermath(run, r)).join('; ')})` : ''}`)
    else parts.push(`server restarts ${f.restarts}${f.restartMs.length ? ` (${f.restartMs.map(fmtS).join(', ')})` : ''}`)
  }
  return `faults: ${parts.join('; ')}${f.skipped.length ? `; not injected: ${f.skipped.join('; ')}` : ''}`
}

/**
 * One pair under faults: plain locks (`kind` 'plain', per strategy), or read/write locks and
 * multi-locks (`kind` 'rw', once per database, native: PostgreSQL's acquisitions then call the routine).
 */
async function tortureOne(database: Database, strategy: StrategyName, kind: WorkerKind = 'plain', pooler?: Pooler): Promise<Verdict> {
  const rw = kind === 'rw'
  const label = rw ? `${database} read/write` : `${database}/${strategy}${pooler ? ' via PgBouncer' : ''}`
  const durationMs = pooler ? poolerMs() : pairMs(database)
  console.log(`\n== ${label}: ${WORKERS} workers, ${rw ? `read/write locks ${RW_LOCKS.join(', ')} (about 70 % reads; 20 % multi-locks over two of them)` : `locks ${LOCKS.join(', ')}`}, ` +
    `${fmtS(durationMs)}, lock timeout ${LOCK_TIMEOUT_MS} ms, renewal ${RENEWAL_INTERVAL_MS} ms, clock 'database'` +
    `${pooler ? `; the workers connect through PgBouncer in transaction pooling mode at ${pooler.url}, which is SIGKILLed and started again (not the server)` : ''}`)
  // Read/write locks use no notifications: nothing for a forger to forge. Nor do stores whose
  // connections go through a pooler: they never LISTEN.
  const forge = database === 'postgres' && !rw && !pooler
  const run = new Run({ database, strategy, clock: 'database', durationMs, work: 'mixed', label, forge, kind, ...(pooler ? { pooler } : {}) })
  current = run
  const t0 = realNow()
  let verdict: Verdict
  try {
    await run.setUp()
    const end = run.started + durationMs
    await run.injectFaults(end)
    // The last kill must have had time to show its lock freeing itself.
    const lastKill = run.kills.at(-1)?.at ?? 0
    const until = Math.max(end, lastKill + LOCK_TIMEOUT_MS + 2_500)
    if (realNow() < until) await sleep(until - realNow())
    const runEnd = realNow()
    // Whatever ran the pooler at the end must be what the harness started last: else it died by itself.
    const poolerPidAtEnd = pooler ? poolerPid(pooler.pidFile) : undefined
    const hung = await run.stopWorkers()
    run.note(`stopped the workers`)
    // The forger ran on while the workers closed their stores.
    const forgerProblems = await run.stopForger()
    const { invariants, stats, fences } = await commonInvariants(run, hung)
    let forged: string | undefined
    if (forge) {
      const f = run.forger?.summary
      const forgedFence = run.acquisitions.filter((a) => a.fence === FORGED_FENCE)
        .map((a) => `${a.worker} held ${a.lock} with the forged fence ${FORGED_FENCE}`)
      const problems = [...forgerProblems, ...forgedFence, ...fences.ungranted]
      forged = f ? `${f.sent} notifications forged` : 'no forger summary'
      invariants.push(invariant('forged notifications grant nothing: no worker held a fence the database had not given it', problems,
        problems.length > 0 ? forged
          : `${forged}; no worker held fence ${FORGED_FENCE}, every one of ${run.acquisitions.length} acquisitions was a grant the database recorded for that worker`))
      if (f) {
        stats.push(`forger: ${f.sent} notifications forged in ${f.rounds} rounds (malformed ${f.malformed}, forged hand-overs with fence ${FORGED_FENCE} ${f.forged}, ` +
          `replays ${f.replayed} of ${f.captured} real payloads heard), ${f.onReleased} on ${run.table}_released and ${f.onOwnChannels} on ${f.ownChannels} probe channel(s); ` +
          `failed statements ${f.errors}, reconnects ${f.reconnects}${f.lastError ? ` (last: ${f.lastError.slice(0, 80)})` : ''}; ` +
          `the workers' stores ignored ${run.procs.reduce((n, p) => n + (p.summary?.ignoredNotifications ?? 0), 0)} malformed notifications (SIGKILLed workers not counted)`)
      }
    }

    const stallProblems = run.stalls.filter((s) => !s.abortedOnWake).map((s) => `${s.worker} woke from a ${s.ms} ms stall holding ${s.lock} #${s.fence} and its signal had not aborted`)
    if (run.faults.stallsRequested > 0 && run.stalls.length === 0) stallProblems.push('no worker stalled, though told to')
    const lateRefused = count(run.stalls, (s) => s.write === 'refused')
    invariants.push(invariant('a stalled holder\'s signal is aborted when it wakes', stallProblems,
      `${run.stalls.length} stall(s) of ${fmtS(STALL_MS)}; late writes refused by the fence ${lateRefused}, accepted (nobody had claimed the counter meanwhile) ${count(run.stalls, (s) => s.write === 'ok')}`))

    const kills = checkKills(run.kills, run.acquisitions, run.reclaims, {
      lockTimeoutMs: LOCK_TIMEOUT_MS, toleranceMs: 100, availableWithinMs: AVAILABLE_WITHIN_MS, runEnd,
    })
    invariants.push(invariant(rw ? 'a killed holder\'s lock: to a holder in a conflicting mode only after the timeout (a writer, after a killed reader)'
      : 'a killed holder\'s lock: at once to its namesake, to others only after the timeout', kills.problems,
      (rw ? '' : `reclaimed at once by a replacement with the same name ${kills.reclaimed}` +
      `${kills.reclaimInconclusive.length ? ` (+${kills.reclaimInconclusive.length} inconclusive: ${kills.reclaimInconclusive.join('; ')})` : ''}, `) +
      `taken over by others ${kills.takenOver.map((ms) => fmtS(ms)).join(', ') || '—'} after the kill` +
      `${kills.margins.length ? ` (at the earliest ${Math.round(Math.min(...kills.margins))} ms after the lease could end)` : ''}, not checkable ${kills.notChecked}`))

    const overlaps = findOverlaps(run.sections, OVERLAP_TOLERANCE_MS, BLOCKED_MS)
    const unexplained = overlaps.filter((o) => !o.explanation)
    invariants.push(invariant(rw ? 'no writer shares its lock with anyone (many readers may) unless a lease was lost (skewed clocks harmless)'
      : 'one holder at a time unless a lease was lost (skewed clocks harmless)',
      unexplained.map((o) => `${o.lock}: ${o.later.worker} #${o.later.fence} started ${Math.round(o.overlapMs)} ms before ${o.earlier.worker} #${o.earlier.fence} ended, whose signal had not aborted`),
      `${overlaps.length} overlap(s) with ${new Set(overlaps.map((o) => o.earlier)).size} earlier holder(s), each after a lost lease (${[...new Set(overlaps.map((o) => o.explanation))].filter(Boolean).join('; ') || '—'}); ` +
      `skewed workers ran ${run.slots.filter((s) => s.skewMs !== 0).map((s) => `${count(run.sections, (x) => x.worker.startsWith(`${s.base}`) && x.write === 'ok')} (${s.base})`).join(', ')} accepted sections`))

    if (rw) {
      const reads = checkStableReads(run.sections, BLOCKED_MS)
      invariants.push(invariant('a reader reads the same value at the end of its section: no write was accepted while it held the lock, unless it lost its lease', reads.problems,
        `${reads.checked} reader section(s) read twice; changed under ${reads.explained} reader(s) that had lost their lease`))
      stats.push(`read/write: sections ${count(run.sections, (x) => x.mode === 'read' && !x.killed)} read, ${count(run.sections, (x) => x.mode === 'write' && !x.killed)} write; ` +
        `multi-lock parts ${run.multiParts}; readers' claims refused (a newer reader had claimed) ${count(run.sections, (x) => x.mode === 'read' && x.claim === 'refused')}; ` +
        `overlaps involving a writer ${overlaps.length} (two readers' are not overlaps)`)
    }

    if (pooler) {
      const restarts = run.faults.poolerRestarts
      const verdict = checkPoolerRestarts(restarts, run.sections, { atStart: run.poolerPidAtStart, atEnd: poolerPidAtEnd })
      invariants.push(invariant('PgBouncer was restarted (a new process each time), the run went on after each restart, and it never died by itself', verdict.problems,
        `pid ${run.poolerPidAtStart ?? '?'} at the start, ${restarts.map((r) => `${r.oldPid} → ${r.newPid}`).join(', ') || 'no restart'}, ${poolerPidAtEnd ?? 'none'} at the end; ` +
        `accepted writes after each restart: ${verdict.writesAfter.join(', ') || '—'}`))
    }
    if (run.faults.restarts > 0) {
      const after = run.restartEnds.map((t) => count(run.sections, (s) => s.start > t && s.write === 'ok'))
      invariants.push(invariant('the run went on after each server restart', after.filter((n) => n === 0).map(() => 'no accepted write after a restart'),
        `accepted writes after each restart: ${after.join(', ')}`))
    }
    verdict = {
      label, invariants, seconds: (realNow() - t0) / 1000, ok: invariants.every((i) => i.ok),
      lines: [...stats, faultLine(run)], ...(forged ? { forged } : {}),
      ...(pooler ? { note: `PgBouncer restarted ${run.faults.poolerRestarts.length}×${run.faults.poolerRestarts.map((r) => ` (${poolerAftermath(run, r)})`).join('')}` } : {}),
    }
  } catch (error) {
    verdict = { label, seconds: (realNow() - t0) / 1000, ok: false, lines: [], invariants: [invariant('the run completed', [`harness failure: ${error instanceof Error ? error.stack : String(error)}`], '')] }
  } finally {
    await run.tearDown().catch((error: unknown) => console.log(`  teardown failed: ${errorText(error)}`))
    await ensureServerUp(database).catch(() => undefined)
  }
  printVerdict(verdict)
  return verdict
}

/**
 * The same skewed workers with clock 'local': no faults, only wrong clocks. A worker 3 minutes
 * fast judges every other worker's row 3 minutes old, hence stale, and takes the lock from its
 * live holder; a worker 2 minutes slow writes rows that everyone else judges stale at once.
 * Mutual exclusion breaks; the fences still stop the overtaken holders' writes.
 */
async function demonstrateLocalClock(database: Database, strategy: StrategyName): Promise<{ verdict: Verdict; overlaps: number }> {
  const label = `${database}/${strategy} clock 'local'`
  console.log(`\n== demonstration: ${database}/${strategy} with clock: 'local', the same skewed clocks (${SKEWS.map(fmtSkew).join(', ')}), no other fault, ${fmtS(demoMs)}`)
  const run = new Run({ database, strategy, clock: 'local', durationMs: demoMs, work: 'long', label, forge: false, kind: 'plain' })
  current = run
  const t0 = realNow()
  let verdict: Verdict
  let overlapCount = 0
  try {
    await run.setUp()
    await sleep(demoMs)
    const hung = await run.stopWorkers()
    const { invariants, stats } = await commonInvariants(run, hung)
    const overlaps = findOverlaps(run.sections, 0, BLOCKED_MS)
    overlapCount = overlaps.length
    const unaware = overlaps.filter((o) => !o.explanation).length
    const byFast = count(overlaps, (o) => o.later.worker === 'worker-1')
    const takenOver = run.lossReasons.get('taken-over') ?? 0
    const slowSections = count(run.sections, (s) => s.worker === 'worker-2')
    const refusedWrites = count(run.sections, (s) => s.write === 'refused')
    const refusedClaims = count(run.sections, (s) => s.claim === 'refused')
    verdict = {
      label, invariants, seconds: (realNow() - t0) / 1000, ok: invariants.every((i) => i.ok),
      lines: [
        ...stats,
        `DEMONSTRATED (expected, not a failure): ${overlaps.length} time(s) a worker entered a critical section while another still ran in it (${byFast} by the fast worker-1), ` +
          `${unaware} of them before the earlier holder had any sign of it; ${takenOver} lock(s) taken from a live holder ('taken-over'); ` +
          `worker-2 (slow clock) ran ${slowSections} section(s), its rows looking stale to everyone else from the start`,
        `the fences caught the overtaken holders: claims refused ${refusedClaims}, writes refused ${refusedWrites}; no update was lost (see the invariants)`,
      ],
    }
  } catch (error) {
    verdict = { label, seconds: (realNow() - t0) / 1000, ok: false, lines: [], invariants: [invariant('the run completed', [`harness failure: ${error instanceof Error ? error.stack : String(error)}`], '')] }
  } finally {
    await run.tearDown().catch((error: unknown) => console.log(`  teardown failed: ${errorText(error)}`))
  }
  printVerdict(verdict)
  return { verdict, overlaps: overlapCount }
}

function printVerdict(v: Verdict): void {
  for (const line of v.lines) console.log(`  ${line}`)
  console.log('  invariants:')
  for (const i of v.invariants) {
    console.log(`    ${i.ok ? 'ok  ' : 'FAIL'}  ${i.name}${i.detail ? `: ${i.detail}` : ''}`)
    for (const p of i.problems.slice(0, 8)) console.log(`            - ${p}`)
    if (i.problems.length > 8) console.log(`            ... and ${i.problems.length - 8} more`)
  }
  console.log(`  ${v.ok ? 'PASS' : 'FAIL'} ${v.label} (${v.seconds.toFixed(1)} s)`)
}

// ---------------------------------------------------------------------------------------------
// Main

const startedAt = realNow()
const matrix = await resolveMatrix()
for (const m of matrix.missing) {
  console.log(`${inCI ? 'ERROR' : 'WARNING'}: ${m.database} is not reachable (${m.reason}); ${inCI ? 'CI=true requires it' : 'its pairs are SKIPPED'}`)
}
console.log(`worker-locks torture, ${mode} mode: ${matrix.targets.map((t) => t.id).join(', ') || 'nothing to run'}`)
// The PostgreSQL pairs again through PgBouncer, which must be there under CI=true.
const postgresTargets = matrix.targets.filter((t) => t.database === 'postgres')
const found = postgresTargets.length > 0 ? await findPooler() : undefined
const poolerMissing = found && 'reason' in found ? found.reason : undefined
const poolerWarning = poolerMissing === undefined ? undefined
  : `${inCI ? 'ERROR' : 'WARNING'}: PgBouncer (${POOLER_VARIABLE}) cannot be used: ${poolerMissing}; ` +
    `${inCI ? 'CI=true requires it' : 'the runs through PgBouncer are SKIPPED (.ci/pgbouncer start, then set it; CI=true makes this a failure)'}`
if (poolerWarning) console.log(`\n${'*'.repeat(100)}\n${poolerWarning}\n${'*'.repeat(100)}`)
console.log(`Each worker's critical section: claim the counter with the lock's fence, read it, work, write read + 1 if no higher fence was seen (no transaction).`)

const verdicts: Verdict[] = []
if (!onlyPooler) for (const target of matrix.targets) verdicts.push(await tortureOne(target.database, target.strategy))
const pooler = found && 'pooler' in found ? found.pooler : undefined
const poolerRuns = pooler ? postgresTargets.length : 0
if (pooler) for (const target of postgresTargets) verdicts.push(await tortureOne('postgres', target.strategy, 'plain', pooler))
// Read/write locks and multi-locks: one run per database, native (on PostgreSQL, the one-call routine).
const rwDatabases = onlyPooler ? [] : [...new Set(matrix.targets.map((t) => t.database))]
for (const database of rwDatabases) verdicts.push(await tortureOne(database, 'native', 'rw'))

const demos: Array<{ verdict: Verdict; overlaps: number }> = []
if (!onlyPooler) for (const database of [...new Set(matrix.targets.map((t) => t.database))]) demos.push(await demonstrateLocalClock(database, 'native'))

console.log('\n== summary')
for (const v of verdicts) {
  const forged = v.forged === undefined ? '' : `; ${v.forged}, ${v.invariants.some((i) => i.name.startsWith('forged notifications') && i.ok) ? 'no worker held a fence the database had not given it' : 'SEE ABOVE'}`
  console.log(`  ${v.ok ? 'PASS' : 'FAIL'}  ${v.label.padEnd(20)} ${v.invariants.filter((i) => i.ok).length}/${v.invariants.length} invariants held${forged}${v.note ? `; ${v.note}` : ''}  (${v.seconds.toFixed(1)} s)`)
}
if (poolerWarning) console.log(`  ${inCI ? 'FAIL' : 'SKIP'}  postgres via PgBouncer: ${poolerWarning}`)
for (const d of demos) {
  console.log(`  ${d.verdict.ok ? 'PASS' : 'FAIL'}  ${d.verdict.label.padEnd(20)} ${d.verdict.invariants.filter((i) => i.ok).length}/${d.verdict.invariants.length} invariants held; mutual exclusion broken ${d.overlaps} time(s), as expected  (${d.verdict.seconds.toFixed(1)} s)`)
}
console.log(`
About clocks: with clock 'database' (the default) every row is stamped and judged by the database
server's clock in the same statement, so a worker whose own clock is minutes off behaves exactly
like the others (above: the skewed workers held locks, and no lock was taken from a live holder).
With clock 'local' each worker stamps rows with its own Date.now() and judges others' rows by it:
a worker running fast sees every other holder's row as older than the timeout and takes the lock
from it, and a worker running slow writes rows that everyone else finds stale at once. Use 'local'
only where clocks agree to well within the lock timeout. Fencing still protects a resource that
checks fences, as the demonstrations show, but the lock itself no longer excludes anyone.`)
const failed = verdicts.filter((v) => !v.ok).length + demos.filter((d) => !d.verdict.ok).length
const missingInCI = inCI && (matrix.missing.length > 0 || poolerMissing !== undefined)
const pairs = onlyPooler ? 0 : matrix.targets.length
const passed = failed === 0 && !missingInCI && verdicts.length > 0
console.log(`\ntorture ${passed ? 'PASSED' : verdicts.length === 0 ? 'FAILED (nothing ran)' : 'FAILED'}: ${pairs} pair(s), ${poolerRuns} run(s) through PgBouncer, ` +
  `${rwDatabases.length} read/write run(s), ${demos.length} demonstration(s), ${fmtS(realNow() - startedAt)}`)
process.exit(passed ? 0 : 1)
