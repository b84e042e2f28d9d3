import { randomUUID } from 'node:crypto'
import type { Knex } from 'knex'
import { executorFor, statement } from './executor.js'
import { acquireOnConflict, runOnConflict } from './on-conflict.js'
import {
  errorCode, rowsJson, toFence,
  type AcquireRequest, type Dialect, type ReleaseLine, type ReleaseResult, type ReleaseSubscription, type RowIdentity, type ServerFacts,
} from './dialect.js'

// The database clock in whole milliseconds since the epoch. clock_timestamp() rather than now():
// now() is frozen at the start of the caller's transaction, which may be long open.
const NOW_SQL = '(floor(extract(epoch from clock_timestamp()) * 1000))::bigint'

// INSERT … ON CONFLICT arrived in PostgreSQL 9.5.
const MIN_NATIVE_VERSION_NUM = 90500

// How long closing a listening connection waits for notifications already sent to it.
const DRAIN_TIMEOUT_MS = 2_000

// Marks the releases this process announces (a pid could repeat on another host).
const processTag = randomUUID()

/** The NOTIFY channel of a lock table. Table names are at most 48 characters, so this stays within PostgreSQL's 63. */
const channelOf = (table: string): string => `${table}_released`

/** The waiting line of a lock table (migration 3); at most 56 characters. */
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

/**
 * The instance name a place carries where the line supports hand-over (migration 4): the
 * column, its value's placeholder, and its renewal on a join. Empty where it does not.
 */
const PLACE_INSTANCE = { column: ', instance_name', value: ', ?', renew: ', instance_name = excluded.instance_name' }
const NO_PLACE_INSTANCE = { column: '', value: '', renew: '' }

/** Renews a place on a join (as `excluded`): one that had lapsed counts as new and goes to the back. */
const RENEW_PLACE = 'expires_ts = excluded.expires_ts, since_ts = CASE WHEN w.expires_ts > excluded.since_ts THEN w.since_ts ELSE excluded.since_ts END'

// undefined_table: the line was dropped (migration 3 rolled back) while stores ran.
const isUndefinedTable = (error: unknown): boolean => errorCode(error) === '42P01'

// Tables whose line has been found missing since the store looked: acquire and release without it.
const linesGone = new WeakMap<Knex, Set<string>>()
function lineGone(knex: Knex, table: string): void {
  let gone = linesGone.get(knex)
  if (!gone) linesGone.set(knex, (gone = new Set()))
  gone.add(table)
}

/**
 * The release that gives the lock to the store first in the line (of another process, or another
 * store of this one), when its place carries an instance name (migration 4): the row gets that
 * instance name, `newToken`, a fresh timestamp and a new fence, the place is taken out of the
 * line, and the store is told the token, fence and timestamp on its own channel, all in one
 * statement. Where the first place has no instance
 * name (a store of an older worker-locks) the row is deleted and that store woken; where the line
 * is empty, the row is deleted and everyone told, as `release` does. Places of the lock that no
 * longer count are cleared on the way (waiters handed their locks make no winning attempt that
 * would clear them). The hand-over is the release's own write to the row, guarded by the
 * releasing token: a lock taken over meanwhile is neither handed nor deleted.
 */
