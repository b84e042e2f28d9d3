// How long a statement may take, and how it is stopped when that time is up. A caller never waits
// past its bound: for a connection of knex's pool, or for the server's answer. At the bound the
// statement is cancelled where the driver can (PostgreSQL: the protocol's cancel request, which
// poolers pass on; MySQL/MariaDB: KILL QUERY from a connection of its own) and given a moment to
// end; one that still has not ended (a server that does not answer) has its connection closed.
// SQLite waits for another writer on the calling thread, so there the bound caps the connection's
// busy timeout for the one statement instead.
import { connect } from 'node:net'

/** How long a statement may take at most (`withinMs`, ms), and a signal that stops it sooner. */
export interface Bound {
  readonly withinMs?: number
  readonly signal?: AbortSignal
}

/** A statement stopped at its bound: `waiting` says what it was waiting for. */
export class StatementTimeoutError extends Error {
  constructor(readonly waiting: 'connection' | 'server', readonly afterMs: number, cause?: unknown) {
    super(waiting === 'connection'
      ? `no connection of knex's pool came free within ${afterMs} ms (all in use: by the application's transactions, or too small a pool)`
      : `the statement had no answer within ${afterMs} ms and was cancelled (another session holding a lock it needs, or a server that does not answer)`, { cause })
    this.name = 'StatementTimeoutError'
  }
}

/** Whether `error` (a LockDatabaseError, say) is a statement stopped at its bound rather than failed by the database. */
export const stoppedAtBound = (error: unknown): boolean => (error as { cause?: unknown } | null)?.cause instanceof StatementTimeoutError

/** How long a cancelled statement may take to end before its connection is closed. */
const CANCEL_GRACE_MS = 1_000

/** What the library uses of knex's client (`knex.client`): its pool, raw connections and driver. */
export interface Client {
  driverName?: string
  acquireConnection(): Promise<unknown>
  releaseConnection(connection: unknown): Promise<void>
  acquireRawConnection(): Promise<unknown>
  destroyRawConnection(connection: unknown): Promise<void>
}

/** Resolves when `ms` (real time) pass or `signal` aborts, whichever is first; never rejects. */
function expiry(ms: number, signal: AbortSignal | undefined): { expired: Promise<void>; clear: () => void } {
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  const expired = new Promise<void>((resolve) => {
    if (Number.isFinite(ms)) timer = setTimeout(resolve, Math.max(0, ms)).unref()
    if (signal?.aborted) resolve()
    signal?.addEventListener('abort', (onAbort = () => resolve()), { once: true })
  })
  return { expired, clear: () => { clearTimeout(timer); if (onAbort) signal?.removeEventListener('abort', onAbort) } }
}

const settled = <T>(work: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> =>
  work.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error }))

/**
 * Asks the server to cancel what the connection runs. PostgreSQL: a CancelRequest with the
 * connection's key on a connection of its own (SQL's pg_cancel_backend would need the server's
 * process id, which a pooler does not give out); MySQL: KILL QUERY.
 */
async function cancel(client: Client, connection: unknown): Promise<void> {
  if (client.driverName === 'pg') {
    const c = connection as { host?: string; port?: number; processID?: number; secretKey?: number }
    if (c.processID == null || c.secretKey == null) return
    const packet = Buffer.alloc(16)
    packet.writeInt32BE(16, 0)
    packet.writeInt32BE(80877102, 4)
    packet.writeInt32BE(c.processID, 8)
    packet.writeInt32BE(c.secretKey, 12)
    const socket = c.host?.startsWith('/') ? connect(`${c.host}/.s.PGSQL.${c.port ?? 5432}`) : connect(c.port ?? 5432, c.host ?? 'localhost')
    // Send the key, then let the server hang up first, as libpq does: a pooler may still be
    // relaying the cancel, and PgBouncer 1.18 (Debian 12's) exits on a fatal error when its
    // client hangs up before that is done (pgbouncer/pgbouncer#801).
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => socket.destroy(), CANCEL_GRACE_MS).unref()
      socket.on('error', () => resolve()).on('close', () => { clearTimeout(timer); resolve() })
      socket.resume() // nothing comes back but the end, which must be read to be seen
      socket.write(packet)
    })
  } else if (client.driverName === 'mysql2') {
    const threadId = (connection as { threadId?: number }).threadId
    if (threadId === undefined) return
    const killer = await client.acquireRawConnection() as { query(sql: string, values: unknown[], callback: () => void): void }
    await new Promise<void>((resolve) => killer.query('KILL QUERY ?', [threadId], () => resolve()))
    await client.destroyRawConnection(killer)
  }
}

