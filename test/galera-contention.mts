// Stores in this process contending for a few locks, and a referee that watches every grant:
// since all holders live here, two holders of one lock at once are seen exactly (no clocks to
// compare), fences are checked in the order grants arrive, and every call is timed against its
// deadline. The Galera tests run it with stores on different nodes of one cluster.
import { performance } from 'node:perf_hooks'
import { LockError, LockTimeoutError, type Lock, type LockStore, type Logger } from '../src/index.js'
import { sleep } from './topology-helpers.mjs'

/** A call settled this long after its deadline (or not at all) counts as hung. */
export const HANG_MS = 5_000

/** A store and the node its knex connects to (1-based). */
export interface Member {
  readonly label: string
  readonly node: number
  readonly store: LockStore
}

/** Tells apart errors by their chain of causes: `LockDatabaseError←ER_LOCK_DEADLOCK`, say. */
export function errorKind(error: unknown): string {
  const links: string[] = []
  for (let e: unknown = error, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    const { code, name } = e as { code?: unknown; name?: unknown }
    links.push(e instanceof LockError || typeof code !== 'string' ? String(name ?? typeof e) : code)
    e = (e as { cause?: unknown }).cause
  }
  return links.join('←')
}

/**
 * Whether MariaDB failed `error` because its cached triggers of the table broke: "Unknown trigger
 * has an error in its body: 'Query was empty'". Seen on Galera 10.11 once a statement was killed
 * (a brute-force abort by a replicated write, a cancel, a dropped connection) while the node was
 * loading the table's triggers; from then on that node fails every statement on the table. A
 * server defect, counted apart: the library reports it as the LockDatabaseError it is.
 */
export function isServerTriggerFault(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; typeof e === 'object' && e !== null && depth < 4; depth++) {
    if (/Unknown trigger has an error in its body/.test(String((e as { sqlMessage?: unknown }).sqlMessage ?? ''))) return true
    e = (e as { cause?: unknown }).cause
  }
  return false
}

/**
 * Whether a deadlock or a failed certification (MySQL error 1213) is among `error`'s causes. Not
 * below a statement the library cancelled at its bound: on Galera a killed statement says 1213 too.
 */
export function isDeadlock(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; typeof e === 'object' && e !== null && depth < 4; depth++) {
    const { errno, code, name } = e as { errno?: unknown; code?: unknown; name?: unknown }
    if (name === 'StatementTimeoutError') return false
    if (errno === 1213 || code === 'ER_LOCK_DEADLOCK') return true
    e = (e as { cause?: unknown }).cause
  }
  return false
}

/** Adds one to `key` of `counts`. */
export const bump = (counts: Map<string, number>, key: string): void => { counts.set(key, (counts.get(key) ?? 0) + 1) }

/**
 * A logger that counts what the stores log at warn and error level, by error kind; and apart,
 * conflicts (error 1213) that failed an attempt of a wait (which the wait counts as a refusal,
 * so only the log tells) or a renewal, retries included.
 */
export class CountingLogger implements Logger {
  readonly counts = new Map<string, number>()
  attemptDeadlocks = 0
  renewalDeadlocks = 0
  debug(): void {}
  info(): void {}
  warn(details: object, message: string): void { this.#count('warn', details, message) }
  error(details: object, message: string): void { this.#count('error', details, message) }
  #count(level: string, details: object, message: string): void {
    const err = (details as { err?: unknown }).err
    if (isDeadlock(err)) {
      if (/renewing/.test(message)) this.renewalDeadlocks++
      else this.attemptDeadlocks++
    }
    bump(this.counts, `${level} ${err === undefined ? 'message' : errorKind(err)}`)
  }
}

interface Holding { readonly member: Member; readonly lock: Lock }

/** What the referee saw. Times are `performance.now()` values. */
export class Referee {
  readonly overlaps: string[] = []
  readonly fenceFaults: string[] = []
  readonly hangs: string[] = []
  readonly grants: Array<{ at: number; node: number; name: string }> = []
  /** Errors other than timeouts, by `node N op kind`. */
  readonly errors = new Map<string, number>()
  /** Calls failed by the server's broken triggers (see isServerTriggerFault), by node and call. */
  readonly serverFaults = new Map<string, number>()
  /** Errors that are not the library's own (LockError), or that carry a conflict (error 1213). */
  readonly untyped: string[] = []
  /** Timeouts, by `node N cause kind`. */
  readonly timeouts = new Map<string, number>()
  refusals = 0
  calls = 0
  maxLatenessMs = -Infinity
  readonly #holders = new Map<string, Holding>()
  readonly #lastFence = new Map<string, bigint>()
  readonly #pending = new Set<{ what: string; deadline: number }>()

  /** Records a grant: an overlap if a holder that does not know it lost the lock is still set. */
  granted(member: Member, lock: Lock): void {
    const id = `${lock.name}/${lock.key}`
    const current = this.#holders.get(id)
    if (current && !current.lock.lost) {
      this.overlaps.push(`${id}: ${member.label} (node ${member.node}) got fence ${lock.fence} while ${current.member.label} (node ${current.member.node}) held fence ${current.lock.fence}`)
    }
    this.#holders.set(id, { member, lock })
    const last = this.#lastFence.get(id)
    if (last !== undefined && lock.fence <= last) this.fenceFaults.push(`${id}: fence ${lock.fence} granted to ${member.label} after fence ${last}`)
    this.#lastFence.set(id, lock.fence)
    this.grants.push({ at: performance.now(), node: member.node, name: lock.name })
  }

