import { randomUUID } from 'node:crypto'
import type { Knex } from 'knex'
import { readWriteTables, upsertKey, upsertedFence } from './read-write.js'
import { statement } from './executor.js'
import { acquireOnConflict } from './acquire.js'
import { errorCode, rowsJson, toFence, type Dialect, type Heard, type RowIdentity } from './dialect.js'

// The database clock in whole milliseconds since the epoch. clock_timestamp() rather than now():
// now() is frozen at the start of the caller's transaction, which may be long open.
const NOW_SQL = '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint'

// INSERT … ON CONFLICT arrived in PostgreSQL 9.5.
const MIN_NATIVE_VERSION_NUM = 90500

// Marks what this process announces (a pid could repeat on another host): its own releases
// have woken its waiters already, in memory.
const processTag = randomUUID()

/** The NOTIFY channel of a lock table. Table names are at most 48 characters, so this stays within PostgreSQL's 63. */
const channelOf = (table: string): string => `${table}_released`

/**
 * The per-lock lock under which every fence of `(name, key)` is drawn: a transaction-level
 * advisory lock (two int4 keys: the table, and the lock's name and key), held until the drawing
 * statement commits, so that another acquisition of the same lock cannot draw a fence, let alone
 * commit one, meanwhile. Fences then grow in commit order, which is the order the lock was
 * granted in. (A hash collision between two locks only makes them draw one after the other.)
 */
const fenceUnderLock = (table: string, lockIdSql: string): string =>
  `(SELECT nextval('"${table}_fence_seq"'::regclass) FROM (SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${lockIdSql}))) AS wl_fence_lock)`
const lockIdOf = (lock: { name: string; key: string }): string => `${lock.name}::text || '/' || ${lock.key}::text`

/**
 * Added to a release's select list unless it must be durable: `synchronous_commit` off for the
 * statement's own transaction (SET LOCAL, in the same round trip), so its commit does not wait
 * for the disk. A release a crash loses only leaves the row held until its lease ends, as a
 * crashed holder's; a later acquisition's durable commit flushes the WAL up to it anyway.
 */
const asyncCommit = (durable: boolean): string => (durable ? '' : ", set_config('synchronous_commit', 'off', true)")

/** The most a notification can carry: two names of 255 characters, escaped, and a tag. */
const MAX_PAYLOAD = 8_000

/**
 * What a notification on a release channel says. Any session may NOTIFY on it, so the payload is
 * read defensively: `[name, key, process tag, kind?]`, kind `'rw'` for a read/write holder;
 * anything else is ignored.
 */
function hear(payload: string | undefined): Heard | undefined {
  const ignored = (why: string): Heard => ({ kind: 'ignored', why: `a notification with ${why}` })
  if (payload === undefined || payload.length === 0) return ignored('an empty payload')
  if (payload.length > MAX_PAYLOAD) return ignored(`a payload of ${payload.length} characters`)
  let parsed: unknown
  try {
    parsed = JSON.parse(payload)
  } catch {
    return ignored('a payload that is not JSON')
  }
  if (!Array.isArray(parsed)) return ignored('a payload that is not an array')
  const [name, key, tag, kind] = parsed as unknown[]
  if (typeof name !== 'string' || typeof key !== 'string' || name.length === 0) return ignored('a payload without a lock name and key')
  return tag === processTag ? undefined : { kind: 'release', name, key, readWrite: kind === 'rw' }
}

/** The parts of a `pg` client the listener uses. */
interface ListeningClient {
  on(event: 'notification', listener: (message: { channel: string; payload?: string }) => void): void
  on(event: 'error' | 'end', listener: (error?: Error) => void): void
  query(sql: string): Promise<unknown>
  /** The process id of the server's cancel key (BackendKeyData). */
  processID?: number
  connection?: { stream?: { unref?(): unknown } }
}

// The parameter types of migration 6's routine `<table>_rw_acquire`.
const RW_ACQUIRE_SIGNATURE = 'text[], text[], text[], boolean[], text, bigint, bigint, text'

