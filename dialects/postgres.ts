import { randomUUID } from 'node:crypto'
import type { Knex } from 'knex'
import { upsertKey, upsertedFence } from './read-write.js'
import { executorFor, statement, variantKinds } from './executor.js'
import { acquireOnConflict, runOnConflict } from './on-conflict.js'
import {
  errorCode, rowsJson,
  type AcquireRequest, type Dialect, type RowIdentity, type ServerFacts,
} from './dialect.js'
import type { ReleaseSubscription } from './notifications.js'

// The database clock in whole milliseconds since the epoch. clock_timestamp() rather than now():
// now() is frozen at the start of the caller's transaction, which may be long open.
const NOW_SQL = '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint'

// INSERT … ON CONFLICT arrived in PostgreSQL 9.5.
const MIN_NATIVE_VERSION_NUM = 90500

// The statement kinds of a waiter's acquire, which keeps its place in the line (see acquireNative).
const onConflictLineKind = variantKinds('on-conflict-line')

// Marks the releases this process announces (a pid could repeat on another host).
const processTag = randomUUID()

/** The NOTIFY channel of a lock table. Table names are at most 48 characters, so this stays within PostgreSQL's 63. */
const channelOf = (table: string): string => `${table}_released`

/** The waiting line of a lock table (see the first migration); at most 56 characters. */
const lineOf = (table: string): string => `${table}_waiters`

/** The NOTIFY channel of one waiting store: releases addressed to it as first in the line. */
const waiterChannelOf = (waiter: string): string => `wl_waiter_${waiter}`

/** Waiter names: 64 bits in hex, which are also the key of the advisory lock its listener holds. */
const WAITER = /^[0-9a-f]{16}$/

/** The advisory lock key of a waiter name (an SQL expression of type text). */
const waiterKey = (waiter: string): string => `('x' || ${waiter})::bit(64)::bigint`

/**
 * A place in the line `w` that counts: not lapsed, and its store listening. The listening
 * connection holds the advisory lock named by the waiter, so another session cannot take it (a
 * place of a process that died, or whose connection dropped, is skipped at once). Taking it
 * for the transaction of the statement asking is the cheap way to ask: a lookup in the server's
 * lock table, which ends with that transaction.
 */
const LIVE_PLACE = `w.expires_ts > ${NOW_SQL} AND NOT pg_try_advisory_xact_lock(${waiterKey('w.waiter')})`

/** Renews a place on a join (as `excluded`): one that had lapsed counts as new and goes to the back. */
const RENEW_PLACE = 'expires_ts = excluded.expires_ts, since_ts = CASE WHEN w.expires_ts > excluded.since_ts THEN w.since_ts ELSE excluded.since_ts END'

// undefined_table: the line was dropped (or never created) while stores run.
const isUndefinedTable = (error: unknown): boolean => errorCode(error) === '42P01'

// Tables whose line has been found missing: acquire, release and wait without it from then on.
const linesGone = new WeakMap<Knex, Set<string>>()
function lineGone(knex: Knex, table: string): void {
  let gone = linesGone.get(knex)
  if (!gone) linesGone.set(knex, (gone = new Set()))
  gone.add(table)
}
const hasLine = (knex: Knex, table: string): boolean => linesGone.get(knex)?.has(table) !== true

/** Runs `run` on `table`'s line; a line that turns out to be missing is remembered and skipped. */
async function onLine(knex: Knex, table: string, run: () => Promise<unknown>): Promise<void> {
  if (!hasLine(knex, table)) return
  try {
    await run()
  } catch (error) {
    if (!isUndefinedTable(error)) throw error
    lineGone(knex, table)
  }
}

/**
 * The per-lock lock under which every fence of `(name, key)` is drawn: a transaction-level
 * advisory lock (two int4 keys: the table, and the lock's name and key), held until the drawing
 * statement commits, so that another acquisition of the same lock cannot draw a fence, let alone
 * commit one, meanwhile. Fences then grow in commit order, which is the order the lock was
 * granted in, however long a statement waited between forming its row and inserting it. (A hash
 * collision between two locks only makes them draw one after the other.) `lockIdSql` is the
 * lock's name and key as one text expression.
 */
const fenceUnderLock = (table: string, lockIdSql: string): string =>
  `(SELECT nextval('"${table}_fence_seq"'::regclass) FROM (SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${lockIdSql}))) AS wl_fence_lock)`
const ROW_LOCK_ID = "t.lock_name || '/' || t.lock_key"
const lockIdOf = (lock: { name: string; key: string }): string => `${lock.name}::text || '/' || ${lock.key}::text`

