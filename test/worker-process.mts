// Starts test fixtures as child processes: other workers, in other processes.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { Harness } from './harness.mjs'
import { sqliteFile } from './targets.mjs'

export interface Exit { code: number | null; signal: NodeJS.Signals | null; stdout: string }

/** A fixture running as a child process, on the harness's database, strategy and table. */
export interface ChildWorker {
  readonly child: ChildProcess
  readonly exited: Promise<Exit>
  /** Resolves once the worker has printed a line containing `text`. */
  printed(text: string): Promise<void>
  /** The lines printed so far. */
  lines(): string[]
}

export interface WorkerProcess extends ChildWorker {
  /** Asks the worker to release its lock; resolves once it has. */
  release(): Promise<void>
}

/** What a fixture needs of its test: the database and strategy, and the lock table (a {@link Harness} has them). */
export type FixtureContext = Pick<Harness, 'target' | 'tableName'>

const running = new Set<ChildProcess>()

/**
 * Kills every fixture process still running: a test that failed half-way must not leave one
 * behind (it would keep the test run from ending). For `afterEach`.
 */
export function killChildren(): void {
  for (const child of running) child.kill('SIGKILL')
  running.clear()
}

/** Starts test/fixtures/`fixture` and resolves once it has printed "ready". */
async function startChild(h: FixtureContext, fixture: string, extraEnv: Record<string, string>): Promise<ChildWorker> {
  const child = spawn(process.execPath, [join(import.meta.dirname, 'fixtures', fixture)], {
    env: {
      ...process.env, WL_DATABASE: h.target.database, WL_STRATEGY: h.target.strategy,
      WL_TABLE: h.tableName, WL_SQLITE_FILE: sqliteFile, ...extraEnv,
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  running.add(child)
  child.on('exit', () => running.delete(child))
  let stdout = ''
  const waiting: Array<{ text: string; resolve: () => void }> = []
  const exited = new Promise<Exit>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout })))
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    for (const w of [...waiting]) if (stdout.includes(w.text)) { waiting.splice(waiting.indexOf(w), 1); w.resolve() }
  })
  const printed = (text: string): Promise<void> => Promise.race([
    new Promise<void>((resolve) => { if (stdout.includes(text)) resolve(); else waiting.push({ text, resolve }) }),
    exited.then((e) => { throw new Error(`worker exited before printing ${JSON.stringify(text)}: ${JSON.stringify(e)}`) }),
  ])
  await printed('ready')
  return { child, exited, printed, lines: () => stdout.split('\n').filter(Boolean) }
}

/** Starts a worker (test/fixtures/hold-lock) holding `lockName` in the harness's table; resolves once it holds it. */
export async function startWorker(h: FixtureContext, lockName: string, extraEnv: Record<string, string> = {}): Promise<WorkerProcess> {
  const worker = await startChild(h, 'hold-lock.mjs', { WL_LOCK: lockName, ...extraEnv })
  return {
    ...worker,
    async release() {
      worker.child.stdin?.write('release\n')
      await worker.printed('released')
    },
  }
}

/** Starts test/fixtures/waiter: a worker whose waits only a release notification can end. */
export async function startWaiter(h: FixtureContext, extraEnv: Record<string, string> = {}): Promise<ChildWorker & { send(command: string): void }> {
  const worker = await startChild(h, 'waiter.mjs', extraEnv)
  return { ...worker, send: (command) => worker.child.stdin?.write(`${command}\n`) }
}
