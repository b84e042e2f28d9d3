// The demo behind `npm start`: four worker processes compete for three named jobs through
// locks in one SQLite file. Midway, one worker is killed with SIGKILL while it holds a job: it
// cannot release anything, so its lock stays until the (shortened) timeout and then another
// worker takes the job over. At the end the coordinator checks, from what the workers
// reported, that no job ever ran on two workers at once and that fences only went up.
//
// Run: npm start            (25 s)
//      npm start -- --short (about 8 s, as CI runs it; DEMO_SECONDS=n picks any length)
//      DEMO_DB=/some/file.sqlite to put the database elsewhere than ./worker-locks-demo.sqlite
import { spawn, type ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { LockStore, createLockTable } from 'worker-locks'
import { checkSections, type Section } from './check.mjs'
import { JOBS, LOCK_TIMING, now, openDatabase, type WorkerEvent } from './shared.mjs'

const seconds = Number(process.env.DEMO_SECONDS || (process.argv.includes('--short') ? 8 : 25))
if (!(seconds >= 4)) throw new Error(`DEMO_SECONDS must be a number of at least 4, got ${process.env.DEMO_SECONDS}`)
const durationMs = seconds * 1_000
const file = resolve(process.env.DEMO_DB ?? 'worker-locks-demo.sqlite')
const removeDatabase = (): void => { for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true }) }

removeDatabase() // a fresh table every run, so fences start at 1
const knex = openDatabase(file)
await createLockTable(knex)
// The coordinator never takes a lock; this store only reads the table for the live view. It
// shares the workers' timeout so that "stale" means what it means to them.
const store = new LockStore(knex, LOCK_TIMING)

interface Worker { name: string; child: ChildProcess; closed: Promise<void> }

const sections: Section[] = []
const open = new Map<string, Section>() // by worker: the job it is running now, as far as we know
const errors: string[] = []
let kill: { worker: string; job: string; at: number } | undefined
let takeover: { worker: string; afterMs: number } | undefined

function onEvent(event: WorkerEvent): void {
  if (event.type === 'error') {
    errors.push(`${event.worker}: ${event.message}`)
    return
  }
  if (event.type === 'start') {
    const section: Section = { job: event.job, worker: event.worker, fence: BigInt(event.fence), start: event.at, end: Infinity }
    open.set(event.worker, section)
    sections.push(section)
    if (kill && !takeover && event.job === kill.job && event.at > kill.at) {
      takeover = { worker: event.worker, afterMs: event.at - kill.at }
      console.log(`>>> ${event.worker} took over ${event.job} ${(takeover.afterMs / 1000).toFixed(1)} s after the kill`)
    }
    return
  }
  const section = open.get(event.worker)
  if (section && section.job === event.job && String(section.fence) === event.fence) {
    section.end = Math.min(section.end, event.at) // an "end" read after the kill may be earlier
    if (event.lost) section.lost = true
    open.delete(event.worker)
  }
}

function startWorker(name: string): Worker {
  const child = spawn(process.execPath, [join(import.meta.dirname, 'worker.mjs'), file, name], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout! })
  lines.on('line', (line) => {
    try {
      onEvent(JSON.parse(line) as WorkerEvent)
    } catch {
      console.log(`${name}: ${line}`)
    }
  })
  // 'close' comes after the exit and after the last line of output, so nothing is still unread.
  const closed = new Promise<void>((done) => child.on('close', (code, signal) => {
    const section = open.get(name)
    if (section) {
      // Killed (or gone without an "end" line): the section lasted at most until then.
      section.end = kill?.worker === name ? kill.at : now()
      section.killed = signal === 'SIGKILL'
      open.delete(name)
    }
    if (kill?.worker !== name && code !== 0) errors.push(`${name} exited with ${signal ?? `code ${code}`}`)
    done()
  }))
  return { name, child, closed }
}

/** One line of the live view: who holds each job according to the lock table itself. */
async function showLocks(startedAt: number): Promise<void> {
  const locks = await store.listLocks()
  const holders = JOBS.map((job) => {
    const lock = locks.find((l) => l.name === job)
    if (!lock) return `${job}: —`
    const notes = [kill?.worker === lock.instanceName ? 'killed' : '', lock.stale ? 'stale' : ''].filter(Boolean).join(', ')
    return `${job}: ${lock.instanceName} #${lock.fence}${notes ? ` (${notes})` : ''}`
  })
  console.log(`${((now() - startedAt) / 1000).toFixed(1).padStart(5)}s  ${holders.join(' | ')}`)
}

