// What the torture harness (main.mts) and its worker processes (worker.mts) agree on: timing,
// the resource tables, and the JSON lines a worker prints.
import type { Knex } from 'knex'
import type { Database, StrategyName } from '../test/targets.mjs'

/** Far shorter than the library's defaults so that leases expire many times during a run. */
export const LOCK_TIMEOUT_MS = 1_500
export const RENEWAL_INTERVAL_MS = 300
/** A stalled holder busy-waits this long: well past its lease, so somebody can take over meanwhile. */
export const STALL_MS = LOCK_TIMEOUT_MS + 900

/**
 * Wall-clock milliseconds with sub-millisecond precision, comparable across processes on one
 * machine, and NOT shifted by a worker's simulated clock skew (which patches `Date.now`).
 */
export function realNow(): number {
  return performance.timeOrigin + performance.now()
}

/** How a worker's store judges time. */
export type ClockMode = 'database' | 'local'

/** Everything a worker process is told, through its environment. */
export interface WorkerConfig {
  database: Database
  strategy: StrategyName
  table: string
  instance: string
  clock: ClockMode
  /** Simulated error of this machine's clock: `Date.now()` is shifted by this much. */
  skewMs: number
  locks: string[]
  /** The locks the previous process with this instance name held when it was killed: try them first. */
  reclaim: string[]
  /** How long the "work" inside a critical section takes: mostly a few ms (`mixed`), or 50–400 ms (`long`). */
  work: 'mixed' | 'long'
}

export function workerEnv(config: WorkerConfig): Record<string, string> {
  return {
    WLT_DATABASE: config.database,
    WLT_STRATEGY: config.strategy,
    WLT_TABLE: config.table,
    WLT_INSTANCE: config.instance,
    WLT_CLOCK: config.clock,
    WLT_SKEW_MS: String(config.skewMs),
    WLT_LOCKS: config.locks.join(','),
    WLT_WORK: config.work,
    ...(config.reclaim.length === 0 ? {} : { WLT_RECLAIM: config.reclaim.join(',') }),
  }
}

export function workerConfigFromEnv(env: NodeJS.ProcessEnv): WorkerConfig {
  const need = (name: string): string => {
    const value = env[name]
    if (!value) throw new Error(`torture worker: ${name} is not set`)
    return value
  }
  return {
    database: need('WLT_DATABASE') as Database,
    strategy: need('WLT_STRATEGY') as StrategyName,
    table: need('WLT_TABLE'),
    instance: need('WLT_INSTANCE'),
    clock: need('WLT_CLOCK') as ClockMode,
    skewMs: Number(env.WLT_SKEW_MS ?? 0),
    locks: need('WLT_LOCKS').split(','),
    reclaim: env.WLT_RECLAIM ? env.WLT_RECLAIM.split(',') : [],
    work: env.WLT_WORK === 'long' ? 'long' : 'mixed',
  }
}

/**
 * The protected resource: one counter per lock, `<table>_counters`, and the journal of every
 * change to it, `<table>_journal`, written by a trigger in the same statement as the change (so a
 * worker killed right after its write cannot leave an unrecorded write behind).
 */
export const countersTable = (table: string): string => `${table}_counters`
export const journalTable = (table: string): string => `${table}_journal`

/**
 * The fenced statements of a critical section. `claim` tells the resource the holder's fence
 * before it reads (refused if a higher fence has been seen); `write` stores `read + 1` if no
 * higher fence has been seen since. Read and write are separate statements outside any
 * transaction: the read-modify-write is unguarded, only the lock and the fence protect it.
 */
export const resourceSql = {
  claim: (table: string) =>
    `UPDATE ${countersTable(table)} SET fence = ?, op = 'claim', writer = ?, read_value = NULL WHERE lock_name = ? AND fence <= ?`,
  read: (table: string) => `SELECT value FROM ${countersTable(table)} WHERE lock_name = ?`,
  write: (table: string) =>
    `UPDATE ${countersTable(table)} SET value = ?, fence = ?, op = 'write', writer = ?, read_value = ? WHERE lock_name = ? AND fence <= ?`,
  /** TORTURE_UNFENCED=1 only: the same write without the fence check, so that the run must fail. */
  unfencedWrite: (table: string) =>
    `UPDATE ${countersTable(table)} SET value = ?, fence = ?, op = 'write', writer = ?, read_value = ? WHERE lock_name = ? AND ? IS NOT NULL`,
}

/** Rows changed by an UPDATE run through knex.raw, whatever the driver. */
export function changedRows(database: Database, result: unknown): number {
  switch (database) {
    case 'sqlite':
      return Number((result as { changes?: number }).changes ?? 0)
    case 'postgres':
      return Number((result as { rowCount?: number | null }).rowCount ?? 0)
    case 'mysql':
      // mysql2 connects with CLIENT_FOUND_ROWS: matched rows, which is what the WHERE decides.
      return Number((result as [{ affectedRows?: number }])[0]?.affectedRows ?? 0)
  }
}

