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

/**
 * What a worker takes: plain locks (`tryAcquireLock`/`acquireLock`), or read/write locks and
 * multi-locks over two of them (`rw`).
 */
export type WorkerKind = 'plain' | 'rw'

/** A read/write lock's side, on the lines of a worker of kind `rw`. */
export type RwMode = 'read' | 'write'

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
  kind: WorkerKind
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
    WLT_KIND: config.kind,
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
    kind: env.WLT_KIND === 'rw' ? 'rw' : 'plain',
  }
}

/**
 * The protected resource: one counter per lock, `<table>_counters`, and the journal of every
 * change to it, `<table>_journal`, written by a trigger in the same statement as the change (so a
 * worker killed right after its write cannot leave an unrecorded write behind).
 */
export const countersTable = (table: string): string => `${table}_counters`
export const journalTable = (table: string): string => `${table}_journal`
/** The database's record of every grant of a lock (or read/write holder), `<table>_grants` (see createGrantJournal). */
export const grantsTable = (table: string): string => `${table}_grants`

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
  /**
   * TORTURE_UNFENCED=1 only: the same write without the fence check, so that the run must fail.
   * (The fence is still bound, in a condition always true, whose `0` gives PostgreSQL its type.)
   */
  unfencedWrite: (table: string) =>
    `UPDATE ${countersTable(table)} SET value = ?, fence = ?, op = 'write', writer = ?, read_value = ? WHERE lock_name = ? AND ? > 0`,
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

/**
 * The grant journal: triggers on the lock table (created by createLockTable before) record, in
 * `<table>_grants` and in the same statement, every row inserted and every row whose fence
 * changed (a takeover): the lock, its fence and the instance it went
 * to. The journal's id is drawn while the granting statement holds what serialises the grants of
 * one lock (PostgreSQL: the lock's advisory lock, held to commit; MySQL/MariaDB: the fence
 * counter's row lock; SQLite: the write lock), so it is the order of grants. Renewals do not
 * change the fence and are not recorded. A trigger on `<table>_rw_holders` records every
 * read/write holder inserted, likewise: its insert runs while the acquisition's transaction holds
 * the key's row in `<table>_rw_keys` (SQLite: the write lock), which serialises that key's grants.
 * A holder inserted by a transaction that then rolls back (a multi-lock refused on a later part)
 * takes its record along.
 */
export async function createGrantJournal(knex: Knex, database: Database, table: string): Promise<void> {
  const grants = grantsTable(table)
  const columns = 'lock_name VARCHAR(255) NOT NULL, lock_key VARCHAR(255) NOT NULL, holder VARCHAR(255) NOT NULL, fence BIGINT NOT NULL'
  const copy = `INSERT INTO ${grants} (lock_name, lock_key, holder, fence) VALUES (NEW.lock_name, NEW.lock_key, NEW.instance_name, NEW.fence)`
  const holders = `${table}_rw_holders`
  switch (database) {
    case 'sqlite':
      await knex.raw(`CREATE TABLE ${grants} (id INTEGER PRIMARY KEY AUTOINCREMENT, ${columns})`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_ai AFTER INSERT ON ${table} BEGIN ${copy}; END`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_au AFTER UPDATE ON ${table} WHEN NEW.fence <> OLD.fence BEGIN ${copy}; END`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_rw AFTER INSERT ON ${holders} BEGIN ${copy}; END`)
      break
    case 'postgres':
      await knex.raw(`CREATE TABLE ${grants} (id BIGSERIAL PRIMARY KEY, ${columns})`)
      await knex.raw(`CREATE FUNCTION ${table}_grants_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ${copy}; RETURN NULL; END $$`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_ai AFTER INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_grants_fn()`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_au AFTER UPDATE ON ${table} FOR EACH ROW WHEN (NEW.fence IS DISTINCT FROM OLD.fence) EXECUTE FUNCTION ${table}_grants_fn()`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_rw AFTER INSERT ON ${holders} FOR EACH ROW EXECUTE FUNCTION ${table}_grants_fn()`)
      break
    case 'mysql':
      await knex.raw(`CREATE TABLE ${grants} (id BIGINT AUTO_INCREMENT PRIMARY KEY, ${columns}) ENGINE=InnoDB`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_ai AFTER INSERT ON ${table} FOR EACH ROW ${copy}`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_au AFTER UPDATE ON ${table} FOR EACH ROW BEGIN IF NEW.fence <> OLD.fence THEN ${copy}; END IF; END`)
      await knex.raw(`CREATE TRIGGER ${table}_grants_rw AFTER INSERT ON ${holders} FOR EACH ROW ${copy}`)
      break
  }
}

