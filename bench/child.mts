// A benchmark worker process: it prints "ready" once set up, starts when told "go END" on stdin,
// and ends by printing one JSON line with its results. The parent's side (startBenchChild,
// runBenchChildren) and the worker's (waitForGo) are both here.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'

export interface BenchChild<T> {
  readonly process: ChildProcess
  /** Resolves once the worker is ready (or has ended). */
  readonly ready: Promise<void>
  /** The worker's JSON line; rejects if it exits otherwise than with 0. */
  readonly done: Promise<T>
  /** Tells it to run until `end` (ms since the epoch). */
  go(end: number): void
}

export function startBenchChild<T>(args: readonly string[], env: Record<string, string>): BenchChild<T> {
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] })
  let stdout = ''
  let onReady!: () => void
  const ready = new Promise<void>((resolve) => { onReady = resolve })
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (stdout.includes('ready\n')) onReady()
  })
  const done = new Promise<T>((resolve, reject) => child.on('close', (code, signal) => {
    if (code !== 0) return reject(new Error(`a benchmark worker exited with ${code ?? signal}: ${stdout}`))
    try {
      resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as T)
    } catch (error) {
      reject(error instanceof Error ? error : new Error(String(error)))
    }
  }))
  done.catch(() => undefined) // awaited by the caller; this keeps an early failure from going unhandled
  return { process: child, ready: Promise.race([ready, done.then(() => undefined)]), done, go: (end) => { child.stdin?.end(`go ${end}\n`) } }
}

/**
 * Starts `count` workers, waits until every one is ready, then tells them all to run for
 * `seconds` (from 200 ms on, so that they start together). `finished` resolves their JSON lines.
 */
export async function runBenchChildren<T>(count: number, args: readonly string[], env: Record<string, string>, seconds: number): Promise<{ finished: Promise<T[]> }> {
  const workers = Array.from({ length: count }, () => startBenchChild<T>(args, env))
  await Promise.all(workers.map((w) => w.ready))
  const end = performance.timeOrigin + performance.now() + 200 + seconds * 1000
  for (const w of workers) w.go(end)
  return { finished: Promise.all(workers.map((w) => w.done)) }
}

/** The worker's side: says "ready" and resolves the END of the first "go END" line (ms since the epoch). */
export async function waitForGo(): Promise<number> {
  const lines = createInterface({ input: process.stdin })
  console.log('ready')
  try {
    for await (const line of lines) {
      const end = Number(/^go ([\d.]+)$/.exec(line)?.[1])
      if (Number.isFinite(end)) return end
    }
    throw new Error('stdin ended before "go END"')
  } finally {
    lines.close()
  }
}
