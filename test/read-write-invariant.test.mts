// Read/write locks across processes: several worker processes (test/fixtures/rw-invariant-worker)
// run a fixed number of iterations of reads, writes and two-key multi-locks on a few keys, and
// inside every section check, through a counter row per key that each holder bumps atomically
// in the database, that no writer shares its key with anyone. The same workload with the
// exclusion broken on purpose (negative control) must make that check fire: it shows the check
// can see an overlap when there is one.
//
// WL_RW_ITERATIONS (per worker, default 80) and WL_RW_TASKS (loops per worker, default 2) change
// the workload; WL_RW_BREAK=anchor|check breaks every database the same way (an experiment: on
// SQLite, `anchor` leaves the run correct, see BREAK below).
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { after, it, type TestContext } from 'node:test'
import type { Knex } from 'knex'
import { createLockTable, dropLockTable } from '../src/index.js'
import type { SectionReport, WorkerSummary } from './fixtures/rw-invariant-worker.mjs'
import { forEachDatabase } from './matrix.mjs'
import { connect, sqliteFile, uniqueName, type Database } from './targets.mjs'

/** A store strategy for every worker, or `mixed`: odd workers native, even ones emulated (on one table, as stores of two versions would be). */
type Strategy = 'auto' | 'native' | 'emulated' | 'mixed'

// The CI machine has 2 cores: 4 processes contend enough without starving each other.
const WORKERS = 4
const ITERATIONS = Number(process.env.WL_RW_ITERATIONS ?? 80)
/**
 * Concurrent loops per worker process, on one store (so that its own waiters and releases meet
 * too; with one loop, SQLite's stalls of the whole process behind an open transaction went unseen).
 */
const TASKS = Number(process.env.WL_RW_TASKS ?? 2)
const KEYS = ['k0', 'k1', 'k2']
/** The lock name of every key (as the worker's). */
const LOCK_NAME = 'rw-invariant'
/** Two sections of one key, one a writer's, whose recorded times overlap by more than this are reported (clocks of processes on one machine agree far better). */
const CLOCK_TOLERANCE_MS = 5
const RUN_TIMEOUT_MS = 120_000

const workerScript = join(import.meta.dirname, 'fixtures', 'rw-invariant-worker.mjs')
const running = new Set<ChildProcess>()
after(() => { for (const child of running) child.kill('SIGKILL') })

interface Outcome {
  summaries: WorkerSummary[]
  /** What went wrong with the processes themselves: a bad exit, no summary, a timeout. */
  problems: string[]
}

/** One worker process; resolves its summary, or rejects with what it printed. */
function startWorker(database: Database, strategy: Strategy, table: string, index: number, broken: string): { child: ChildProcess; ready: Promise<void>; done: Promise<WorkerSummary> } {
  const child = spawn(process.execPath, [workerScript], {
    env: {
      ...process.env, WL_DATABASE: database, WL_TABLE: table, WL_KEYS: KEYS.join(','), WL_ITERATIONS: String(ITERATIONS),
      WL_TASKS: String(TASKS), WL_WORKER: `worker-${index}`, WL_SQLITE_FILE: sqliteFile, WL_BREAK: broken,
      WL_STRATEGY: strategy !== 'mixed' ? strategy : index % 2 === 1 ? 'native' : 'emulated',
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  running.add(child)
  let stdout = ''
  let stderr = ''
  let readySeen: () => void
  const ready = new Promise<void>((resolve) => { readySeen = resolve })
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (/^ready$/m.test(stdout)) readySeen()
  })
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const done = new Promise<WorkerSummary>((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      running.delete(child)
      const line = stdout.split('\n').find((l) => l.startsWith('{"t":"summary"'))
      if (code === 0 && line) resolve(JSON.parse(line) as WorkerSummary)
      else reject(new Error(`worker-${index} exited with ${signal ?? `code ${code}`}${line ? '' : ', without its summary'}: ${stderr.slice(-2000)}`))
    })
  })
  return { child, ready: Promise.race([ready, done.then(() => undefined)]), done }
}

