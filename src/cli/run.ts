import { spawn, type ChildProcess } from 'node:child_process'
import { constants } from 'node:os'
import type { Knex } from 'knex'
import { LockDatabaseError, LockStore, LockTableError, LockTimeoutError, type Lock } from '../index.js'
import { stoppedAtBound } from '../../dialects/index.js'
import { seconds, text, UsageError, type CommandLine } from './args.js'
import { databaseTrouble, MIGRATE_HINT, printable, quoted, reasonOf, say, tableTrouble } from './failure.js'

/** Exit codes of `worker-locks run`, besides the command's own. */
const EXIT = { failed: 1, busy: 75, lost: 70, notExecutable: 126, notFound: 127 } as const

const FORWARDED: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

// How often, after the command exited, we look whether what it started in its group is gone.
const GROUP_POLL_MS = 100

/** The exit status of a process stopped by `signal`, as shells report it. */
function signalExit(signal: NodeJS.Signals | null): number {
  return 128 + (signal ? constants.signals[signal] ?? 0 : 0)
}

/** Calls `handler` on SIGINT, SIGTERM and SIGHUP until the function it returns is called. */
function onSignals(handler: (signal: NodeJS.Signals) => void): () => void {
  for (const signal of FORWARDED) process.on(signal, handler)
  return () => { for (const signal of FORWARDED) process.removeListener(signal, handler) }
}

/** What `worker-locks run` was asked to do, and how its messages name the lock. */
type Run = ReturnType<typeof runOptions>

/** `worker-locks run NAME [--key K] [--wait [S]] -- COMMAND ARGS…` */
export async function runCommand(knex: Knex, tableName: string | undefined, args: CommandLine, database: string): Promise<number> {
  const run = runOptions(args, database)
  // While the lock is being acquired, the store's failures end in one line saying why we gave
  // up; a retry-by-retry account of them is only worth having during a wait without an end,
  // and then once per kind.
  let acquiring = true
  const shown = new Set<string>()
  const warn = (details: object, message: string): void => {
    const err = (details as { err?: unknown }).err
    if (acquiring && err !== undefined) {
      if (run.waitMs !== Infinity || shown.has(message)) return
      shown.add(message)
    }
    const line = printable(message.replace(/^worker-locks: /, ''))
    say(err === undefined ? line : `${line.replace(/\.$/, '')} (${reasonOf(err)})`)
  }
  const store = new LockStore(knex, { tableName, lockTimeoutMs: run.lockTimeoutMs, logger: { warn } })
  try {
    const lock = await acquire(store, run).finally(() => { acquiring = false })
    if (lock === null) return await notAcquired(store, run)
    if (typeof lock === 'number') return lock
    const { code, startedAt } = await supervise(lock, run)
    if (startedAt === undefined || run.minHoldMs === 0) return code
    // Released so that it stays taken until --min-hold after the command started. If the
    // database fails, it stays taken until its lease ends, which is longer: said, and the
    // command's exit code stands.
    const keepForMs = Math.max(0, Math.ceil(startedAt + run.minHoldMs - performance.now()))
    await lock.release({ keepForMs }).catch((error: unknown) => {
      say(`could not keep ${run.what} for --min-hold (${reasonOf(error)}); it stays taken until its lease ends (--lock-timeout)`)
    })
    return code
  } finally {
    await store.close()
  }
}

