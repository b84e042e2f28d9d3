// What the coordinator and its workers agree on: the jobs, the lock timing, how to open the
// shared SQLite file, and the lines a worker prints.
import knexFactory, { type Knex } from 'knex'

export const JOBS = ['send-invoices', 'rebuild-search-index', 'nightly-report'] as const

// Far shorter than the library's defaults (120 s / 30 s) so that a killed worker's lock frees
// itself while you watch. The coordinator uses the same timeout to judge staleness.
export const LOCK_TIMING = { lockTimeoutMs: 2_000, renewalIntervalMs: 500 } as const

/** Wall-clock ms with sub-ms precision; comparable across processes on one machine. */
export function now(): number {
  return performance.timeOrigin + performance.now()
}

/** A knex for the demo file. Several processes share it: WAL lets readers run beside the
 * writer, and the busy timeout makes a writer wait its turn instead of failing at once. */
export function openDatabase(filename: string): Knex {
  return knexFactory({
    client: 'better-sqlite3',
    connection: { filename },
    useNullAsDefault: true,
    pool: {
      afterCreate(conn: { pragma(source: string): unknown }, done: (error: Error | null, conn: unknown) => void) {
        conn.pragma('journal_mode = WAL')
        conn.pragma('busy_timeout = 5000')
        done(null, conn)
      },
    },
  })
}

/** One line of a worker's stdout. `fence` is a string because JSON has no bigint. */
export type WorkerEvent =
  | { type: 'start'; job: string; worker: string; fence: string; at: number }
  | { type: 'end'; job: string; worker: string; fence: string; at: number; lost?: boolean }
  | { type: 'error'; worker: string; message: string }
