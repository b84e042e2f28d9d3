// Fence order under concurrency: are fences handed out in the order the database grants the lock?
//
// Per (database × strategy) pair of the matrix (DIALECTS filters), PROCESSES child processes
// (this same script with --worker) each run STORES stores, every store on its own knex instance
// (its own pool). Each store takes one of two locks over and over for SECONDS (mostly
// acquireLock with a 2 s timeout, sometimes tryAcquireLock) and, while holding it, inserts a
// journal row (lock_name, fence) into `<table>_order`, then releases. Holders of one lock are
// mutually exclusive, so the journal's id order per lock is the order the locks were granted; an
// inversion is a journal row whose fence is <= the fence of the row before it for the same lock.
//
// --order=clock (not the default) writes no journal: a holder only yields once (setImmediate)
// before releasing, which leaves the fence race of a fresh insert a much wider window. The grant
// order is then the order of the wall-clock times (one machine) at which the holders' acquisitions
// resolved; consecutive holds of one lock that overlap on that clock are counted as `overlaps`
// (a non-zero count means that order, or the mutual exclusion, cannot be trusted).
//
//   node dist/bench/fence-order.mjs [--seconds=8] [--processes=3] [--stores=2] [--try-share=0.2] [--order=journal|clock]
//
// Prints one line per pair, then one JSON line with every count. Drops every table it created.
// Uses only the public API shared by the old and new code (LockStore, tryAcquireLock,
// acquireLock, Lock.fence/.lost/.release, createLockTable, dropLockTable).
import { createInterface } from 'node:readline'
import type { Knex } from 'knex'
import { createLockTable, dropLockTable, LockStore, type Lock } from '../src/index.js'
import { startBenchChild, type BenchChild } from './child.mjs'
import { connect, resolveMatrix, sqliteFile, uniqueName, type Database, type StrategyName, type Target } from '../test/targets.mjs'

const LOCK_NAMES = ['fence-a', 'fence-b'] as const
const TRY_SHARE = Number(process.env.WL_TRY_SHARE ?? 0.2)
type OrderMode = 'journal' | 'clock'
const WAIT_TIMEOUT_MS = 2000

function option(name: string, fallback: number, positive = true): number {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  if (arg === undefined) return fallback
  const value = Number(arg.slice(name.length + 3))
  if (!Number.isFinite(value) || value < 0 || (positive && value === 0)) throw new Error(`--${name} must be a positive number, got ${JSON.stringify(arg)}.`)
  return value
}

const wallNow = (): number => performance.timeOrigin + performance.now()
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

interface WorkerCounts {
  acquired: number
  viaAcquire: number
  viaTry: number
  tryMisses: number
  timeouts: number
  /** Locks found lost (lease expired) right after the journal insert. */
  lost: number
  errors: number
  errorSamples: string[]
  /** --order=clock: every hold, as [lock index, fence, acquired at, releasing at] (wall clock, ms). */
  holds?: Array<[number, string, number, number]>
}

function emptyCounts(): WorkerCounts {
  return { acquired: 0, viaAcquire: 0, viaTry: 0, tryMisses: 0, timeouts: 0, lost: 0, errors: 0, errorSamples: [] }
}

function addCounts(into: WorkerCounts, from: WorkerCounts): void {
  into.acquired += from.acquired
  into.viaAcquire += from.viaAcquire
  into.viaTry += from.viaTry
  into.tryMisses += from.tryMisses
  into.timeouts += from.timeouts
  into.lost += from.lost
  into.errors += from.errors
  for (const sample of from.errorSamples) if (into.errorSamples.length < 5) into.errorSamples.push(sample)
  if (from.holds) (into.holds ??= []).push(...from.holds)
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const cause = (error as { cause?: unknown }).cause
  return `${error.name}: ${error.message}${cause instanceof Error ? ` (cause: ${cause.message})` : ''}`
}

// ---------------------------------------------------------------------------------------------
// Worker process
// ---------------------------------------------------------------------------------------------

