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

/** `worker-locks run NAME [--key K] [--wait [S]] -- COMMAND ARGS…` */
export async function runCommand(knex: Knex, tableName: string | undefined, args: ParsedArgs): Promise<number> {
  const [name, ...extra] = args.positionals
  const command = args.rest ?? []
  if (name === undefined || extra.length > 0 || command.length === 0) {
    throw new UsageError('usage: worker-locks run NAME [--key K] [--wait [SECONDS]] -- COMMAND [ARGS…]')
  }
  const key = typeof args.options.get('key') === 'string' ? String(args.options.get('key')) : ''
  const onLost = args.options.get('on-lost') ?? 'stop'
  if (onLost !== 'stop' && onLost !== 'ignore') throw new UsageError(`option --on-lost takes stop or ignore, got ${JSON.stringify(onLost)}`)
  const lockTimeoutMs = secondsOption(args, 'lock-timeout', DEFAULT_LOCK_TIMEOUT_MS)
  const graceMs = secondsOption(args, 'grace', 10_000)
  const wait = args.options.get('wait')
  const waitMs = wait === true ? Infinity : secondsOption(args, 'wait', 0)
  if (lockTimeoutMs < 1_000) throw new UsageError('option --lock-timeout must be at least 1 second')

  // While the lock is being acquired, the store's failures end in one line saying why we gave
  // up; a retry-by-retry account of them is only worth having during a wait without an end,
  // and then once per kind.
  let acquiring = true
  const shown = new Set<string>()
  const warn = (details: object, message: string): void => {
    if (acquiring && 'err' in details) {
      if (waitMs !== Infinity || shown.has(message)) return
      shown.add(message)
    }
    const err = (details as { err?: unknown }).err
    const text = printable(message.replace(/^worker-locks: /, ''))
    say(err === undefined ? text : `${text.replace(/\.$/, '')} (${reasonOf(err)})`)
  }
  const store = new LockStore(knex, { tableName, lockTimeoutMs, logger: { warn } })
  const what = `lock ${quoted(name)}${key ? ` (key ${quoted(key)})` : ''}`
  const notRunning = `not running ${printable(command[0] ?? '')}`
  try {
    // A signal while waiting stops the wait; the exit status says which signal it was.
    const stopWaiting = new AbortController()
    let signalled: NodeJS.Signals | undefined
    const onWaitSignal = (signal: NodeJS.Signals): void => {
      signalled = signal
      stopWaiting.abort(new Error(`stopped by ${signal}`))
    }
    for (const signal of FORWARDED) process.on(signal, onWaitSignal)
    let lock: Lock | null
    try {
      lock = wait === undefined
        ? await store.tryAcquireLock(name, key)
        : await store.acquireLock(name, key, { timeoutMs: waitMs, signal: stopWaiting.signal })
    } catch (error) {
      if (signalled) return 128 + (constants.signals[signalled] ?? 0)
      if (error instanceof LockTableError) {
        say(`${tableTrouble(error)}; ${notRunning} ${MIGRATE_HINT}`)
        return EXIT.failed
      }
      // With a cause, the wait ended because the database could not be asked, not because the
      // lock was busy: retrying later will not help until someone fixes the database.
      if (error instanceof LockTimeoutError && error.cause !== undefined) {
        say(`${databaseTrouble(error.cause, waitMs / 1000)}; ${notRunning}`)
        return EXIT.failed
      }
      if (error instanceof LockTimeoutError) {
        say(`${what} is still busy after ${waitMs / 1000} s; ${notRunning}`)
        return EXIT.busy
      }
      if (error instanceof LockDatabaseError) {
        say(`${databaseTrouble(error)}; ${notRunning}`)
        return EXIT.failed
      }
      throw error
    } finally {
      acquiring = false
      for (const signal of FORWARDED) process.removeListener(signal, onWaitSignal)
    }
    if (!lock) {
      const [holder] = await store.listLocks({ name, key })
      say(`${what} is held by ${holder ? printable(holder.instanceName) : 'another worker'}; ${notRunning}`)
      return EXIT.busy
    }
    return await supervise(lock, command, onLost, graceMs, what)
  } finally {
    await store.close()
  }
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

/**
 * Runs the command in a process group of its own, passes SIGINT, SIGTERM and SIGHUP on to that
 * group, and stops the group if the lock is lost (SIGTERM, then SIGKILL after `graceMs`). Once
 * the command has exited, whatever it left running in its group is stopped the same way before
 * this resolves, so nothing it started runs on after the lock is released. Resolves the exit code.
 */
function supervise(lock: Lock, command: readonly string[], onLost: 'stop' | 'ignore', graceMs: number, what: string): Promise<number> {
  const program = printable(command[0] ?? '')
  return new Promise((resolve) => {
    let lost = false
    let killTimer: NodeJS.Timeout | undefined
    let killed = false
    let poll: NodeJS.Timeout | undefined
    let settled = false
    let child: ChildProcess | undefined

    // SIGTERM to the whole group now, SIGKILL after the grace period; once is enough.
    const stopGroup = (): void => {
      if (!child || killTimer) return
      const group = child
      signalGroup(group, 'SIGTERM')
      killTimer = setTimeout(() => {
        killed = true
        signalGroup(group, 'SIGKILL')
      }, graceMs)
    }
    const forward = (signal: NodeJS.Signals): void => { if (child) signalGroup(child, signal) }
    const onAbort = (): void => {
      if (onLost === 'ignore') {
        say(`${what} was lost (${printable((lock.signal.reason as Error).message)}); --on-lost=ignore, so ${program} keeps running`)
        return
      }
      lost = true
      say(`${what} was lost; stopping ${program} (SIGTERM, then SIGKILL after ${graceMs / 1000} s)`)
      stopGroup()
    }
    const finish = (code: number): void => {
      if (settled) return
      settled = true
      clearTimeout(killTimer)
      clearInterval(poll)
      lock.signal.removeEventListener('abort', onAbort)
      for (const signal of FORWARDED) process.removeListener(signal, forward)
      resolve(code)
    }
    const cannotStart = (error: NodeJS.ErrnoException): void => {
      if (error.code === 'ENOENT') {
        say(`command not found: ${program}`)
        finish(EXIT.notFound)
      } else {
        say(error.code === 'EACCES'
          ? `cannot execute ${program}: permission denied (not an executable file, or not one you may run)`
          : `cannot execute ${program}: ${printable(error.message)}`)
        finish(EXIT.notExecutable)
      }
    }

    for (const signal of FORWARDED) process.on(signal, forward)
    lock.signal.addEventListener('abort', onAbort, { once: true })
    try {
      // A group of its own, so that signals reach everything the command starts (the children of
      // a shell, say), not only the process started here.
      child = spawn(command[0] ?? '', command.slice(1), { stdio: 'inherit', detached: true })
    } catch (error) {
      // Most spawn failures arrive as an 'error' event; the rarer ones are thrown.
      cannotStart(error as NodeJS.ErrnoException)
      return
    }
    const started = child
    started.on('error', cannotStart)
    started.on('exit', (code, signal) => {
      const result = lost ? EXIT.lost : code ?? 128 + (signal ? constants.signals[signal] ?? 0 : 0)
      if (!signalGroup(started, 0)) {
        finish(result)
        return
      }
      if (!killTimer) say(`${program} exited; stopping what it left running (SIGTERM, then SIGKILL after ${graceMs / 1000} s)`)
      stopGroup()
      // After SIGKILL, only processes that have died but not been reaped can remain: their
      // parent's business, not a reason to hold the lock any longer.
      poll = setInterval(() => { if (killed || !signalGroup(started, 0)) finish(result) }, GROUP_POLL_MS)
    })
  })
}
