// Read/write locks across processes: eight worker processes (bench/rw-worker.mts) loop over a
// few keys, 70 % of their sections readers and 30 % writers, each waiting for the read/write lock
// in its mode (the default: a waiting writer keeps new readers out). The same processes' work on
// plain locks (every section exclusive) is the baseline. Besides throughput and waits, the
// sections of all workers are laid side by side and checked: no writer may overlap another
// section of its key, on the one clock of the machine or in the order of the fences.
// WL_BENCH_WRITE_SHARE (0 to 1, default 0.3) changes the writers' share, to tell the cost of the
// statements (all readers, or all writers) from that of readers and writers waiting for each other.
import { join } from 'node:path'
import { createLockTable, dropLockTable } from '../src/index.js'
import { connect, sqliteFile, uniqueName, type Database } from '../test/targets.mjs'
import { beforeDir, beforeLibrary } from './before.mjs'
import { runBenchChildren } from './child.mjs'
import type { RwPhase, RwPhaseResult, Section } from './rw-worker.mjs'
import { median, p99 } from './stats.mjs'

const script = join(import.meta.dirname, 'rw-worker.mjs')

interface Spread { p50: number; p99: number }
const spread = (samples: readonly number[]): Spread => ({ p50: median(samples), p99: p99(samples) })

export interface RwFigures {
  /** Critical sections per second (those held within the run). */
  perSecond: number
  sections: number
  /**
   * From calling acquire to holding, ms: writers, readers, all. A wait cut at the end of the run
   * counts with the length it had reached (so the p99 is never flattered by cutting it).
   */
  writerWait: Spread
  readerWait: Spread
  wait: Spread
  /** The most readers seen holding one key at once (0 for plain locks). */
  maxReaders: number
  /** Exclusive sections that overlap another section of their key on the machine's clock. */
  overlaps: number
  /** Exclusive sections that overlap, or are out of order with, the sections before and after them in fence order (a fence drawn twice counts too). */
  fenceViolations: number
  /** Waits still going when they were cut, `grace` after the end: writers, readers. */
  cutWaits: { writers: number; readers: number }
  /** Attempts that found the lock held, per section. */
  refusedPerSection: number
  /** CPU time of the worker processes (not the database's) per section, ms. */
  cpuMsPerSection: number
  queryErrors: Record<string, number>
  failures: Record<string, number>
  failureSamples: string[]
}

interface Hold { exclusive: boolean; fence: bigint; acquiredAt: number; releasingAt: number }

