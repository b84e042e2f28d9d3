import { spawn, type ChildProcess } from 'node:child_process'
import { constants } from 'node:os'
import type { Knex } from 'knex'
import { LockDatabaseError, LockStore, LockTableError, LockTimeoutError, type Lock } from '../index.js'
import { DEFAULT_LOCK_TIMEOUT_MS } from '../validate.js'
import { secondsOption, UsageError, type ParsedArgs } from './args.js'
import { databaseTrouble, MIGRATE_HINT, reasonOf, tableTrouble } from './failure.js'
import { printable, quoted } from './printable.js'

/** Exit codes of `worker-locks run`, besides the command's own. */
export const EXIT = { failed: 1, busy: 75, lost: 70, notExecutable: 126, notFound: 127 } as const

const FORWARDED: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

// How often, after the command exited, we look whether what it started in its group is gone.
const GROUP_POLL_MS = 100

const say = (message: string): void => { console.error(`worker-locks: ${message}`) }

/** Says `message` and gives back `code`, for the one-line failures that end a run. */
function fail(message: string, code: number): number {
  say(message)
  return code
}

/** The exit status of a process stopped by `signal`, as shells report it. */
function signalExit(signal: NodeJS.Signals | null): number {
  return 128 + (signal ? constants.signals[signal] ?? 0 : 0)
}

/** What `worker-locks run` was asked to do, and how its messages name the lock and the command. */
interface RunOptions {
  readonly name: string
  readonly key: string
  readonly command: readonly string[]
  readonly onLost: 'stop' | 'ignore'
  readonly lockTimeoutMs: number
  readonly graceMs: number
  /** How long after the command started the lock stays taken, at least (0: none). */
  readonly minHoldMs: number
  /** Whether --wait was given; `waitMs` is Infinity when it was given without a number. */
  readonly waits: boolean
  readonly waitMs: number
  /** `lock "NAME"`, with its key when it has one. */
  readonly what: string
  /** `not running COMMAND`, the end of every line on a command that was not started. */
  readonly notRunning: string
  /** The database, as messages name it. */
  readonly database: string
}

/** `worker-locks run NAME [--key K] [--wait [S]] -- COMMAND ARGS…` */
export async function runCommand(knex: Knex, tableName: string | undefined, args: ParsedArgs, database: string): Promise<number> {
  const run = runOptions(args, database)
  const log = acquisitionLog(run.waitMs)
  const store = new LockStore(knex, { tableName, lockTimeoutMs: run.lockTimeoutMs, logger: { warn: log.warn } })
  try {
    const lock = await acquire(store, run, log)
    if (typeof lock === 'number') return lock
    const { code, startedAt } = await supervise(lock, run)
    if (startedAt !== undefined && run.minHoldMs > 0) await keep(lock, run, startedAt)
    return code
  } finally {
    await store.close()
  }
}

/** The options of `run`, checked in the order they are reported; a UsageError names a bad one. */
function runOptions(args: ParsedArgs, database: string): RunOptions {
  const [name, ...extra] = args.positionals
  const command = args.rest ?? []
  if (name === undefined || extra.length > 0 || command.length === 0) {
    throw new UsageError('usage: worker-locks run NAME [--key K] [--wait [SECONDS]] -- COMMAND [ARGS…]')
  }
  const key = typeof args.options.get('key') === 'string' ? String(args.options.get('key')) : ''
  const onLost = onLostOption(args)
  const lockTimeoutMs = secondsOption(args, 'lock-timeout', DEFAULT_LOCK_TIMEOUT_MS)
  const graceMs = secondsOption(args, 'grace', 10_000)
  const minHoldMs = secondsOption(args, 'min-hold', 0)
  const wait = args.options.get('wait')
  const waitMs = wait === true ? Infinity : secondsOption(args, 'wait', 0)
  if (lockTimeoutMs < 1_000) throw new UsageError('option --lock-timeout must be at least 1 second')
  const what = `lock ${quoted(name)}${key ? ` (key ${quoted(key)})` : ''}`
  const notRunning = `not running ${printable(command[0] ?? '')}`
  return { name, key, command, onLost, lockTimeoutMs, graceMs, minHoldMs, waits: wait !== undefined, waitMs, what, notRunning, database }
}