/** The options of `run`, checked in the order they are reported; a UsageError names a bad one. */
function runOptions(args: CommandLine, database: string) {
  const [name = ''] = args.positionals
  const command = args.rest ?? []
  const key = text(args, 'key') ?? ''
  const onLost = text(args, 'on-lost') ?? 'stop'
  if (onLost !== 'stop' && onLost !== 'ignore') throw new UsageError(`option --on-lost takes stop or ignore, got ${JSON.stringify(onLost)}`)
  // Undefined without --lock-timeout: the library's default (120 s).
  const lockTimeoutMs = seconds(args, 'lock-timeout', undefined)
  const graceMs = seconds(args, 'grace', 10_000)
  const minHoldMs = seconds(args, 'min-hold', 0)
  // Undefined without --wait; Infinity for --wait without a number.
  const waitMs = text(args, 'wait') === '' ? Infinity : seconds(args, 'wait', undefined)
  if (lockTimeoutMs !== undefined && lockTimeoutMs < 1_000) throw new UsageError('option --lock-timeout must be at least 1 second')
  const what = `lock ${quoted(name)}${key ? ` (key ${quoted(key)})` : ''}`
  return { name, key, command, onLost, lockTimeoutMs, graceMs, minHoldMs, waitMs, database, what }
}

/**
 * Tries the lock once, or waits for it with --wait. Resolves the lock, null if it is busy, or
 * the exit code of a run that ends here, its one line said: stopped by a signal, or failed.
 */
async function acquire(store: LockStore, run: Run): Promise<Lock | null | number> {
  // A signal while waiting stops the wait; the exit status says which signal it was.
  const interrupt = new AbortController()
  const stopListening = onSignals((signal) => { interrupt.abort(signal) })
  try {
    return run.waitMs === undefined
      ? await store.tryAcquireLock(run.name, run.key)
      : await store.acquireLock(run.name, run.key, { timeoutMs: run.waitMs, signal: interrupt.signal })
  } catch (error) {
    return interrupt.signal.aborted ? signalExit(interrupt.signal.reason as NodeJS.Signals) : await notAcquired(store, run, error)
  } finally {
    stopListening()
  }
}

/**
 * The one line and exit code for a lock not acquired: `error` says why, or its absence that
 * someone else holds it (or an earlier run's --min-hold keeps it). Other errors are thrown on.
 */
async function notAcquired(store: LockStore, run: Run, error?: unknown): Promise<number> {
  const end = (message: string, code: number, hint = ''): number => {
    say(`${message}; not running ${printable(run.command[0] ?? '')}${hint}`)
    return code
  }
  const waited = (run.waitMs ?? 0) / 1000
  if (error instanceof LockTableError) return end(tableTrouble(error, run.database), EXIT.failed, ` ${MIGRATE_HINT}`)
  // An attempt still unanswered at the deadline (another session holding the table, a slow
  // server) is a wait that ran out like any other: busy for now, worth trying again later.
  if (error instanceof LockTimeoutError && stoppedAtBound(error.cause)) {
    return end(`${run.what} is still busy after ${waited} s (the last attempt had no answer in time: ${reasonOf(error.cause)})`, EXIT.busy)
  }
  // With another cause, the wait ended because the database could not be asked, not because the
  // lock was busy: retrying later will not help until someone fixes the database.
  if (error instanceof LockTimeoutError && error.cause !== undefined) return end(databaseTrouble(error.cause, waited, run.database), EXIT.failed)
  if (error instanceof LockTimeoutError) return end(`${run.what} is still busy after ${waited} s`, EXIT.busy)
  if (error instanceof LockDatabaseError) return end(databaseTrouble(error, undefined, run.database), EXIT.failed)
  if (error !== undefined) throw error
  // The read/write lock of the same name and key is another lock, whose holders are not in our way.
  const holder = (await store.listLocks({ name: run.name, key: run.key })).find((l) => l.mode === 'exclusive')
  if (holder?.instanceName !== '') return end(`${run.what} is held by ${holder ? printable(holder.instanceName) : 'another worker'}`, EXIT.busy)
  const left = Math.max(0, holder.leaseMs - holder.ageMs) / 1000
  return end(`${run.what} is kept by an earlier run's --min-hold for ${left.toFixed(1)} s more`, EXIT.busy)
}