/** The rows of a SELECT run through knex.raw, whatever the driver. */
export function selectedRows(database: Database, result: unknown): Array<Record<string, unknown>> {
  switch (database) {
    case 'sqlite':
      return result as Array<Record<string, unknown>>
    case 'postgres':
      return (result as { rows: Array<Record<string, unknown>> }).rows
    case 'mysql':
      return (result as [Array<Record<string, unknown>>])[0]
  }
}

/** Creates the counter and journal tables and the trigger that fills the journal. */
export async function createResource(knex: Knex, database: Database, table: string, locks: readonly string[]): Promise<void> {
  const counters = countersTable(table)
  const journal = journalTable(table)
  const columns = 'lock_name VARCHAR(64) NOT NULL PRIMARY KEY, value BIGINT NOT NULL, fence BIGINT NOT NULL, op VARCHAR(8) NOT NULL, writer VARCHAR(64), read_value BIGINT'
  const journalColumns = 'lock_name VARCHAR(64) NOT NULL, op VARCHAR(8) NOT NULL, fence BIGINT NOT NULL, writer VARCHAR(64), read_value BIGINT, value BIGINT NOT NULL'
  const copy = `INSERT INTO ${journal} (lock_name, op, fence, writer, read_value, value) VALUES (NEW.lock_name, NEW.op, NEW.fence, NEW.writer, NEW.read_value, NEW.value)`
  switch (database) {
    case 'sqlite':
      await knex.raw(`CREATE TABLE ${counters} (${columns})`)
      await knex.raw(`CREATE TABLE ${journal} (id INTEGER PRIMARY KEY AUTOINCREMENT, ${journalColumns})`)
      await knex.raw(`CREATE TRIGGER ${table}_journal_trg AFTER UPDATE ON ${counters} BEGIN ${copy}; END`)
      break
    case 'postgres':
      await knex.raw(`CREATE TABLE ${counters} (${columns})`)
      await knex.raw(`CREATE TABLE ${journal} (id BIGSERIAL PRIMARY KEY, ${journalColumns})`)
      await knex.raw(`CREATE FUNCTION ${table}_journal_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ${copy}; RETURN NEW; END $$`)
      await knex.raw(`CREATE TRIGGER ${table}_journal_trg AFTER UPDATE ON ${counters} FOR EACH ROW EXECUTE FUNCTION ${table}_journal_fn()`)
      break
    case 'mysql':
      await knex.raw(`CREATE TABLE ${counters} (${columns}) ENGINE=InnoDB`)
      await knex.raw(`CREATE TABLE ${journal} (id BIGINT AUTO_INCREMENT PRIMARY KEY, ${journalColumns}) ENGINE=InnoDB`)
      await knex.raw(`CREATE TRIGGER ${table}_journal_trg AFTER UPDATE ON ${counters} FOR EACH ROW ${copy}`)
      break
  }
  for (const lock of locks) await knex.raw(`INSERT INTO ${counters} (lock_name, value, fence, op) VALUES (?, 0, 0, 'init')`, [lock])
}

export async function dropResource(knex: Knex, database: Database, table: string): Promise<void> {
  await knex.raw(`DROP TABLE IF EXISTS ${countersTable(table)}`) // takes its trigger along
  await knex.raw(`DROP TABLE IF EXISTS ${journalTable(table)}`)
  if (database === 'postgres') await knex.raw(`DROP FUNCTION IF EXISTS ${table}_journal_fn()`)
}

/** One line of a worker's stdout. Fences and counter values are strings: JSON has no bigint. */
export type WorkerEvent =
  | { t: 'ready'; worker: string; pid: number; at: number }
  | { t: 'reclaim'; worker: string; lock: string; acquired: boolean; fence?: string; start: number; at: number }
  /** `leaseFrom`: when the acquiring statement was sent; the row's timestamp is no earlier. */
  | { t: 'acq'; worker: string; lock: string; fence: string; via: 'try' | 'wait'; at: number; leaseFrom: number }
  /** A renewal of the worker's lock succeeded; it was sent at `sentAt`, so the row is at least that fresh. */
  | { t: 'renew'; worker: string; sentAt: number }
  | { t: 'lost'; worker: string; lock: string; fence: string; reason: string; at: number }
  | {
      t: 'sec'; worker: string; lock: string; fence: string; start: number; end: number
      claim: Outcome; write: Outcome; read?: string
      /** Whether lock.signal had aborted when the section ended. */
      aborted: boolean
      /** The longest the worker's event loop was blocked during the section. */
      maxLagMs: number
      stall?: { ms: number; abortedOnWake: boolean; reason?: string }
    }
  | { t: 'err'; worker: string; where: string; message: string; at: number }
  | { t: 'log'; worker: string; level: string; message: string; at: number }
  | { t: 'violation'; worker: string; message: string; at: number }
  | { t: 'summary'; worker: string; sections: number; errors: number; warnings: number; handOvers: number; at: number }

/** What became of a fenced statement. `error`: it failed, and may or may not have committed. */
export type Outcome = 'ok' | 'refused' | 'error' | 'skipped'