function onLostOption(args: ParsedArgs): 'stop' | 'ignore' {
  const onLost = args.options.get('on-lost') ?? 'stop'
  if (onLost !== 'stop' && onLost !== 'ignore') throw new UsageError(`option --on-lost takes stop or ignore, got ${JSON.stringify(onLost)}`)
  return onLost
}

/** The store's logger for a run; `acquired()` marks the end of the acquisition. */
interface AcquisitionLog {
  readonly warn: (details: object, message: string) => void
  readonly acquired: () => void
}

// While the lock is being acquired, the store's failures end in one line saying why we gave
// up; a retry-by-retry account of them is only worth having during a wait without an end,
// and then once per kind.
function acquisitionLog(waitMs: number): AcquisitionLog {
  let acquiring = true
  const shown = new Set<string>()
  const warn = (details: object, message: string): void => {
    if (acquiring && 'err' in details) {
      if (waitMs !== Infinity || shown.has(message)) return
      shown.add(message)
    }
    say(warningLine(details, message))
  }
  return { warn, acquired: () => { acquiring = false } }
}

/** A warning of the store as one line of ours, with the driver's reason when it has an error. */
function warningLine(details: object, message: string): string {
  const err = (details as { err?: unknown }).err
  const text = printable(message.replace(/^worker-locks: /, ''))
  return err === undefined ? text : `${text.replace(/\.$/, '')} (${reasonOf(err)})`
}

/**
 * Tries the lock once, or waits for it with --wait. Resolves the lock, or the exit code of a run
 * that ends here, its one line said: busy, stopped by a signal, or a failed database.
 */
async function acquire(store: LockStore, run: RunOptions, log: AcquisitionLog): Promise<Lock | number> {
  // A signal while waiting stops the wait; the exit status says which signal it was.
  const interrupt = interruptOnSignals()
  let lock: Lock | null
  try {
    lock = run.waits
      ? await store.acquireLock(run.name, run.key, { timeoutMs: run.waitMs, signal: interrupt.signal })
      : await store.tryAcquireLock(run.name, run.key)
  } catch (error) {
    const signalled = interrupt.signalled()
    if (signalled) return signalExit(signalled)
    return acquireFailure(error, run)
  } finally {
    log.acquired()
    interrupt.stop()
  }
  return lock ?? await heldElsewhere(store, run)
}

/** An AbortSignal that SIGINT, SIGTERM or SIGHUP aborts, until `stop()`; `signalled()` says which one did. */
function interruptOnSignals(): { signal: AbortSignal, signalled: () => NodeJS.Signals | undefined, stop: () => void } {
  const controller = new AbortController()
  let signalled: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    signalled = signal
    controller.abort(new Error(`stopped by ${signal}`))
  }
  for (const signal of FORWARDED) process.on(signal, onSignal)
  return {
    signal: controller.signal,
    signalled: () => signalled,
    stop: () => { for (const signal of FORWARDED) process.removeListener(signal, onSignal) },
  }
}

/** The one line and exit code for a lock that could not be acquired; other errors are thrown on. */
function acquireFailure(error: unknown, run: RunOptions): number {
  if (error instanceof LockTableError) return fail(`${tableTrouble(error, run.database)}; ${run.notRunning} ${MIGRATE_HINT}`, EXIT.failed)
  // With a cause, the wait ended because the database could not be asked, not because the
  // lock was busy: retrying later will not help until someone fixes the database.
  if (error instanceof LockTimeoutError && error.cause !== undefined) {
    return fail(`${databaseTrouble(error.cause, run.waitMs / 1000, run.database)}; ${run.notRunning}`, EXIT.failed)
  }
  if (error instanceof LockTimeoutError) return fail(`${run.what} is still busy after ${run.waitMs / 1000} s; ${run.notRunning}`, EXIT.busy)
  if (error instanceof LockDatabaseError) return fail(`${databaseTrouble(error, undefined, run.database)}; ${run.notRunning}`, EXIT.failed)
  throw error
}