/** Runs the workload on a lock table of its own, dropped afterwards. */
async function runWorkload(database: Database, strategy: Strategy, broken: string): Promise<Outcome> {
  const knex = connect(database, { poolMax: 2 })
  const table = uniqueName('wlrw')
  const counters = `${table}_rwc`
  try {
    await createLockTable(knex, { tableName: table })
    await knex.schema.createTable(counters, (t) => {
      t.string('lock_key', 64).primary()
      t.integer('readers').notNullable()
      t.integer('writers').notNullable()
    })
    await knex(counters).insert(KEYS.map((key) => ({ lock_key: key, readers: 0, writers: 0 })))
    // Without the anchor, lockKey cannot make a key row: make them first.
    if (broken === 'anchor') await knex(`${table}_rw_keys`).insert(KEYS.map((key) => ({ lock_name: LOCK_NAME, lock_key: key, fence: 0 })))
    if (broken === 'anchor' && database === 'postgres' && strategy === 'native') await unanchorRoutine(knex, table)
    const workers = Array.from({ length: WORKERS }, (_, i) => startWorker(database, strategy, table, i + 1, broken))
    await Promise.all(workers.map((w) => w.ready))
    for (const w of workers) w.child.stdin!.end('go\n') // all at once, for the most contention
    const settled = await Promise.allSettled(workers.map((w) => w.done))
    const summaries = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []))
    const problems = settled.flatMap((s) => (s.status === 'rejected' ? [String(s.reason)] : []))
    // Every section took its count back off: the counters are where they started.
    const left = await counterRows(knex, counters)
    for (const row of left) if (row.readers !== 0 || row.writers !== 0) problems.push(`counter ${row.key} ended at readers=${row.readers} writers=${row.writers}`)
    return { summaries, problems }
  } finally {
    await knex.schema.dropTableIfExists(counters)
    await dropLockTable(knex, { tableName: table })
    await knex.destroy()
  }
}

/**
 * The anchor break of PostgreSQL's routine (migration 6), which the native strategy calls: the
 * table's own routine, rewritten to read the fence with a plain SELECT instead of upserting (and
 * so locking) the key row.
 */
async function unanchorRoutine(knex: Knex, table: string): Promise<void> {
  const routine = `"${table}_rw_acquire"(text[], text[], text[], boolean[], text, bigint, bigint, text)`
  const { rows } = await knex.raw('SELECT pg_get_functiondef(to_regprocedure(?)) AS def', [routine]) as { rows: Array<{ def: string }> }
  const upsert = /INSERT INTO "[^"]+_rw_keys" AS a[\s\S]*?RETURNING fence INTO drawn;/
  const def = rows[0]!.def
  assert.match(def, upsert, 'the routine upserts the key row')
  await knex.raw(def.replace(upsert, `SELECT fence + 1 INTO drawn FROM "${table}_rw_keys" WHERE lock_name = names[i] AND lock_key = keys[i];`))
}

async function counterRows(knex: Knex, counters: string): Promise<Array<{ key: string; readers: number; writers: number }>> {
  const rows = await knex(counters).select('lock_key', 'readers', 'writers') as Array<Record<string, unknown>>
  return rows.map((r) => ({ key: String(r.lock_key), readers: Number(r.readers), writers: Number(r.writers) }))
}

/** Pairs of sections of one key, at least one a writer's, whose recorded times overlap by more than the tolerance. */
function timeOverlaps(summaries: readonly WorkerSummary[]): number {
  const all = summaries.flatMap((s) => s.sections.map((section): SectionReport & { worker: string } => ({ ...section, worker: s.worker })))
  let overlaps = 0
  for (const key of KEYS) {
    const list = all.filter((s) => s.key === key).sort((a, b) => a.start - b.start)
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length && list[j]!.start < list[i]!.end - CLOCK_TOLERANCE_MS; j++) {
        if (list[i]!.write || list[j]!.write) overlaps++
      }
    }
  }
  return overlaps
}