/**
 * Added to a release's select list unless the release must be durable: it turns
 * `synchronous_commit` off for the statement's own transaction (`SET LOCAL`, in the same round
 * trip), so its commit does not wait for the WAL to reach the disk. A release a crash loses only
 * leaves the row looking held until its lease ends, which is what a crashed holder gives anyway;
 * and a later acquisition's durable commit flushes the WAL up to it, release included.
 */
const asyncCommit = (durable: boolean): string => (durable ? '' : ", set_config('synchronous_commit', 'off', true)")

/** The most a release notification can carry: two names of 255 characters, escaped, and a tag. */
const MAX_PAYLOAD = 8_000

/**
 * What a notification on a release channel says, or why it is ignored. Any session of the
 * database may NOTIFY on these channels, so the payload is read defensively and only ever used
 * to wake a waiter: `[name, key, process tag]`, two strings and a string, nothing else trusted.
 */
function readRelease(payload: string | undefined): { name: string; key: string; tag: unknown; readWrite: boolean } | string {
  if (payload === undefined || payload.length === 0) return 'an empty payload'
  if (payload.length > MAX_PAYLOAD) return `a payload of ${payload.length} characters`
  let parsed: unknown
  try {
    parsed = JSON.parse(payload)
  } catch {
    return 'a payload that is not JSON'
  }
  if (!Array.isArray(parsed)) return 'a payload that is not an array'
  const [name, key, tag, kind] = parsed as unknown[]
  if (typeof name !== 'string' || typeof key !== 'string' || name.length === 0) return 'a payload without a lock name and key'
  // A fourth element 'rw': a read/write holder left. Anything else there is read as a plain release.
  return { name, key, tag, readWrite: kind === 'rw' }
}

/**
 * What a listening store makes of a notification on one of its channels (`own`: its own): a
 * wake for the lock it names, nothing for releases of this process, and a note on anything
 * that cannot be read.
 */
function hear(
  message: { channel: string; payload?: string }, channel: string, own: string,
  onRelease: (name: string, key: string, addressed: boolean, readWrite: boolean) => void, onIgnored: (why: string) => void,
): void {
  if (message.channel !== channel && message.channel !== own) return
  const release = readRelease(message.payload)
  if (typeof release === 'string') {
    onIgnored(`a notification on ${message.channel} with ${release}`)
    return
  }
  // Releases made by this process have woken its waiters already, one store at a time; hearing
  // them again would send every waiting store to the database at once.
  if (release.tag === processTag) return
  onRelease(release.name, release.key, message.channel === own, release.readWrite)
}

/** The parts of a `pg` client the listener uses. */
interface ListeningClient {
  on(event: 'notification', listener: (message: { channel: string; payload?: string }) => void): void
  on(event: 'error', listener: (error: Error) => void): void
  on(event: 'end', listener: () => void): void
  query(sql: string): Promise<unknown>
  /** pg's connection; its socket is what keeps the process alive. */
  connection?: { stream?: { ref?(): unknown; unref?(): unknown } }
}