/** Closes a connection whose statement will not end, so that the pool replaces it. */
function destroy(connection: unknown): void {
  const c = connection as { end?: () => unknown; destroy?: () => unknown; connection?: { stream?: { destroy?: () => unknown } } }
  if (typeof c.destroy === 'function') c.destroy() // mysql2
  else c.connection?.stream?.destroy?.() // pg: the socket, so that the query in flight fails at once
}

/**
 * Runs `use` on a connection of knex's pool (a transaction's own, for a transaction), given back
 * once it has settled, within `limitMs` and `bound`: see this file's first comment. A statement
 * that wins after its bound (its cancel came too late) still resolves: the caller undoes it.
 */
export async function bounded<T>(client: Client, limitMs: number, bound: Bound | undefined, use: (connection: unknown) => Promise<T> | T): Promise<T> {
  const ms = Math.min(limitMs, bound?.withinMs ?? Infinity)
  const started = performance.now()
  const checkout = client.acquireConnection()
  const wait = expiry(ms, bound?.signal)
  const got = await Promise.race([settled(checkout), wait.expired.then(() => undefined)])
  if (got === undefined) {
    wait.clear()
    void checkout.then((connection) => client.releaseConnection(connection), () => undefined)
    throw new StatementTimeoutError('connection', Math.round(performance.now() - started))
  }
  if (!got.ok) {
    wait.clear()
    throw got.error
  }
  const connection = got.value
  // A cancel reaches whatever the connection runs when it arrives: the connection goes back to the
  // pool only once the server has taken the cancel in, or the next statement on it could be hit.
  let cancelling: Promise<void> | undefined
  let closed = false
  try {
    const work = settled(Promise.resolve().then(() => use(connection)))
    let outcome = await Promise.race([work, wait.expired.then(() => undefined)])
    if (outcome === undefined) {
      cancelling = cancel(client, connection).catch(() => undefined)
      const grace = expiry(CANCEL_GRACE_MS, undefined)
      outcome = await Promise.race([work, grace.expired.then(() => undefined)])
      grace.clear()
      if (outcome === undefined) {
        destroy(connection)
        closed = true
        throw new StatementTimeoutError('server', Math.round(performance.now() - started))
      }
      if (!outcome.ok) throw new StatementTimeoutError('server', Math.round(performance.now() - started), outcome.error)
    }
    if (!outcome.ok) throw outcome.error
    return outcome.value
  } finally {
    wait.clear()
    if (cancelling === undefined) await client.releaseConnection(connection)
    else if ((client as { transacting?: boolean }).transacting === true && !closed) {
      // A transaction's connection goes back to the pool when knex ends the transaction, right after
      // this returns, whatever this does: the cancel must have reached the server first (which
      // ignores one that finds the session between statements), or the connection is closed. Else a
      // cancel still on its way would stop the statement of whoever uses the connection next.
      const taken = expiry(CANCEL_GRACE_MS, undefined)
      if (await Promise.race([cancelling.then(() => true), taken.expired.then(() => false)]) === false) destroy(connection)
      taken.clear()
    } else {
      // After a cancel, the caller does not wait for it to be taken in (reaching the server may itself
      // take a while): the connection goes back to the pool then, in the background.
      void cancelling.then(() => client.releaseConnection(connection)).catch(() => undefined)
    }
  }
}

// A statement that a signal may stop (a wait's attempt) waits at most this long for another
// writer on SQLite: the wait cannot be interrupted on the calling thread, and it tries again after
// its backoff anyway.
const SQLITE_SIGNALLED_BUSY_MS = 100

/** The longest a statement may wait for another writer on SQLite: the connection's busy timeout, capped by the bound. */
export function sqliteBusyMs(limitMs: number, bound: Bound | undefined): number {
  return Math.max(1, Math.min(limitMs, bound?.withinMs ?? Infinity, bound?.signal ? SQLITE_SIGNALLED_BUSY_MS : Infinity))
}