async function runWorker(): Promise<void> {
  const env = process.env
  const database = env.WL_DATABASE as Database
  const strategy = env.WL_STRATEGY as StrategyName
  const tableName = env.WL_TABLE ?? ''
  const journal = `${tableName}_order`
  const storeCount = Number(env.WL_STORES ?? 2)
  const mode = (env.WL_ORDER ?? 'journal') as OrderMode

  const stores: Array<{ knex: Knex; store: LockStore }> = []
  for (let i = 0; i < storeCount; i++) {
    const knex = connect(database)
    const store = new LockStore(knex, { tableName, strategy })
    stores.push({ knex, store })
  }
  try {
    await Promise.all(stores.map(({ store }) => store.init()))

    const lines = createInterface({ input: process.stdin })
    console.log('ready')
    let end = NaN
    for await (const line of lines) {
      end = Number(/^go ([\d.]+)$/.exec(line)?.[1])
      if (Number.isFinite(end)) break
    }
    lines.close()
    if (!Number.isFinite(end)) throw new Error('the worker was never told to go')

    const results = await Promise.all(stores.map(async ({ knex, store }) => {
      const counts = emptyCounts()
      if (mode === 'clock') counts.holds = []
      while (wallNow() < end) {
        const lockIndex = Math.floor(Math.random() * LOCK_NAMES.length)
        const name = LOCK_NAMES[lockIndex] ?? 'fence-a'
        const useTry = Math.random() < TRY_SHARE
        let lock: Lock | null
        try {
          if (useTry) {
            lock = await store.tryAcquireLock(name)
            if (lock === null) {
              counts.tryMisses++
              continue
            }
            counts.viaTry++
          } else {
            lock = await store.acquireLock(name, '', { timeoutMs: WAIT_TIMEOUT_MS })
            counts.viaAcquire++
          }
        } catch (error) {
          if ((error as { code?: unknown }).code === 'LOCK_TIMEOUT') counts.timeouts++
          else {
            counts.errors++
            if (counts.errorSamples.length < 3) counts.errorSamples.push(`acquire: ${describeError(error)}`)
            await sleep(50)
          }
          continue
        }
        counts.acquired++
        const acquiredAt = wallNow()
        try {
          if (mode === 'clock') {
            await new Promise((resolve) => setImmediate(resolve))
            counts.holds?.push([lockIndex, lock.fence.toString(), acquiredAt, wallNow()])
          } else {
            await knex(journal).insert({ lock_name: name, fence: lock.fence.toString() })
          }
          if (lock.lost) counts.lost++
        } catch (error) {
          counts.errors++
          if (counts.errorSamples.length < 3) counts.errorSamples.push(`journal insert: ${describeError(error)}`)
        } finally {
          try {
            await lock.release()
          } catch (error) {
            counts.errors++
            if (counts.errorSamples.length < 3) counts.errorSamples.push(`release: ${describeError(error)}`)
          }
        }
      }
      return counts
    }))
    const total = emptyCounts()
    for (const r of results) addCounts(total, r)
    console.log(JSON.stringify(total))
  } finally {
    for (const { knex, store } of stores) {
      await store.close().catch(() => undefined)
      await knex.destroy().catch(() => undefined)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------------

type Child = BenchChild<WorkerCounts>

function startChild(target: Target, tableName: string, stores: number, mode: OrderMode): Child {
  return startBenchChild<WorkerCounts>([import.meta.filename, '--worker'], {
    WL_DATABASE: target.database, WL_STRATEGY: target.strategy, WL_TABLE: tableName,
    WL_SQLITE_FILE: sqliteFile, WL_STORES: String(stores), WL_ORDER: mode,
  })
}

interface Inversion { lock: string; id: number; fence: string; previousId: number; previousFence: string }

interface PairResult {
  id: string
  acquisitions: number
  /** Rows ordered: journal rows, or holds ordered by the clock. */
  journalRows: number
  /** --order=clock: consecutive holds of one lock that overlap on the wall clock. */
  overlaps: number
  inversions: number
  /** Inversions where the fence equals the previous one (a fence handed out twice). */
  equalFences: number
  perLock: Record<string, { rows: number; inversions: number }>
  examples: Inversion[]
  counts: WorkerCounts
  seconds: number
  error?: string
}

async function runPair(target: Target, seconds: number, processes: number, stores: number, mode: OrderMode): Promise<PairResult> {
  const knex = connect(target.database, { poolMax: 2 })
  const tableName = uniqueName('wl_fence')
  const journal = `${tableName}_order`
  const children: Child[] = []
  const started = performance.now()
  try {
    await createLockTable(knex, { tableName })
    await knex.schema.createTable(journal, (t) => {
      t.increments('id').primary()
      t.string('lock_name', 255).notNullable()
      t.bigInteger('fence').notNullable()
    })
    for (let i = 0; i < processes; i++) children.push(startChild(target, tableName, stores, mode))
    await Promise.all(children.map((c) => c.ready))
    const end = wallNow() + 200 + seconds * 1000
    for (const c of children) c.go(end)
    const results = await Promise.all(children.map((c) => c.done))
    const counts = emptyCounts()
    for (const r of results) addCounts(counts, r)

    let rows: Array<{ id: number | string; lock_name: string; fence: number | string | bigint }>
    let overlaps = 0
    if (mode === 'journal') {
      rows = await knex(journal).select('id', 'lock_name', 'fence').orderBy('id', 'asc')
    } else {
      const holds = (counts.holds ?? []).slice().sort((a, b) => a[2] - b[2])
      const lastRelease = new Map<number, number>()
      for (const [lockIndex, , acquiredAt, releasingAt] of holds) {
        if (acquiredAt < (lastRelease.get(lockIndex) ?? -Infinity)) overlaps++
        lastRelease.set(lockIndex, releasingAt)
      }
      // The id of a hold is its place in the clock order, from 1.
      rows = holds.map(([lockIndex, fence], i) => ({ id: i + 1, lock_name: LOCK_NAMES[lockIndex] ?? '?', fence }))
    }
    const last = new Map<string, { id: number; fence: bigint }>()
    const perLock: Record<string, { rows: number; inversions: number }> = {}
    const examples: Inversion[] = []
    let inversions = 0
    let equalFences = 0
    for (const row of rows) {
      const id = Number(row.id)
      const fence = BigInt(String(row.fence))
      const stats = (perLock[row.lock_name] ??= { rows: 0, inversions: 0 })
      stats.rows++
      const previous = last.get(row.lock_name)
      if (previous !== undefined && fence <= previous.fence) {
        inversions++
        stats.inversions++
        if (fence === previous.fence) equalFences++
        if (examples.length < 5) examples.push({ lock: row.lock_name, id, fence: fence.toString(), previousId: previous.id, previousFence: previous.fence.toString() })
      }
      last.set(row.lock_name, { id, fence })
    }
    return {
      id: target.id, acquisitions: counts.acquired, journalRows: rows.length, overlaps, inversions, equalFences, perLock, examples, counts,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    }
  } catch (error) {
    for (const c of children) if (c.process.exitCode === null) c.process.kill()
    return {
      id: target.id, acquisitions: 0, journalRows: 0, overlaps: 0, inversions: 0, equalFences: 0, perLock: {}, examples: [], counts: emptyCounts(),
      seconds: Math.round((performance.now() - started) / 100) / 10, error: describeError(error),
    }
  } finally {
    await Promise.allSettled(children.map((c) => c.done))
    await knex.schema.dropTableIfExists(journal).catch((error: unknown) => console.error(`could not drop ${journal}: ${describeError(error)}`))
    await dropLockTable(knex, { tableName }).catch((error: unknown) => console.error(`could not drop ${tableName}: ${describeError(error)}`))
    await knex.destroy()
  }
}

function describePair(r: PairResult): string {
  if (r.error !== undefined) return `${r.id}: FAILED after ${r.seconds} s: ${r.error}`
  const c = r.counts
  const share = r.acquisitions === 0 ? 0 : (100 * r.inversions) / r.acquisitions
  const perLock = Object.entries(r.perLock).map(([name, s]) => `${name} ${s.inversions}/${s.rows}`).join(', ')
  const examples = r.examples.map((e) => `${e.lock} id ${e.id} fence ${e.fence} after id ${e.previousId} fence ${e.previousFence}`).join('; ')
  return `${r.id}: acquisitions ${r.acquisitions} (acquireLock ${c.viaAcquire}, tryAcquireLock ${c.viaTry}; try misses ${c.tryMisses}, timeouts ${c.timeouts}, lost ${c.lost}, errors ${c.errors}), ` +
    `${r.counts.holds ? `holds ordered by clock ${r.journalRows}, overlaps ${r.overlaps}` : `journal rows ${r.journalRows}`}, inversions ${r.inversions} (${share.toFixed(2)} %, equal fences ${r.equalFences}; per lock ${perLock})` +
    (examples ? `, e.g. ${examples}` : '') +
    (c.errorSamples.length > 0 ? `; errors e.g. ${c.errorSamples.join(' | ')}` : '') +
    ` [${r.seconds} s]`
}

async function main(): Promise<void> {
  const seconds = option('seconds', 8)
  const processes = Math.floor(option('processes', 3))
  const stores = Math.floor(option('stores', 2))
  const tryShare = option('try-share', 0.2, false)
  if (tryShare > 1) throw new Error('--try-share is a share between 0 and 1.')
  process.env.WL_TRY_SHARE = String(tryShare)
  const orderArg = process.argv.find((a) => a.startsWith('--order='))?.slice('--order='.length) ?? 'journal'
  if (orderArg !== 'journal' && orderArg !== 'clock') throw new Error(`--order must be journal or clock, got ${JSON.stringify(orderArg)}.`)
  const mode: OrderMode = orderArg
  const { targets, missing } = await resolveMatrix()
  for (const m of missing) console.log(`skipped ${m.database}: ${m.reason}`)
  console.log(`fence order: ${processes} processes x ${stores} stores (own knex each), locks ${LOCK_NAMES.join(', ')}, ${seconds} s per pair, acquireLock timeoutMs ${WAIT_TIMEOUT_MS}, tryAcquireLock ${tryShare * 100} %, order by ${mode === 'journal' ? 'journal id (journal insert while holding)' : 'wall clock (holders only yield once)'}`)
  const results: PairResult[] = []
  for (const target of targets) {
    const result = await runPair(target, seconds, processes, stores, mode)
    results.push(result)
    console.log(describePair(result))
  }
  console.log(JSON.stringify({
    seconds, processes, stores, tryShare, order: mode,
    pairs: results.map((r) => ({
      id: r.id, acquisitions: r.acquisitions, ordered: r.journalRows, ...(mode === 'clock' ? { overlaps: r.overlaps } : {}), inversions: r.inversions, equalFences: r.equalFences,
      timeouts: r.counts.timeouts, tryMisses: r.counts.tryMisses, lost: r.counts.lost, errors: r.counts.errors, ...(r.error !== undefined ? { error: r.error } : {}),
    })),
  }))
  if (results.some((r) => r.error !== undefined)) process.exitCode = 1
}

if (process.argv.includes('--worker')) await runWorker()
else await main()