/** Sends `signal` to the process group led by `child`; false when no process is left in it. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals | 0): boolean {
  if (child.pid === undefined) return false
  // Windows has no process groups: the command itself is all that can be reached.
  if (process.platform === 'win32') return signal === 0 ? child.exitCode === null && child.signalCode === null : child.kill(signal)
  try {
    process.kill(-child.pid, signal)
    return true
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    // ESRCH: everyone in the group has exited. EPERM: what is left is not ours to signal.
    if (code !== 'ESRCH') say(`could not signal the process group of ${printable(String(child.spawnfile))}: ${printable(String(code))}`)
    return false
  }
}

/**
 * Runs the command in a process group of its own, passes SIGINT, SIGTERM and SIGHUP on to that
 * group, and stops the group if the lock is lost (SIGTERM, then SIGKILL after --grace). Once
 * the command has exited, whatever it left running in its group is stopped the same way before
 * this resolves, so nothing it started runs on after the lock is released. Resolves the exit
 * code, and when the command started (undefined: it never did).
 */
function supervise(lock: Lock, run: Run): Promise<{ code: number, startedAt: number | undefined }> {
  return new Promise((resolve) => {
    const [file = '', ...args] = run.command
    const program = printable(file)
    const grace = `SIGTERM, then SIGKILL after ${run.graceMs / 1000} s`
    // Set by spawn below before any listener or timer that reads it can run (a failed spawn removes them).
    let child: ChildProcess
    let startedAt: number | undefined
    let lost = false
    let killed = false
    let killTimer: NodeJS.Timeout | undefined
    let poll: NodeJS.Timeout | undefined
    const stopForwarding = onSignals((signal) => { signalGroup(child, signal) })
    // SIGTERM to the whole group now, SIGKILL after the grace period; once is enough.
    const stopGroup = (): void => {
      if (killTimer) return
      signalGroup(child, 'SIGTERM')
      killTimer = setTimeout(() => {
        killed = true
        signalGroup(child, 'SIGKILL')
      }, run.graceMs)
    }
    const lockLost = (): void => {
      if (run.onLost === 'ignore') return say(`${run.what} was lost (${printable((lock.signal.reason as Error).message)}); --on-lost=ignore, so ${program} keeps running`)
      lost = true
      say(`${run.what} was lost; stopping ${program} (${grace})`)
      stopGroup()
    }
    // The first end of the run counts: resolving again changes nothing, nor does cleaning up again.
    const finish = (code: number): void => {
      clearTimeout(killTimer)
      clearInterval(poll)
      lock.signal.removeEventListener('abort', lockLost)
      stopForwarding()
      resolve({ code, startedAt })
    }
    const cannotStart = (error: NodeJS.ErrnoException): void => {
      if (error.code === 'ENOENT') say(`command not found: ${program}`)
      else if (error.code === 'EACCES') say(`cannot execute ${program}: permission denied (not an executable file, or not one you may run)`)
      else say(`cannot execute ${program}: ${printable(error.message)}`)
      finish(error.code === 'ENOENT' ? EXIT.notFound : EXIT.notExecutable)
    }
    lock.signal.addEventListener('abort', lockLost, { once: true })
    try {
      // A group of its own, so that signals reach everything the command starts (the children of
      // a shell, say), not only the process started here.
      child = spawn(file, args, { stdio: 'inherit', detached: true })
    } catch (error) {
      // Most spawn failures arrive as an 'error' event; the rarer ones are thrown.
      return cannotStart(error as NodeJS.ErrnoException)
    }
    child.on('spawn', () => { startedAt = performance.now() })
    child.on('error', cannotStart)
    child.on('exit', (code, signal) => {
      const result = lost ? EXIT.lost : code ?? signalExit(signal)
      if (!signalGroup(child, 0)) return finish(result)
      if (!killTimer) say(`${program} exited; stopping what it left running (${grace})`)
      stopGroup()
      // After SIGKILL, only processes that have died but not been reaped can remain: their
      // parent's business, not a reason to hold the lock any longer.
      poll = setInterval(() => { if (killed || !signalGroup(child, 0)) finish(result) }, GROUP_POLL_MS)
    })
  })
}