  /** Clears `lock` as its lock's holder; call it just before releasing. */
  releasing(lock: Lock): void {
    const id = `${lock.name}/${lock.key}`
    if (this.#holders.get(id)?.lock === lock) this.#holders.delete(id)
  }

  /** Runs `call` (which must settle by `deadline`) and records how late it settled; rethrows its error. */
  async timed<T>(what: string, deadline: number, call: () => Promise<T>): Promise<T> {
    const entry = { what, deadline }
    this.#pending.add(entry)
    this.calls++
    try {
      return await call()
    } finally {
      this.#pending.delete(entry)
      const lateness = performance.now() - deadline
      this.maxLatenessMs = Math.max(this.maxLatenessMs, lateness)
      if (lateness > HANG_MS) this.hangs.push(`${what} settled ${Math.round(lateness)} ms after its deadline`)
    }
  }

  /** Records an error of `member`'s `op`: a timeout by its cause, anything else by kind. */
  failed(member: Member, op: string, error: unknown): void {
    if (isServerTriggerFault(error)) bump(this.serverFaults, `node ${member.node} ${op}`)
    else if (error instanceof LockTimeoutError) bump(this.timeouts, `node ${member.node} ${error.cause === undefined ? 'busy' : errorKind(error.cause)}`)
    else bump(this.errors, `node ${member.node} ${op} ${errorKind(error)}`)
    if (!(error instanceof LockError) || isDeadlock(error)) this.untyped.push(`${member.label} ${op}: ${errorKind(error)}: ${String(error)}`)
  }

  /** Grants on `node` at or after `since`. */
  grantsSince(since: number, node?: number): number {
    return this.grants.filter((g) => g.at >= since && (node === undefined || g.node === node)).length
  }

  /** Records as hung every timed call still pending `HANG_MS` past its deadline. */
  recordHung(): void {
    const now = performance.now()
    for (const p of this.#pending) {
      if (now - p.deadline > HANG_MS) this.hangs.push(`${p.what} never settled (${Math.round(now - p.deadline)} ms past its deadline)`)
    }
  }
}

export interface ContentionOptions {
  /** The locks contended for (key ''). */
  readonly names: readonly string[]
  /** Each acquireLock's timeoutMs. */
  readonly timeoutMs: number
  /** How long each grant is held. */
  readonly holdMs: number
  /** Every n-th call is a tryAcquireLock instead. */
  readonly tryEvery: number
  /** The stores' statementTimeoutMs: the deadline of a try and of a release. */
  readonly statementTimeoutMs: number
}

/** Each member loops (acquire or try, hold, release) until `stop()`; the referee sees everything. */
export class Contention {
  readonly referee: Referee
  readonly #o: ContentionOptions
  #stopped = false
  readonly #loops: Promise<void>[]

  constructor(members: readonly Member[], referee: Referee, options: ContentionOptions) {
    this.referee = referee
    this.#o = options
    this.#loops = members.map((member, index) => this.#loop(member, index))
  }

  /** Ends the loops after their current iteration; resolves once they have (or records what hangs). */
  async stop(): Promise<void> {
    this.#stopped = true
    const { timeoutMs, holdMs, statementTimeoutMs } = this.#o
    // The longest an iteration may take: a wait or a try, the hold, a release.
    const bound = Math.max(timeoutMs, statementTimeoutMs) + holdMs + statementTimeoutMs + HANG_MS
    const ended = await Promise.race([Promise.all(this.#loops).then(() => true), sleep(bound).then(() => false)])
    if (!ended) {
      this.referee.recordHung()
      if (this.referee.hangs.length === 0) this.referee.hangs.push(`the loops did not end within ${bound} ms of being stopped`)
    }
  }

  async #loop(member: Member, index: number): Promise<void> {
    const { names, timeoutMs, holdMs, tryEvery, statementTimeoutMs } = this.#o
    const referee = this.referee
    for (let n = 1; !this.#stopped; n++) {
      const name = names[(index + n) % names.length]!
      const trying = n % tryEvery === 0
      const started = performance.now()
      let lock: Lock | null = null
      try {
        lock = trying
          ? await referee.timed(`${member.label} tryAcquireLock(${name})`, started + statementTimeoutMs, () => member.store.tryAcquireLock(name))
          : await referee.timed(`${member.label} acquireLock(${name})`, started + timeoutMs, () => member.store.acquireLock(name, { timeoutMs }))
        if (lock === null) referee.refusals++
      } catch (error) {
        referee.failed(member, trying ? 'try' : 'acquire', error)
        // A database that answers every call at once with an error must not make this a busy loop.
        if (!(error instanceof LockTimeoutError)) await sleep(50)
        continue
      }
      if (lock === null) continue
      referee.granted(member, lock)
      await sleep(holdMs)
      referee.releasing(lock)
      const releasing = performance.now()
      await referee.timed(`${member.label} release(${name})`, releasing + statementTimeoutMs, () => lock.release())
        .catch((error: unknown) => referee.failed(member, 'release', error))
    }
  }
}