export async function dropResource(knex: Knex, database: Database, table: string): Promise<void> {
  await knex.raw(`DROP TABLE IF EXISTS ${countersTable(table)}`) // takes its trigger along
  await knex.raw(`DROP TABLE IF EXISTS ${journalTable(table)}`)
  // The grant journal's triggers first: the lock table is dropped after this, and SQLite checks
  // its triggers when the lock table's migrations alter it on the way down.
  if (database === 'postgres') {
    await knex.raw(`DROP FUNCTION IF EXISTS ${table}_journal_fn()`)
    await knex.raw(`DROP FUNCTION IF EXISTS ${table}_grants_fn() CASCADE`) // and its triggers
  } else {
    await knex.raw(`DROP TRIGGER IF EXISTS ${table}_grants_ai`)
    await knex.raw(`DROP TRIGGER IF EXISTS ${table}_grants_au`)
    await knex.raw(`DROP TRIGGER IF EXISTS ${table}_grants_rw`)
  }
  await knex.raw(`DROP TABLE IF EXISTS ${grantsTable(table)}`)
}

/** The fence every forged hand-over offers (forger.mts): no worker may ever hold it. */
export const FORGED_FENCE = 999_999_999n

/** What the forger (forger.mts) is told, through its environment. */
export interface ForgerConfig {
  table: string
  locks: string[]
  /** realNow() after which it stops by itself, if the harness has not told it to before. */
  until: number
}

export function forgerEnv(config: ForgerConfig): Record<string, string> {
  return { WLF_TABLE: config.table, WLF_LOCKS: config.locks.join(','), WLF_UNTIL: String(Math.round(config.until)) }
}

export function forgerConfigFromEnv(env: NodeJS.ProcessEnv): ForgerConfig {
  const table = env.WLF_TABLE
  const locks = env.WLF_LOCKS
  const until = Number(env.WLF_UNTIL)
  if (!table || !locks || !Number.isFinite(until)) throw new Error('torture forger: WLF_TABLE, WLF_LOCKS and WLF_UNTIL must be set')
  return { table, locks: locks.split(','), until }
}

/** The forger's last line on stdout: what it sent, by kind, and what it could reach. */
export interface ForgerSummary {
  t: 'forger'
  /** Notifications sent, all kinds. */
  sent: number
  /** Not JSON, wrong shapes, empty, ~7,900 characters. */
  malformed: number
  /** `[name, key, 'forger', 'forged-token', '999999999', now]` for the run's locks. */
  forged: number
  /** Real release payloads it heard, sent again. */
  replayed: number
  /** Sent on `<table>_released` / on listening connections' own probe channels. */
  onReleased: number
  onOwnChannels: number
  /** Distinct `wl_probe_<hex>` channels it found (in the LISTEN of the workers' listening connections) and sent to. */
  ownChannels: number
  /** Real release payloads it heard on the table's channel. */
  captured: number
  rounds: number
  /** Statements that failed (a server restart) and the connections it had to open again. */
  errors: number
  reconnects: number
  lastError?: string
}

/** One line of a worker's stdout. Fences and counter values are strings: JSON has no bigint. */
export type WorkerEvent =
  | { t: 'ready'; worker: string; pid: number; at: number }
  | { t: 'reclaim'; worker: string; lock: string; acquired: boolean; fence?: string; start: number; at: number }
  /**
   * `leaseFrom`: when the acquiring statement was sent; the row's timestamp is no earlier. `mode`:
   * a read/write lock's side (kind `rw`; a multi-lock reports one line per part).
   */
  | { t: 'acq'; worker: string; lock: string; fence: string; via: 'try' | 'wait'; at: number; leaseFrom: number; mode?: RwMode; multi?: boolean }
  /** A renewal of the worker's lock succeeded; it was sent at `sentAt`, so the row is at least that fresh. */
  | { t: 'renew'; worker: string; sentAt: number }
  | { t: 'lost'; worker: string; lock: string; fence: string; reason: string; at: number }
  | {
      t: 'sec'; worker: string; lock: string; fence: string; start: number; end: number
      claim: Outcome; write: Outcome; read?: string
      /** Kind `rw`: the side held. A reader does not write; it reads again at the end (`reread`), and must find what it read first. */
      mode?: RwMode; reread?: string
      /** Whether lock.signal had aborted when the section ended. */
      aborted: boolean
      /** The longest the worker's event loop was blocked during the section. */
      maxLagMs: number
      stall?: { ms: number; abortedOnWake: boolean; reason?: string }
    }
  | { t: 'err'; worker: string; where: string; message: string; at: number }
  | { t: 'log'; worker: string; level: string; message: string; at: number }
  | { t: 'violation'; worker: string; message: string; at: number }
  /** `ignoredNotifications`: notifications its store dropped as malformed (debug logs). */
  | { t: 'summary'; worker: string; sections: number; errors: number; warnings: number; handOvers: number; ignoredNotifications: number; at: number }

/** What became of a fenced statement. `error`: it failed, and may or may not have committed. */
export type Outcome = 'ok' | 'refused' | 'error' | 'skipped'