/** PostgreSQL through `pg`. */
export const postgresDialect: Dialect = {
  name: 'postgres',
  nowSql: NOW_SQL,

  async detect(db) {
    const { rows } = await db.query(db.knex.raw(`SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version,
      pg_is_in_recovery() AS standby, current_setting('transaction_read_only') AS read_only, current_setting('default_transaction_read_only') AS by_default,
      current_setting('transaction_isolation') AS isolation`), 'detect')
    const row = rows[0] as { num: string; version: string; standby: boolean; read_only: string; by_default: string; isolation: string }
    const native = Number(row.num) >= MIN_NATIVE_VERSION_NUM
    // A standby's transactions are read-only too; say the cause that needs another server.
    const readOnly = row.standby ? 'it is a standby (in recovery), which takes no writes; connect to the primary'
      : row.read_only === 'on' ? `the session is read-only (${row.by_default === 'on' ? 'default_' : ''}transaction_read_only is on)` : ''
    return { server: `PostgreSQL ${row.version}`, native, reason: native ? '' : 'INSERT … ON CONFLICT needs PostgreSQL 9.5 or later', returning: true, unsupported: '', readOnly, standby: row.standby,
      readWriteInOne: row.isolation === 'read committed' }
  },

  acquireNative: (db, request) => acquireOnConflict(db, postgresDialect, request),

  // Not the column's default (drawn when the row is formed, before the statement may wait):
  // drawn under the lock's advisory lock. A takeover's VALUES took that lock already; taking it
  // again in the same transaction is free. (Table names are plain identifiers, safe in literals.)
  insertFence: { sql: (table, _quote, lock) => fenceUnderLock(table, lockIdOf(lock)), bindsLock: true },
  takeoverFenceSql: (table: string) => fenceUnderLock(table, "t.lock_name || '/' || t.lock_key"),

  // NOTIFY inside a statement is delivered when its transaction commits, so no listener hears of
  // the release before the row is really gone.
  async release(db, table, row, durable) {
    const sql = statement(db.knex, durable ? 'release-notify' : 'release-notify/async-commit', table, (quote) =>
      `WITH released AS (DELETE FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token RETURNING lock_name, lock_key)
       SELECT pg_notify(:channel, json_build_array(lock_name, lock_key, :process::text)::text)${asyncCommit(durable)} FROM released`)
    return (await db.run(sql, { ...row, process: processTag, channel: channelOf(table) })).rows.length > 0
  },

  // An acquisition of the other strategy takes the lock's advisory lock before any row lock
  // (forming its row); the emulated DELETE would lock the row first. Take it first here too.
  async emulatedPrelude(db, table, name, key) {
    await db.query(db.knex.raw(`SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${lockIdOf({ name: '?', key: '?' })}))`, [name, key]), 'emulated-prelude')
  },

  // The planner turns the row-value IN into one index lookup per element.
  restrictToRows: (query: Knex.QueryBuilder, _table: string, rows: readonly RowIdentity[]) =>
    query.whereRaw('(lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)', [rowsJson(rows)]),

  notifications: {
    async releaseManyAndNotify(db, table, rows, durable) {
      await db.query(db.knex.raw(
        `WITH released AS (
           DELETE FROM ?? WHERE (lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)
           RETURNING lock_name, lock_key)
         SELECT pg_notify(?, json_build_array(lock_name, lock_key, ?::text)::text)${asyncCommit(durable)} FROM released`,
        [table, rowsJson(rows), channelOf(table), processTag],
      ), 'release-many-notify')
    },

    async releaseHolderAndNotify(db, table, holders, row, durable) {
      const sql = statement(db.knex, durable ? 'release-holder-notify' : 'release-holder-notify/async-commit', holders, (quote) =>
        `WITH released AS (DELETE FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND token = :token RETURNING lock_name, lock_key)
         SELECT pg_notify(:channel, json_build_array(lock_name, lock_key, :process::text, 'rw')::text)${asyncCommit(durable)} FROM released`)
      return (await db.run(sql, { ...row, process: processTag, channel: channelOf(table) })).rows.length > 0
    },

    async notifyReleased(db, table, name, key) {
      await db.query(db.knex.raw('SELECT pg_notify(?, ?)', [channelOf(table), JSON.stringify([name, key, processTag])]), 'notify')
    },

    async subscribe(knex, table, heard, closed) {
      const channel = channelOf(table)
      // Random, so that nobody else's NOTIFY reaches it: a probe is only ever sent to its own listener.
      const own = `wl_probe_${randomUUID().replaceAll('-', '')}`
      // A connection of its own, outside the pool: LISTEN belongs to one session for its lifetime.
      const client = (await knex.client.acquireRawConnection()) as ListeningClient
      let ended = false
      const end = (error: unknown): void => {
        if (ended) return
        ended = true
        closed(error)
      }
      client.on('notification', (message) => {
        if (message.channel === own) return heard({ kind: 'probe' })
        if (message.channel !== channel) return
        const what = hear(message.payload)
        if (what) heard(what)
      })
      client.on('error', (error) => end(error))
      client.on('end', () => end(new Error('the listening connection ended')))
      // Waits keep the process alive while they last; a lingering listener must not.
      client.connection?.stream?.unref?.()
      const close = async (): Promise<void> => {
        ended = true
        await knex.client.destroyRawConnection(client)
      }
      try {
        // The server sends its process id as the connection's cancel key; a pooler (PgBouncer, in
        // any mode) sends a key of its own.
        const { rows } = await client.query('SELECT pg_backend_pid() AS pid') as { rows: Array<{ pid: number }> }
        if (rows[0]?.pid !== client.processID) {
          await close()
          return undefined
        }
        await client.query(knex.raw('LISTEN ??; LISTEN ??', [own, channel]).toQuery())
      } catch (error) {
        await close().catch(() => undefined)
        throw error
      }
      return { probe: async () => { await knex.raw('SELECT pg_notify(?, ?)', [own, '']) }, close }
    },
  },

  // The fence epoch (migration 5): without its trigger, fences could go back after a failover.
  // The read/write routine (migration 6): the native strategy calls it.
  async missingObjects(db, table) {
    const epoch = `${table}_fence_epoch`
    const { rows } = await db.query(db.knex.raw(
      `SELECT (SELECT count(*)::int FROM pg_trigger WHERE tgname = ? AND tgrelid IN (to_regclass(?), to_regclass(?))
         AND EXISTS (SELECT 1 FROM ?? WHERE id = 1)) AS triggers, to_regprocedure(?) IS NOT NULL AS routine`,
      [epoch, `"${table}"`, `"${readWriteTables(table).keys}"`, epoch, `"${table}_rw_acquire"(${RW_ACQUIRE_SIGNATURE})`]), 'missing-objects')
    const found = rows[0] as { triggers: number; routine: boolean }
    if (found.triggers !== 2) return `the fence epoch's row or triggers of table "${epoch}" are missing`
    return found.routine ? '' : `the read/write routine "${table}_rw_acquire" is missing`
  },

  rowsOf: (result) => (result as { rows: Record<string, unknown>[] }).rows,

  // READ COMMITTED whatever the server's default: at REPEATABLE READ or SERIALIZABLE the losers
  // of a race fail with 40001 instead of seeing the winner's row.
  emulatedTransaction: { isolationLevel: 'read committed' },

  // 42P01 undefined_table, 42703 undefined_column
  isMissingSchema: (error) => errorCode(error) === '42P01' || errorCode(error) === '42703',
  isUniqueViolation: (error) => errorCode(error) === '23505',
  // 40001 serialization_failure, 40P01 deadlock_detected
  isTransientConflict: (error) => errorCode(error) === '40001' || errorCode(error) === '40P01',
  // 25006 read_only_sql_transaction: a standby, or a read-only transaction
  isReadOnly: (error) => errorCode(error) === '25006',

  readWrite: {
    // Explicit: at REPEATABLE READ or SERIALIZABLE most acquisitions of a busy key would fail.
    transaction: { isolationLevel: 'read committed' },
    lockKey: upsertKey,
    fenceOf: upsertedFence,
    // Migration 6's routine: the same steps, row locks and order, in one round trip.
    async acquireInOne(db, r) {
      const sql = statement(db.knex, 'rw-acquire', r.table, (quote) => `SELECT ${quote(`${r.table}_rw_acquire`)}(CAST(:names AS text[]), CAST(:keys AS text[]),
        CAST(:tokens AS text[]), CAST(:writes AS boolean[]), CAST(:instance AS text), CAST(:now AS bigint), CAST(:lease AS bigint), CAST(:intent AS text)) AS fences`)
      const { rows } = await db.run(sql, {
        names: r.parts.map((p) => p.name), keys: r.parts.map((p) => p.key), tokens: r.parts.map((p) => p.token), writes: r.parts.map((p) => p.write),
        instance: r.instanceName, now: r.nowMs, lease: r.leaseMs, intent: r.intent ?? null,
      })
      const fences = rows[0]?.fences as readonly string[] | null | undefined
      return fences ? fences.map((fence) => toFence(fence)) : null
    },
    integer: (placeholder) => `CAST(${placeholder} AS BIGINT)`,
  },
}
