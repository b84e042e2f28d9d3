// Throughput on many distinct locks: eight worker processes (bench/process-worker.mts with
// WL_KEYS) loop over 1,000 keys, each section a random key taken without waiting and released
// at once. worker-locks (tryAcquireLock + release) against the bare two-statement cycle
// (bench/raw.mts) run by the same number of processes in the same run, with worker-locks' own
// statements on the bare driver ("raw") between them, in alternating turns so
// that drift on the shared machine hits all alike. On MariaDB the server's InnoDB row-lock waits
// during each turn are read too (global counters: other clients of the server count as well),
// which is where the one counter row every fence is drawn from would show.
import { join } from 'node:path'
import { createLockTable, dropLockTable } from '../src/index.js'
import { connect, sqliteFile, uniqueName, type Database } from '../test/targets.mjs'
import { runBenchChildren } from './child.mjs'
import { createBareTable } from './raw.mjs'
import { beforeBuild, beforeDir, beforeLibrary } from './before.mjs'

const script = join(import.meta.dirname, 'process-worker.mjs')
const contenders = ['bare', 'raw', 'worker-locks', 'worker-locks before'] as const
type Contender = typeof contenders[number]

export interface ManyKeysFigures {
  /** Sections per second, counted while every process was running. */
  perSecond: number
  sections: number
  /** Attempts that found the key held by another process, per section. */
  refusedPerSection: number
  /** CPU time of the worker processes (not the database's) per section, ms. */
  cpuMsPerSection: number
  /** MariaDB: InnoDB row-lock waits per 1,000 sections and their time per section (ms); null elsewhere. */
  rowLockWaitsPer1000: number | null
  rowLockMsPerSection: number | null
}

interface WorkerResult { acquiredAt: number[]; refused: number; cpuMs: number }

/** Section 7 for one database: `processes` workers on `keys` keys, `seconds` per contender in all. */
export async function manyKeysSection(database: Database, smoke: boolean, processes = 8, keys = 1000): Promise<Partial<Record<Contender, ManyKeysFigures>>> {
  // Full mode: two turns of 5 s per contender, the order swapped in the second.
  const order = contenders.filter((c) => beforeDir() || c !== 'worker-locks before')
  const turns: Contender[][] = smoke ? [order] : [order, [...order].reverse()]
  const seconds = smoke ? 1 : 5
  const knex = connect(database, { poolMax: 2 })
  const lockTable = uniqueName('wl_many')
  const tables: Record<Contender, string> = { bare: uniqueName('wl_bare_many'), raw: lockTable, 'worker-locks': lockTable, 'worker-locks before': uniqueName('wl_before_many') }
  const old = await beforeBuild()
  const totals = Object.fromEntries(contenders.map((c) => [c, { sections: 0, allSections: 0, ms: 0, refused: 0, cpuMs: 0, rowLockWaits: 0, rowLockMs: 0 }]))
  const rowLocks = async (): Promise<{ waits: number; ms: number }> => {
    const [rows] = await knex.raw("SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_waits', 'Innodb_row_lock_time')") as [Array<{ Variable_name: string; Value: string }>]
    const value = (name: string): number => Number(rows.find((r) => r.Variable_name === name)?.Value ?? NaN)
    return { waits: value('Innodb_row_lock_waits'), ms: value('Innodb_row_lock_time') }
  }
  try {
    await createBareTable(knex, database, tables.bare)
    await createLockTable(knex, { tableName: lockTable })
    await old?.createLockTable(knex, { tableName: tables['worker-locks before'] })
    for (const turn of turns) {
      for (const contender of turn) {
        const before = contender === 'worker-locks before'
        const env = { WL_DATABASE: database, WL_TABLE: tables[contender], WL_SQLITE_FILE: sqliteFile, WL_CONTENDER: before ? 'worker-locks' : contender, WL_KEYS: String(keys), ...(before ? { WL_LIBRARY: beforeLibrary() } : {}) }
        const locksBefore = database === 'mysql' ? await rowLocks() : undefined
        const { finished } = await runBenchChildren<WorkerResult>(processes, [script], env, seconds)
        const results = await finished
        const locksAfter = database === 'mysql' ? await rowLocks() : undefined
        // The window in which every process was running: from the latest first section to the earliest last one.
        const startAt = Math.max(...results.map((r) => r.acquiredAt[0] ?? Infinity))
        const endAt = Math.min(...results.map((r) => r.acquiredAt.at(-1) ?? -Infinity))
        if (!(endAt > startAt)) throw new Error(`many keys, ${contender}: a process took no section`)
        const total = totals[contender]!
        total.sections += results.reduce((n, r) => n + r.acquiredAt.filter((at) => at >= startAt && at <= endAt).length, 0)
        total.allSections += results.reduce((n, r) => n + r.acquiredAt.length, 0)
        total.ms += endAt - startAt
        total.refused += results.reduce((n, r) => n + r.refused, 0)
        total.cpuMs += results.reduce((n, r) => n + r.cpuMs, 0)
        if (locksBefore && locksAfter) { total.rowLockWaits += locksAfter.waits - locksBefore.waits; total.rowLockMs += locksAfter.ms - locksBefore.ms }
      }
    }
    const figures = (c: Contender): ManyKeysFigures => {
      const t = totals[c]!
      // Refusals, CPU and row-lock waits are over all sections of the turns, those outside the window included.
      const all = Math.max(1, t.allSections)
      return {
        perSecond: t.sections / (t.ms / 1000), sections: t.sections, refusedPerSection: t.refused / all, cpuMsPerSection: t.cpuMs / all,
        rowLockWaitsPer1000: database === 'mysql' ? (t.rowLockWaits * 1000) / all : null,
        rowLockMsPerSection: database === 'mysql' ? t.rowLockMs / all : null,
      }
    }
    return Object.fromEntries(order.map((c) => [c, figures(c)]))
  } finally {
    await knex.schema.dropTableIfExists(tables.bare)
    await dropLockTable(knex, { tableName: lockTable })
    await old?.dropLockTable(knex, { tableName: tables['worker-locks before'] })
    await knex.destroy()
  }
}