/** PostgreSQL through `pg`. */
export const postgresDialect: Dialect = {
  name: 'postgres',
  nowSql: NOW_SQL,
  cancelsQueries: true,

  async detect(knex: Knex): Promise<ServerFacts> {
    const result = await knex.raw("SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version")
    const row = postgresDialect.rowsOf(result)[0] as { num: string; version: string }
    const native = Number(row.num) >= MIN_NATIVE_VERSION_NUM
    return { server: `PostgreSQL ${row.version}`, native, reason: native ? '' : 'INSERT … ON CONFLICT needs PostgreSQL 9.5 or later', insertReturning: true, updateReturning: true, unsupported: '' }
  },

  acquireNative: (knex: Knex, request: AcquireRequest) => {
    const line = request.line
    if (!line || !hasLine(knex, request.table)) return acquireOnConflict(knex, postgresDialect, request)
    // A waiter's attempt keeps its store's place in the line in the same statement: refused, it
    // joins (or renews its place); won, it leaves if asked, and clears places that no longer
    // count. Data-modifying CTEs all run, whether or not the final SELECT reads them.
    return runOnConflict(knex, postgresDialect, request, onConflictLineKind, (upsert, quote) => {
      const w = quote(lineOf(request.table))
      return `WITH attempt AS (${upsert}),
       joined AS (INSERT INTO ${w} AS w (lock_name, lock_key, waiter, process_tag, since_ts, expires_ts)
         SELECT :name, :key, :waiter, :process, ${NOW_SQL}, ${NOW_SQL} + :expiresIn WHERE NOT EXISTS (SELECT 1 FROM attempt)
         ON CONFLICT (lock_name, lock_key, waiter) DO UPDATE SET ${RENEW_PLACE}),
       left_line AS (DELETE FROM ${w} w WHERE w.lock_name = :name AND w.lock_key = :key AND EXISTS (SELECT 1 FROM attempt)
         AND ((w.waiter = :waiter AND :leaveOnWin) OR NOT (${LIVE_PLACE})))
       SELECT fence FROM attempt`
    }, { waiter: line.waiter, process: processTag, expiresIn: line.expiresInMs, leaveOnWin: line.leaveOnWin }).catch((error: unknown) => {
      // The line was dropped while stores ran: acquire without it from now on.
      if (!isUndefinedTable(error)) throw error
      lineGone(knex, request.table)
      return acquireOnConflict(knex, postgresDialect, request)
    })
  },

  // Not the column's default (drawn when the row is formed, before the statement may wait):
  // drawn under the lock's advisory lock (see fenceUnderLock). A takeover's VALUES took that lock
  // already; taking it again in the same transaction is free. (Table names are plain
  // identifiers, safe inside the literals.)
  insertFence: { sql: (table, _quote, lock) => fenceUnderLock(table, lockIdOf(lock)), bindsLock: true },
  takeoverFenceSql: (table: string) => fenceUnderLock(table, ROW_LOCK_ID),

  async release(knex: Knex, table: string, row: RowIdentity, line = false, durable = true): Promise<boolean> {
    if (line && !hasLine(knex, table)) line = false
    try {
      // NOTIFY inside a statement is delivered when its transaction commits, so no listener
      // hears of the release before the row is really gone. With a line, the release wakes the
      // store of another process that has waited longest (this process wakes its own stores
      // itself), or everyone when nobody else is in line.
      const sql = line
        // Kinds are constants, chosen rather than built: this runs on every release.
        ? statement(knex, durable ? 'release-notify-first' : 'release-notify-first/async-commit', table, (quote) =>
          `WITH released AS (DELETE FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token RETURNING lock_name, lock_key)
           SELECT pg_notify(
             COALESCE((SELECT '${waiterChannelOf('')}' || w.waiter FROM ${quote(lineOf(table))} w
                       WHERE w.lock_name = r.lock_name AND w.lock_key = r.lock_key AND w.process_tag <> :process AND ${LIVE_PLACE}
                       ORDER BY w.since_ts, w.waiter LIMIT 1), :channel),
             json_build_array(r.lock_name, r.lock_key, :process::text)::text)${asyncCommit(durable)}
           FROM released r`)
        : statement(knex, durable ? 'release-notify' : 'release-notify/async-commit', table, (quote) =>
          `WITH released AS (DELETE FROM ${quote(table)} WHERE lock_name = :name AND lock_key = :key AND token = :token RETURNING lock_name, lock_key)
           SELECT pg_notify(:channel, json_build_array(lock_name, lock_key, :process::text)::text)${asyncCommit(durable)} FROM released`)
      const { rows } = await executorFor(knex, postgresDialect.rowsOf).run(sql, { ...row, process: processTag, channel: channelOf(table) })
      return rows.length > 0
    } catch (error) {
      // A missing line must not stop releases: fall back to notifying everyone from now on.
      // (A missing lock table fails again below, as it should.)
      if (!line || !isUndefinedTable(error)) throw error
      lineGone(knex, table)
      return postgresDialect.release(knex, table, row, false, durable)
    }
  },

  // An acquisition of the other strategy takes the lock's advisory lock before any row lock
  // (forming its row); the emulated DELETE would lock the row first. Take it first here too.
  async emulatedPrelude(knex: Knex, table: string, name: string, key: string): Promise<void> {
    await knex.raw(`SELECT pg_advisory_xact_lock(hashtext('${table}'), hashtext(${lockIdOf({ name: '?', key: '?' })}))`, [name, key])
  },

  // The planner turns the row-value IN into one index lookup per element.
  restrictToRows: (query: Knex.QueryBuilder, _table: string, rows: readonly RowIdentity[]) =>
    query.whereRaw('(lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)', [rowsJson(rows)]),

  notifications: {
    line: {
      inNativeAcquire: true,
      join: (knex, table, waiter, name, key, expiresInMs) => onLine(knex, table, () => {
        // Places of that lock that no longer count are cleared on the way. A place of this store
        // that had lapsed counts as new: it goes to the back of the line.
        const sql = statement(knex, 'line-join', table, (quote) =>
          `WITH cleared AS (DELETE FROM ${quote(lineOf(table))} w WHERE w.lock_name = :name AND w.lock_key = :key AND w.waiter <> :waiter AND NOT (${LIVE_PLACE}))
           INSERT INTO ${quote(lineOf(table))} AS w (lock_name, lock_key, waiter, process_tag, since_ts, expires_ts)
           VALUES (:name, :key, :waiter, :process, ${postgresDialect.nowSql}, ${postgresDialect.nowSql} + :expiresIn)
           ON CONFLICT (lock_name, lock_key, waiter) DO UPDATE SET ${RENEW_PLACE}`)
        return executorFor(knex, postgresDialect.rowsOf).run(sql, { name, key, waiter, process: processTag, expiresIn: expiresInMs })
      }),
      leave: (knex, table, waiter, name, key) => onLine(knex, table, () => {
        const sql = statement(knex, 'line-leave', table, (quote) =>
          `DELETE FROM ${quote(lineOf(table))} WHERE lock_name = :name AND lock_key = :key AND waiter = :waiter`)
        return executorFor(knex, postgresDialect.rowsOf).run(sql, { name, key, waiter })
      }),
    },

    async releaseManyAndNotify(knex: Knex, table: string, rows: readonly RowIdentity[], durable = true): Promise<void> {
      await knex.raw(
        `WITH released AS (
           DELETE FROM ?? WHERE (lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)
           RETURNING lock_name, lock_key)
         SELECT pg_notify(?, json_build_array(lock_name, lock_key, ?::text)::text)${asyncCommit(durable)} FROM released`,
        [table, rowsJson(rows), channelOf(table), processTag],
      )
    },

    // Every listening process hears it (no line for read/write locks: several readers may get in).
    async releaseHolderAndNotify(knex: Knex, table: string, holders: string, row: RowIdentity, durable = true): Promise<boolean> {
      const sql = statement(knex, durable ? 'release-holder-notify' : 'release-holder-notify/async-commit', holders, (quote) =>
        `WITH released AS (DELETE FROM ${quote(holders)} WHERE lock_name = :name AND lock_key = :key AND token = :token RETURNING lock_name, lock_key)
         SELECT pg_notify(:channel, json_build_array(lock_name, lock_key, :process::text, 'rw')::text)${asyncCommit(durable)} FROM released`)
      const { rows } = await executorFor(knex, postgresDialect.rowsOf).run(sql, { ...row, process: processTag, channel: channelOf(table) })
      return rows.length > 0
    },

    async notifyReleased(knex: Knex, table: string, name: string, key: string): Promise<void> {
      await knex.raw('SELECT pg_notify(?, ?)', [channelOf(table), JSON.stringify([name, key, processTag])])
    },

    async listen(knex, table, waiter, onRelease, onIgnored, onClosed): Promise<ReleaseSubscription> {
      if (!WAITER.test(waiter)) throw new TypeError(`worker-locks: waiter name ${JSON.stringify(waiter)} is not 16 hexadecimal digits`)
      const channel = channelOf(table)
      const ownChannel = waiterChannelOf(waiter)
      // A connection of its own, outside the pool: LISTEN belongs to one session for its lifetime.
      const client = (await knex.client.acquireRawConnection()) as ListeningClient
      let closed = false
      const close = (error: unknown): void => {
        if (closed) return
        closed = true
        onClosed(error)
      }
      client.on('notification', (message) => hear(message, channel, ownChannel, onRelease, onIgnored))
      client.on('error', close)
      client.on('end', () => close(new Error('the listening connection ended')))
      try {
        // Listening first, then the advisory lock that tells releases this store hears them.
        await client.query(knex.raw(`LISTEN ??; LISTEN ??; SELECT pg_advisory_lock(${waiterKey('?')})`, [channel, ownChannel, waiter]).toQuery())
      } catch (error) {
        await knex.client.destroyRawConnection(client).catch(() => undefined)
        throw error
      }
      return {
        async close() {
          closed = true
          await knex.client.destroyRawConnection(client)
        },
        keepProcessAlive(keep: boolean) {
          const socket = client.connection?.stream
          if (keep) socket?.ref?.()
          else socket?.unref?.()
        },
      }
    },
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
  readWrite: {
    // Explicit: a server whose default is REPEATABLE READ or SERIALIZABLE would fail most
    // acquisitions of a busy key with serialization errors.
    transaction: { isolationLevel: 'read committed' },
    lockKey: upsertKey,
    fenceOf: upsertedFence,
    integer: (placeholder) => `CAST(${placeholder} AS BIGINT)`,
  },
}