/** Overlaps and fence-order violations of exclusive holds among the holds of one key, and the most readers at once. */
export function checkHolds(holds: readonly Hold[]): { overlaps: number; fenceViolations: number; maxReaders: number } {
  // On the clock: a hold that begins before an earlier-begun exclusive hold ended, or, if exclusive, before any earlier-begun hold ended.
  const byTime = [...holds].sort((a, b) => a.acquiredAt - b.acquiredAt)
  let overlaps = 0
  let lastEnd = -Infinity
  let lastExclusiveEnd = -Infinity
  for (const h of byTime) {
    if (h.acquiredAt < lastExclusiveEnd || (h.exclusive && h.acquiredAt < lastEnd)) overlaps++
    lastEnd = Math.max(lastEnd, h.releasingAt)
    if (h.exclusive) lastExclusiveEnd = Math.max(lastExclusiveEnd, h.releasingAt)
  }
  // In fence order: everything before an exclusive hold has ended when it begins, and everything after begins once it has ended.
  const byFence = [...holds].sort((a, b) => (a.fence < b.fence ? -1 : a.fence > b.fence ? 1 : 0))
  const endedBefore: number[] = []
  let latest = -Infinity
  for (const h of byFence) { endedBefore.push(latest); latest = Math.max(latest, h.releasingAt) }
  let earliest = Infinity
  let fenceViolations = 0
  for (let i = byFence.length - 1; i >= 0; i--) {
    const h = byFence[i]!
    const duplicate = i > 0 && byFence[i - 1]!.fence === h.fence
    if (duplicate || (h.exclusive && (endedBefore[i]! > h.acquiredAt || earliest < h.releasingAt))) fenceViolations++
    earliest = Math.min(earliest, h.acquiredAt)
  }
  // Readers at once: +1 at each reader's start, -1 at its end (ends first on a tie).
  const events = holds.filter((h) => !h.exclusive).flatMap((h) => [[h.acquiredAt, 1], [h.releasingAt, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let readers = 0
  let maxReaders = 0
  for (const [, step] of events) maxReaders = Math.max(maxReaders, (readers += step))
  return { overlaps, fenceViolations, maxReaders }
}

function add(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, n] of Object.entries(from)) into[k] = (into[k] ?? 0) + n
}

/** The figures of one phase, from every worker's result for it. */
function summarise(phase: RwPhase, results: readonly RwPhaseResult[]): RwFigures {
  const sections: Section[] = results.flatMap((r) => r.sections)
  const startAt = Math.max(...results.map((r) => r.startAt))
  const endAt = Math.min(...results.map((r) => r.endAt))
  const within = sections.filter((s) => s[4] >= startAt && s[4] <= endAt).length
  const cut = results.flatMap((r) => (r.cut ? [r.cut] : []))
  const waits = [...sections.map((s) => ({ write: s[1], ms: s[4] - s[3] })), ...cut.map(([, write, ms]) => ({ write, ms }))]
  const figures: RwFigures = {
    perSecond: within / ((endAt - startAt) / 1000),
    sections: sections.length,
    writerWait: spread(waits.filter((w) => w.write === 1).map((w) => w.ms)),
    readerWait: spread(waits.filter((w) => w.write === 0).map((w) => w.ms)),
    wait: spread(waits.map((w) => w.ms)),
    maxReaders: 0, overlaps: 0, fenceViolations: 0,
    cutWaits: { writers: cut.filter((c) => c[1] === 1).length, readers: cut.filter((c) => c[1] === 0).length },
    refusedPerSection: results.reduce((n, r) => n + r.refused, 0) / Math.max(1, sections.length),
    cpuMsPerSection: results.reduce((n, r) => n + r.cpuMs, 0) / Math.max(1, sections.length),
    queryErrors: {}, failures: {}, failureSamples: results.flatMap((r) => r.failureSamples).slice(0, 5),
  }
  for (const r of results) { add(figures.queryErrors, r.queryErrors); add(figures.failures, r.failures) }
  for (let key = 0; key < phase.keys; key++) {
    const holds = sections.filter((s) => s[0] === key)
      .map(([, write, fence, , acquiredAt, releasingAt]) => ({ exclusive: phase.kind === 'plain' || write === 1, fence: BigInt(fence), acquiredAt, releasingAt }))
    const check = checkHolds(holds)
    figures.overlaps += check.overlaps
    figures.fenceViolations += check.fenceViolations
    figures.maxReaders = Math.max(figures.maxReaders, check.maxReaders)
  }
  return figures
}

/**
 * Section 6 for one database: eight worker processes, started once, run every phase in turn
 * (per number of keys, read/write locks then plain locks), `seconds` each; a wait still going
 * `graceMs` after a phase's end is cut.
 */
export async function readWriteSection(database: Database, smoke: boolean, processes = 8): Promise<Record<string, { readWrite: RwFigures; plain: RwFigures }>> {
  const out = await readWriteRun(database, smoke, processes, undefined)
  // With --before, the earlier build's LockStore in the same processes' code, right after: "N (before)".
  if (beforeDir()) for (const [keys, figures] of Object.entries(await readWriteRun(database, smoke, processes, beforeLibrary()))) out[`${keys} (before)`] = figures
  return out
}

async function readWriteRun(database: Database, smoke: boolean, processes: number, library: string | undefined): Promise<Record<string, { readWrite: RwFigures; plain: RwFigures }>> {
  const [seconds, graceMs, pauseMs] = smoke ? [0.5, 500, 200] : [3, 1000, 200]
  const phases: RwPhase[] = (smoke ? [1] : [1, 16]).flatMap((keys) => [{ kind: 'read-write', keys }, { kind: 'plain', keys }] as const)
  const knex = connect(database, { poolMax: 2 })
  const table = uniqueName('wl_rw')
  try {
    await createLockTable(knex, { tableName: table })
    const env = {
      WL_DATABASE: database, WL_TABLE: table, WL_SQLITE_FILE: sqliteFile, WL_PHASES: JSON.stringify(phases),
      WL_SECONDS: String(seconds), WL_GRACE_MS: String(graceMs), WL_PAUSE_MS: String(pauseMs), WL_WRITE_SHARE: process.env.WL_BENCH_WRITE_SHARE ?? '0.3', WL_HOLD_MS: '0.2',
      ...(library ? { WL_LIBRARY: library } : {}),
    }
    const totalSeconds = (phases.length * (seconds * 1000 + graceMs + pauseMs)) / 1000
    const { finished } = await runBenchChildren<RwPhaseResult[]>(processes, [script], env, totalSeconds)
    const results = await finished
    const out: Record<string, { readWrite: RwFigures; plain: RwFigures }> = {}
    for (const [i, phase] of phases.entries()) {
      const figures = summarise(phase, results.map((r) => r[i]!))
      out[phase.keys] = { ...out[phase.keys]!, [phase.kind === 'plain' ? 'plain' : 'readWrite']: figures }
    }
    return out
  } finally {
    await dropLockTable(knex, { tableName: table })
    await knex.destroy()
  }
}