function describeRun(o: Outcome): string {
  const sum = (f: (s: WorkerSummary) => number): number => o.summaries.reduce((n, s) => n + f(s), 0)
  return `${o.summaries.length} workers, ${sum((s) => s.iterations)} iterations: acquired read ${sum((s) => s.acquired.read)}, write ${sum((s) => s.acquired.write)}, ` +
    `multi ${sum((s) => s.acquired.multi)}, refused ${sum((s) => s.refused)}; sections ${sum((s) => s.sections.length)}; ` +
    `violations ${sum((s) => s.violations.length)}; overlapping times ${timeOverlaps(o.summaries)}; leases lost ${sum((s) => s.lost)}; errors ${sum((s) => s.errors.length)}`
}

/**
 * How each database's exclusion is broken for the negative control. PostgreSQL and MySQL/MariaDB:
 * the acquisition no longer locks the key row (the anchor), so two READ COMMITTED transactions
 * can both find no conflicting holder and both insert. SQLite does not depend on the anchor:
 * its one write lock for the whole database serialises every transaction that writes, and the
 * insert checks for conflicting holders in the same statement, under that lock (without the
 * anchor the run stays correct). There the control removes the check itself instead.
 * PostgreSQL with the native strategy: the routine is rewritten without its anchor (unanchorRoutine).
 */
const BREAK: Record<Database, string> = { postgres: 'anchor', mysql: 'anchor', sqlite: 'check' }
// WL_RW_BREAK=anchor|check tries another break on every database (an experiment, not the test).
if (process.env.WL_RW_BREAK) for (const database of Object.keys(BREAK) as Database[]) BREAK[database] = process.env.WL_RW_BREAK

// PostgreSQL acquires in one routine with the native strategy and in a transaction of statements
// with the emulated one: each runs, and both side by side (as a store of a version without the
// routine would, next to one with it). Elsewhere the strategy does not change read/write acquisitions.
forEachDatabase('read/write invariant', (database) => {
  for (const strategy of database === 'postgres' ? ['native', 'emulated', 'mixed'] as const : ['auto'] as const) registerRuns(database, strategy)
})

function registerRuns(database: Database, strategy: Strategy): void {
  const on = strategy === 'auto' ? '' : ` (${strategy})`
  it(`${WORKERS} processes × ${ITERATIONS} iterations: no writer shares its key with anyone${on}`, { timeout: RUN_TIMEOUT_MS + 30_000 }, async (t: TestContext) => {
    const outcome = await runWorkload(database, strategy, '')
    t.diagnostic(describeRun(outcome))
    assert.deepEqual(outcome.problems, [])
    assert.equal(outcome.summaries.length, WORKERS)
    for (const s of outcome.summaries) {
      assert.equal(s.iterations, ITERATIONS, `${s.worker} completed its iterations`)
      assert.deepEqual(s.errors, [], `${s.worker}: no error other than refusals`)
      assert.deepEqual(s.violations, [], `${s.worker}: no overlap seen in the counters`)
      assert.equal(s.lost, 0, `${s.worker}: no lease ran out`)
    }
    assert.equal(timeOverlaps(outcome.summaries), 0, 'no writer\'s recorded section overlaps another section of its key')
    // The run must have exercised what it claims to.
    const total = (f: (s: WorkerSummary) => number): number => outcome.summaries.reduce((n, s) => n + f(s), 0)
    assert.ok(total((s) => s.acquired.write) > 0 && total((s) => s.acquired.read) > 0 && total((s) => s.acquired.multi) > 0, describeRun(outcome))
  })

  // The negative controls break each way of acquiring on its own; `mixed` runs only ways already controlled.
  if (strategy === 'mixed') return
  it(`negative control: with the exclusion broken (${BREAK[database]}), the same check sees overlaps${on}`, { timeout: RUN_TIMEOUT_MS + 30_000 }, async (t: TestContext) => {
    const outcome = await runWorkload(database, strategy, BREAK[database])
    t.diagnostic(`${BREAK[database]} broken: ${describeRun(outcome)}`)
    assert.deepEqual(outcome.problems.filter((p) => !p.startsWith('counter ')), [])
    const violations = outcome.summaries.reduce((n, s) => n + s.violations.length, 0)
    assert.ok(violations > 0, `the checker reported no violation with the exclusion broken: ${describeRun(outcome)}`)
  })
}
