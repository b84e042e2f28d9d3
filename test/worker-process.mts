// Starts test/fixtures/hold-lock as a child process: another worker, in another process.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { Harness } from './harness.mjs'
import { sqliteFile } from './targets.mjs'

const fixture = join(import.meta.dirname, 'fixtures', 'hold-lock.mjs')

export interface Exit { code: number | null; signal: NodeJS.Signals | null; stdout: string }

export interface WorkerProcess {
  readonly child: ChildProcess
  readonly exited: Promise<Exit>
  /** Resolves once the worker has printed a line containing `text`. */
  printed(text: string): Promise<void>
  /** Asks the worker to release its lock; resolves once it has. */
  release(): Promise<void>
}

/** Starts a worker holding `lockName` in the harness's table; resolves once it holds it. */
export async function startWorker(h: Harness, lockName: string, extraEnv: Record<string, string> = {}): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [fixture], {
    env: {
      ...process.env, WL_DATABASE: h.target.database, WL_STRATEGY: h.target.strategy,
      WL_TABLE: h.tableName, WL_LOCK: lockName, WL_SQLITE_FILE: sqliteFile, ...extraEnv,
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
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
  return {
    child,
    exited,
    printed,
    async release() {
      child.stdin?.write('release\n')
      await printed('released')
    },
  }
}