/** SIGKILLs a worker that is inside a job right now, as far as its lines tell. */
function killOneHolder(workers: Worker[]): void {
  const victims = [...open.values()]
  const victim = victims[Math.floor(Math.random() * victims.length)]
  const worker = workers.find((w) => w.name === victim?.worker)
  if (!victim || !worker) return // nobody inside a job this instant: try at the next tick
  kill = { worker: worker.name, job: victim.job, at: now() }
  worker.child.kill('SIGKILL')
  console.log(`>>> killed ${worker.name} (SIGKILL) while it held ${victim.job}; its lock is free again after the ${LOCK_TIMING.lockTimeoutMs / 1000} s timeout`)
}

console.log(`worker-locks demo: 4 workers, ${JOBS.length} jobs, ${seconds} s, database ${file}`)
console.log(`lock timeout ${LOCK_TIMING.lockTimeoutMs} ms, renewed every ${LOCK_TIMING.renewalIntervalMs} ms\n`)
const workers = ['worker-1', 'worker-2', 'worker-3', 'worker-4'].map(startWorker)
const startedAt = now()
// If the run ends before anyone took the killed worker's job, wait a little longer for it
// (a slow machine), rather than report a missing takeover that was only late.
const graceMs = 3 * LOCK_TIMING.lockTimeoutMs
for (let elapsed = 0; elapsed < durationMs || (kill && !takeover && elapsed < durationMs + graceMs); elapsed = now() - startedAt) {
  if (!kill && elapsed >= 0.4 * durationMs) killOneHolder(workers)
  await showLocks(startedAt)
  await sleep(500)
}

// Ask the others to finish their current job and stop; kill whoever does not within 5 s.
const alive = workers.filter((w) => w.name !== kill?.worker)
for (const w of alive) w.child.stdin?.end('stop\n')
const timedOut = await Promise.race([Promise.all(alive.map((w) => w.closed)).then(() => false), sleep(5_000, true, { ref: false })])
if (timedOut) for (const w of alive) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL')
await Promise.all(workers.map((w) => w.closed))
await store.close()
await knex.destroy()
removeDatabase()

// The verdict.
const result = checkSections(sections, JOBS)
console.log('\njob                    sections  workers                                  max overlap')
for (const job of result.jobs) {
  console.log(`${job.job.padEnd(22)} ${String(job.sections).padStart(8)}  ${job.workers.join(', ').padEnd(40)} ${job.maxOverlapMs.toFixed(1)} ms`)
}
for (const o of result.overlaps.slice(0, 10)) {
  console.log(`OVERLAP: ${o.job}: ${o.later.worker} #${o.later.fence} started ${o.overlapMs.toFixed(1)} ms before ${o.earlier.worker} #${o.earlier.fence} ended${o.earlier.lost ? ' (its lock was lost)' : ''}`)
}
for (const f of result.fenceRegressions.slice(0, 10)) {
  console.log(`FENCE: ${f.job}: ${f.later.worker} #${f.later.fence} started after ${f.earlier.worker} #${f.earlier.fence} with a fence that is not higher`)
}
for (const e of errors.slice(0, 10)) console.log(`worker error: ${e}`)
const more = Math.max(0, result.overlaps.length - 10) + Math.max(0, result.fenceRegressions.length - 10) + Math.max(0, errors.length - 10)
if (more > 0) console.log(`... and ${more} more problem(s) like these`)
console.log(kill
  ? `kill: ${kill.worker} was killed while it held ${kill.job}; ${takeover ? `${takeover.worker} took it over ${(takeover.afterMs / 1000).toFixed(1)} s later` : 'NO takeover was observed'}`
  : 'kill: NO worker held a job when the kill was due, so nothing was killed')
if (result.overlaps.length === 0) console.log(`no overlap: ${result.sections} critical sections checked across ${JOBS.length} jobs`)
if (result.fenceRegressions.length === 0) console.log('fences strictly increased within every job')

const failures = [
  result.overlaps.length > 0 && `${result.overlaps.length} overlap(s)`,
  result.fenceRegressions.length > 0 && `${result.fenceRegressions.length} fence(s) out of order`,
  !takeover && 'no takeover after the kill',
  errors.length > 0 && `${errors.length} worker error(s)`,
].filter(Boolean)
if (failures.length > 0) {
  console.log(`DEMO FAILED: ${failures.join(', ')}`)
  process.exitCode = 1
}
