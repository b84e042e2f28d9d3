import { spawn } from 'node:child_process'
import { constants } from 'node:os'
import type { Knex } from 'knex'
import { LockStore, LockTimeoutError, type Lock } from '../index.js'
import { secondsOption, UsageError, type ParsedArgs } from './args.js'

/** Exit codes of `worker-locks run`, besides the command's own. */
export const EXIT = { busy: 75, lost: 70, notFound: 127 } as const

const FORWARDED: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

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
  const lockTimeoutMs = secondsOption(args, 'lock-timeout', 60_000)
  const graceMs = secondsOption(args, 'grace', 10_000)
  const wait = args.options.get('wait')
  if (lockTimeoutMs < 1_000) throw new UsageError('option --lock-timeout must be at least 1 second')

  const store = new LockStore(knex, { tableName, lockTimeoutMs, renewalIntervalMs: Math.floor(lockTimeoutMs / 4), logger: { warn: (_d, m) => say(m.replace(/^worker-locks: /, '')) } })
  const what = `lock ${JSON.stringify(name)}${key ? ` (key ${JSON.stringify(key)})` : ''}`

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
      : await store.acquireLock(name, key, { timeoutMs: wait === true ? Infinity : secondsOption(args, 'wait', 0), signal: stopWaiting.signal })
  } catch (error) {
    if (error instanceof LockTimeoutError) {
      say(`${what} is still busy after ${secondsOption(args, 'wait', 0) / 1000} s; not running ${command[0]}`)
      return EXIT.busy
    }
    if (signalled) return 128 + (constants.signals[signalled] ?? 0)
    throw error
  } finally {
    for (const signal of FORWARDED) process.removeListener(signal, onWaitSignal)
  }
  if (!lock) {
    const [holder] = await store.listLocks({ name, key })
    say(`${what} is held by ${holder?.instanceName ?? 'another worker'}; not running ${command[0]}`)
    await store.close()
    return EXIT.busy
  }

  try {
    return await supervise(lock, command, onLost, graceMs, what)
  } finally {
    await store.close()
  }
}

/** Runs the command, passing signals on, and stops it if the lock is lost. Resolves the exit code. */
function supervise(lock: Lock, command: readonly string[], onLost: 'stop' | 'ignore', graceMs: number, what: string): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(command[0] ?? '', command.slice(1), { stdio: 'inherit' })
    let lost = false
    let killTimer: NodeJS.Timeout | undefined
    const forward = (signal: NodeJS.Signals): void => { child.kill(signal) }
    for (const signal of FORWARDED) process.on(signal, forward)
    const onAbort = (): void => {
      if (onLost === 'ignore') {
        say(`${what} was lost (${(lock.signal.reason as Error).message}); --on-lost=ignore, so ${command[0]} keeps running`)
        return
      }
      lost = true
      say(`${what} was lost; stopping ${command[0]} (SIGTERM, then SIGKILL after ${graceMs / 1000} s)`)
      child.kill('SIGTERM')
      killTimer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    }
    lock.signal.addEventListener('abort', onAbort, { once: true })
    const finish = (code: number): void => {
      clearTimeout(killTimer)
      lock.signal.removeEventListener('abort', onAbort)
      for (const signal of FORWARDED) process.removeListener(signal, forward)
      resolve(code)
    }
    child.on('error', (error: NodeJS.ErrnoException) => {
      say(error.code === 'ENOENT' ? `command not found: ${command[0]}` : `could not run ${command[0]}: ${error.message}`)
      finish(error.code === 'ENOENT' ? EXIT.notFound : 1)
    })
    child.on('exit', (code, signal) => {
      if (lost) finish(EXIT.lost)
      else finish(code ?? 128 + (signal ? constants.signals[signal] ?? 0 : 0))
    })
  })
}