/** The one line, naming the holder, for a lock someone else holds (or an earlier run's --min-hold keeps). */
async function heldElsewhere(store: LockStore, run: RunOptions): Promise<number> {
  const [holder] = await store.listLocks({ name: run.name, key: run.key })
  if (holder?.instanceName === '') {
    const left = Math.max(0, holder.leaseMs - holder.ageMs) / 1000
    return fail(`${run.what} is kept by an earlier run's --min-hold for ${left.toFixed(1)} s more; ${run.notRunning}`, EXIT.busy)
  }
  return fail(`${run.what} is held by ${holder ? printable(holder.instanceName) : 'another worker'}; ${run.notRunning}`, EXIT.busy)
}

/**
 * Releases the lock of a command that started at `startedAt` (performance.now()) so that it stays
 * taken until --min-hold after that. If the database fails, the lock stays taken until its lease
 * ends, which is longer: said, and the command's exit code stands.
 */
async function keep(lock: Lock, run: RunOptions, startedAt: number): Promise<void> {
  const keepForMs = Math.max(0, Math.ceil(startedAt + run.minHoldMs - performance.now()))
  await lock.release({ keepForMs }).catch((error: unknown) => {
    say(`could not keep ${run.what} for --min-hold (${reasonOf(error)}); it stays taken until its lease ends (--lock-timeout)`)
  })
}

/** Sends `signal` to the process group led by `child`; false when no process is left in it. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals | 0): boolean {
  const pid = child.pid
  if (pid === undefined) return false
  // Windows has no process groups: the command itself is all that can be reached.
  if (process.platform === 'win32') return signal === 0 ? child.exitCode === null && child.signalCode === null : child.kill(signal)
  try {
    process.kill(-pid, signal)
    return true
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    // ESRCH: everyone in the group has exited. EPERM: what is left is not ours to signal.
    if (code !== 'ESRCH') say(`could not signal the process group of ${printable(String(child.spawnfile))}: ${printable(String(code))}`)
    return false
  }
}

/** How a supervised run ended: its exit code, and when the command started (undefined: it never did). */
interface RunEnd {
  readonly code: number
  readonly startedAt: number | undefined
}

/**
 * Runs the command in a process group of its own, passes SIGINT, SIGTERM and SIGHUP on to that
 * group, and stops the group if the lock is lost (SIGTERM, then SIGKILL after --grace). Once
 * the command has exited, whatever it left running in its group is stopped the same way before
 * this resolves, so nothing it started runs on after the lock is released. Resolves the exit code.
 */
function supervise(lock: Lock, run: RunOptions): Promise<RunEnd> {
  return new Promise((resolve) => { new Supervision(lock, run, resolve).start() })
}

/** One run of the command under a lock, from spawning it to the exit code (see `supervise`). */
class Supervision {
  readonly #lock: Lock
  readonly #run: RunOptions
  readonly #resolve: (end: RunEnd) => void
  readonly #program: string
  #child: ChildProcess | undefined
  #startedAt: number | undefined
  #lost = false
  #killTimer: NodeJS.Timeout | undefined
  #killed = false
  #poll: NodeJS.Timeout | undefined
  #settled = false
  // Listeners as fields, so that the very functions added are the ones removed.
  readonly #forward = (signal: NodeJS.Signals): void => { if (this.#child) signalGroup(this.#child, signal) }
  readonly #onAbort = (): void => { this.#lockLost() }