async function releaseHandingOver(knex: Knex, table: string, row: RowIdentity, releasing: string, newToken: string, nowMs: number | null): Promise<ReleaseResult> {
  const databaseClock = nowMs === null
  const sql = statement(knex, databaseClock ? 'release-hand-over/database-clock' : 'release-hand-over/local-clock', table, (quote) => {
    const t = quote(table)
    const ours = 'lock_name = ? AND lock_key = ? AND token = ?'
    // `next` is read by several parts of the statement, so it is evaluated once.
    // Places of this process count only if they can take a hand-over: this process wakes its
    // own stores itself, and its listeners ignore what it sends. A store of this process handed
    // the lock is told by the caller, so no notification is sent to it.
    return `WITH next AS (
         SELECT w.waiter, w.instance_name, w.process_tag FROM ${quote(lineOf(table))} w
         WHERE EXISTS (SELECT 1 FROM ${t} WHERE ${ours})
           AND w.lock_name = ? AND w.lock_key = ? AND (w.process_tag <> ? OR (w.waiter <> ? AND w.instance_name IS NOT NULL))
           AND ${LIVE_PLACE}
         ORDER BY w.since_ts, w.waiter LIMIT 1),
       handed AS (
         UPDATE ${t} AS t SET instance_name = n.instance_name, token = ?, last_renewed_ts = ${databaseClock ? NOW_SQL : '?'},
           fence = ${postgresDialect.takeoverFenceSql(table, quote) ?? 'fence'}
         FROM next n WHERE n.instance_name IS NOT NULL AND t.${ours.replaceAll(' AND ', ' AND t.')}
         RETURNING t.lock_name, t.lock_key, t.fence, t.last_renewed_ts, n.waiter, n.process_tag),
       released AS (
         DELETE FROM ${t} WHERE ${ours} AND NOT EXISTS (SELECT 1 FROM next WHERE instance_name IS NOT NULL)
         RETURNING lock_name, lock_key),
       cleared AS (
         DELETE FROM ${quote(lineOf(table))} w WHERE w.lock_name = ? AND w.lock_key = ?
           AND (w.waiter IN (SELECT waiter FROM handed) OR (EXISTS (SELECT 1 FROM handed UNION ALL SELECT 1 FROM released) AND NOT (${LIVE_PLACE}))))
       SELECT h.waiter, h.fence::text AS fence, h.last_renewed_ts::text AS renewed, h.process_tag,
           CASE WHEN h.process_tag <> ? THEN pg_notify('${waiterChannelOf('')}' || h.waiter,
             json_build_array(h.lock_name, h.lock_key, ?::text, ?::text, h.fence::text, h.last_renewed_ts::text)::text) END
         FROM handed h
       UNION ALL
       SELECT NULL, NULL, NULL, NULL, pg_notify(COALESCE((SELECT '${waiterChannelOf('')}' || waiter FROM next), ?),
           json_build_array(r.lock_name, r.lock_key, ?::text)::text)
         FROM released r`
  })
  const ours = [row.name, row.key, row.token]
  const params = [
    ...ours, row.name, row.key, processTag, releasing,
    newToken, ...(databaseClock ? [] : [nowMs]), ...ours,
    ...ours,
    row.name, row.key,
    processTag, processTag, newToken,
    channelOf(table), processTag,
  ]
  const { rows } = await executorFor(knex, postgresDialect.rowsOf).run(sql, params)
  const found = rows[0]
  if (found === undefined) return false
  if (typeof found.waiter !== 'string') return true
  return { waiter: found.waiter, token: newToken, fence: toFence(found.fence), renewedMs: Number(found.renewed), sameProcess: found.process_tag === processTag }
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
    return { server: `PostgreSQL ${row.version}`, native, reason: native ? '' : 'INSERT … ON CONFLICT needs PostgreSQL 9.5 or later', returning: true, unsupported: '' }
  },

  // The takeover draws a new value rather than using excluded.fence: that one was drawn before
  // the statement waited for the row lock, and a holder that acquired and released meanwhile
  // may have drawn a larger one. (Table names are plain identifiers, safe inside the literal.)
  acquireNative: (knex: Knex, request: AcquireRequest) => {
    const takeoverFence = (quote: (name: string) => string): string => postgresDialect.takeoverFenceSql(request.table, quote) ?? ''
    const line = request.line
    if (!line || linesGone.get(knex)?.has(request.table)) return acquireOnConflict(knex, postgresDialect, request, undefined, takeoverFence)
    // A waiter's attempt keeps its store's place in the line in the same statement: refused, it
    // joins (or renews its place); won, it leaves if asked, and clears places that no longer
    // count. Data-modifying CTEs all run, whether or not the final SELECT reads them.
    const instance = line.handOver ? PLACE_INSTANCE : NO_PLACE_INSTANCE
    return runOnConflict(knex, postgresDialect, request, line.handOver ? 'on-conflict-line/hand-over' : 'on-conflict-line', (upsert, quote) => {
      const w = quote(lineOf(request.table))
      return `WITH attempt AS (${upsert}),
       joined AS (INSERT INTO ${w} AS w (lock_name, lock_key, waiter, process_tag, since_ts, expires_ts${instance.column})
         SELECT ?, ?, ?, ?, ${NOW_SQL}, ${NOW_SQL} + ?${instance.value} WHERE NOT EXISTS (SELECT 1 FROM attempt)
         ON CONFLICT (lock_name, lock_key, waiter) DO UPDATE SET ${RENEW_PLACE}${instance.renew}),
       left_line AS (DELETE FROM ${w} w WHERE w.lock_name = ? AND w.lock_key = ? AND EXISTS (SELECT 1 FROM attempt)
         AND ((w.waiter = ? AND ?) OR NOT (${LIVE_PLACE})))
       SELECT fence FROM attempt`
    }, [
      request.name, request.key, line.waiter, processTag, line.expiresInMs, ...(line.handOver ? [request.instanceName] : []),
      request.name, request.key, line.waiter, line.leaveOnWin,
    ], undefined, takeoverFence).catch((error: unknown) => {
      // The line was dropped while stores ran: acquire without it from now on.
      if (!isUndefinedTable(error)) throw error
      lineGone(knex, request.table)
      return acquireOnConflict(knex, postgresDialect, request, undefined, takeoverFence)
    })
  },

  // The column's default draws from a sequence (see migration 2).
  fenceSql: () => undefined,
  takeoverFenceSql: (table: string) => `nextval('"${table}_fence_seq"'::regclass)`,

  async release(knex: Knex, table: string, row: RowIdentity, line?: ReleaseLine): Promise<ReleaseResult> {
    if (line && linesGone.get(knex)?.has(table)) line = undefined
    const run = executorFor(knex, postgresDialect.rowsOf)
    try {
      if (line?.handOverToken !== undefined) return await releaseHandingOver(knex, table, row, line.waiter, line.handOverToken, line.nowMs)
      // NOTIFY inside a statement is delivered when its transaction commits, so no listener
      // hears of the release before the row is really gone. With a line, the release goes to the
      // store of another process that has waited longest (this process wakes its own stores
      // itself), or to everyone when nobody else is in line.
      const sql = line
        ? statement(knex, 'release-notify-first', table, (quote) =>
          `WITH released AS (DELETE FROM ${quote(table)} WHERE lock_name = ? AND lock_key = ? AND token = ? RETURNING lock_name, lock_key)
           SELECT pg_notify(
             COALESCE((SELECT '${waiterChannelOf('')}' || w.waiter FROM ${quote(lineOf(table))} w
                       WHERE w.lock_name = r.lock_name AND w.lock_key = r.lock_key AND w.process_tag <> ? AND ${LIVE_PLACE}
                       ORDER BY w.since_ts, w.waiter LIMIT 1), ?),
             json_build_array(r.lock_name, r.lock_key, ?::text)::text)
           FROM released r`)
        : statement(knex, 'release-notify', table, (quote) =>
          `WITH released AS (DELETE FROM ${quote(table)} WHERE lock_name = ? AND lock_key = ? AND token = ? RETURNING lock_name, lock_key)
           SELECT pg_notify(?, json_build_array(lock_name, lock_key, ?::text)::text) FROM released`)
      const params = line
        ? [row.name, row.key, row.token, processTag, channelOf(table), processTag]
        : [row.name, row.key, row.token, channelOf(table), processTag]
      const { rows } = await run.run(sql, params)
      return rows.length > 0
    } catch (error) {
      // A missing line must not stop releases: fall back to notifying everyone from now on.
      // (A missing lock table fails again below, as it should.)
      if (!line || !isUndefinedTable(error)) throw error
      lineGone(knex, table)
      return postgresDialect.release(knex, table, row)
    }
  },

  // The planner turns the row-value IN into one index lookup per element.
  restrictToRows: (query: Knex.QueryBuilder, _table: string, rows: readonly RowIdentity[]) =>
    query.whereRaw('(lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)', [rowsJson(rows)]),

  notifications: {
    line: {
      inNativeAcquire: true,
      async support(knex, table) {
        // The line (migration 3), and its instance_name column (migration 4).
        const result = await knex.raw(
          `SELECT to_regclass(?) IS NOT NULL AS line,
                  EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = 'instance_name' AND NOT attisdropped) AS hand_over`,
          [`"${lineOf(table)}"`, `"${lineOf(table)}"`])
        const found = postgresDialect.rowsOf(result)[0]
        return found?.hand_over === true ? 'hand-over' : found?.line === true ? 'wake' : 'none'
      },
      async join(knex, table, waiter, name, key, expiresInMs, instanceName) {
        // Places of that lock that no longer count are cleared on the way. A place of this store
        // that had lapsed counts as new: it goes to the back of the line.
        const instance = instanceName === undefined ? NO_PLACE_INSTANCE : PLACE_INSTANCE
        const sql = statement(knex, instanceName === undefined ? 'line-join' : 'line-join/hand-over', table, (quote) =>
          `WITH cleared AS (DELETE FROM ${quote(lineOf(table))} w WHERE w.lock_name = ? AND w.lock_key = ? AND w.waiter <> ? AND NOT (${LIVE_PLACE}))
           INSERT INTO ${quote(lineOf(table))} AS w (lock_name, lock_key, waiter, process_tag, since_ts, expires_ts${instance.column})
           VALUES (?, ?, ?, ?, ${postgresDialect.nowSql}, ${postgresDialect.nowSql} + ?${instance.value})
           ON CONFLICT (lock_name, lock_key, waiter) DO UPDATE SET ${RENEW_PLACE}${instance.renew}`)
        const params = [name, key, waiter, name, key, waiter, processTag, expiresInMs, ...(instanceName === undefined ? [] : [instanceName])]
        await executorFor(knex, postgresDialect.rowsOf).run(sql, params)
      },
      async leave(knex, table, waiter, name, key) {
        const sql = statement(knex, 'line-leave', table, (quote) =>
          `DELETE FROM ${quote(lineOf(table))} WHERE lock_name = ? AND lock_key = ? AND waiter = ?`)
        await executorFor(knex, postgresDialect.rowsOf).run(sql, [name, key, waiter])
      },
    },

    async releaseManyAndNotify(knex: Knex, table: string, rows: readonly RowIdentity[]): Promise<void> {
      await knex.raw(
        `WITH released AS (
           DELETE FROM ?? WHERE (lock_name, lock_key, token) IN (SELECT e->>0, e->>1, e->>2 FROM jsonb_array_elements(?::jsonb) AS e)
           RETURNING lock_name, lock_key)
         SELECT pg_notify(?, json_build_array(lock_name, lock_key, ?::text)::text) FROM released`,
        [table, rowsJson(rows), channelOf(table), processTag],
      )
    },

    async notifyReleased(knex: Knex, table: string, name: string, key: string): Promise<void> {
      await knex.raw('SELECT pg_notify(?, ?)', [channelOf(table), JSON.stringify([name, key, processTag])])
    },

    async listen(knex, table, waiter, onRelease, onClosed): Promise<ReleaseSubscription> {
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
      client.on('notification', (message) => {
        if ((message.channel !== channel && message.channel !== ownChannel) || message.payload === undefined) return
        const released: unknown = JSON.parse(message.payload)
        // Releases made by this process have woken its waiters already, one store at a time;
        // hearing them again would send every waiting store to the database at once.
        if (!Array.isArray(released) || released[2] === processTag) return
        const [name, key, , token, fence, renewed] = released as unknown[]
        if (typeof name !== 'string' || typeof key !== 'string') return
        const addressed = message.channel === ownChannel
        // A lock handed over to this store: [name, key, process, token, fence, timestamp written].
        const handed = addressed && typeof token === 'string' && typeof fence === 'string'
          ? { token, fence: toFence(fence), renewedMs: typeof renewed === 'string' ? Number(renewed) : undefined }
          : undefined
        onRelease(name, key, addressed, handed)
      })
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
          // A release that handed this store a lock before its place was left has committed by
          // now (leaving waits for it); its notification reaches the client before the reply to
          // a query sent after it. Only then is the connection closed.
          // (Bounded: a connection that died unnoticed must not hold up close().)
          if (!closed) {
            let timer: NodeJS.Timeout | undefined
            await Promise.race([
              client.query('SELECT 1').catch(() => undefined),
              new Promise((resolve) => { timer = setTimeout(resolve, DRAIN_TIMEOUT_MS).unref() }),
            ])
            clearTimeout(timer)
          }
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

  isUniqueViolation: (error) => errorCode(error) === '23505',
  // 40001 serialization_failure, 40P01 deadlock_detected
  isTransientConflict: (error) => errorCode(error) === '40001' || errorCode(error) === '40P01',
}