  constructor(lock: Lock, run: RunOptions, resolve: (end: RunEnd) => void) {
    this.#lock = lock
    this.#run = run
    this.#resolve = resolve
    this.#program = printable(run.command[0] ?? '')
  }

  start(): void {
    for (const signal of FORWARDED) process.on(signal, this.#forward)
    this.#lock.signal.addEventListener('abort', this.#onAbort, { once: true })
    const child = this.#spawn()
    if (!child) return
    child.on('spawn', () => { this.#startedAt = performance.now() })
    child.on('error', (error) => { this.#cannotStart(error) })
    child.on('exit', (code, signal) => { this.#exited(child, code, signal) })
  }

  /** Starts the command; undefined when that failed at once (and the run is finished). */
  #spawn(): ChildProcess | undefined {
    const [file = '', ...args] = this.#run.command
    try {
      // A group of its own, so that signals reach everything the command starts (the children of
      // a shell, say), not only the process started here.
      this.#child = spawn(file, args, { stdio: 'inherit', detached: true })
      return this.#child
    } catch (error) {
      // Most spawn failures arrive as an 'error' event; the rarer ones are thrown.
      this.#cannotStart(error as NodeJS.ErrnoException)
      return undefined
    }
  }

  #cannotStart(error: NodeJS.ErrnoException): void {
    if (error.code === 'ENOENT') {
      say(`command not found: ${this.#program}`)
      this.#finish(EXIT.notFound)
    } else {
      say(error.code === 'EACCES'
        ? `cannot execute ${this.#program}: permission denied (not an executable file, or not one you may run)`
        : `cannot execute ${this.#program}: ${printable(error.message)}`)
      this.#finish(EXIT.notExecutable)
    }
  }

  /** The lock was lost: stop the command's group, unless --on-lost=ignore. */
  #lockLost(): void {
    if (this.#run.onLost === 'ignore') {
      const reason = printable((this.#lock.signal.reason as Error).message)
      say(`${this.#run.what} was lost (${reason}); --on-lost=ignore, so ${this.#program} keeps running`)
      return
    }
    this.#lost = true
    say(`${this.#run.what} was lost; stopping ${this.#program} (SIGTERM, then SIGKILL after ${this.#run.graceMs / 1000} s)`)
    this.#stopGroup()
  }

  // SIGTERM to the whole group now, SIGKILL after the grace period; once is enough.
  #stopGroup(): void {
    const group = this.#child
    if (!group || this.#killTimer) return
    signalGroup(group, 'SIGTERM')
    this.#killTimer = setTimeout(() => {
      this.#killed = true
      signalGroup(group, 'SIGKILL')
    }, this.#run.graceMs)
  }

  /** The command exited: finish with its status once nothing it left in its group runs. */
  #exited(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    const result = this.#lost ? EXIT.lost : code ?? signalExit(signal)
    if (!signalGroup(child, 0)) {
      this.#finish(result)
      return
    }
    if (!this.#killTimer) say(`${this.#program} exited; stopping what it left running (SIGTERM, then SIGKILL after ${this.#run.graceMs / 1000} s)`)
    this.#stopGroup()
    // After SIGKILL, only processes that have died but not been reaped can remain: their
    // parent's business, not a reason to hold the lock any longer.
    this.#poll = setInterval(() => { if (this.#killed || !signalGroup(child, 0)) this.#finish(result) }, GROUP_POLL_MS)
  }

  /** Resolves `code`, once, and stops listening for signals and the loss of the lock. */
  #finish(code: number): void {
    if (this.#settled) return
    this.#settled = true
    clearTimeout(this.#killTimer)
    clearInterval(this.#poll)
    this.#lock.signal.removeEventListener('abort', this.#onAbort)
    for (const signal of FORWARDED) process.removeListener(signal, this.#forward)
    this.#resolve({ code, startedAt: this.#startedAt })
  }
}
