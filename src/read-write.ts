// Read/write locks and multi-locks of one store: one attempt (all parts or none, in one
// transaction, see dialects/read-write.ts), the waits for them, a waiting writer's intent, and
// waking this process's waiters when a holder releases. Their Locks are held, renewed and
// released by the same machinery as plain locks (held-locks.ts, releasing.ts).
import { randomUUID } from 'node:crypto'
import { acquireReadWrite, claimIntent, dropIntent, type ReadWritePart } from '../dialects/index.js'
import { LockStoreClosedError } from './errors.js'
import { describeLock, type HeldLock } from './held-locks.js'
import { Lock, type LockOwner } from './lock.js'
import { MultiLock } from './multi-lock.js'
import type { ResolvedPart } from './read-write-options.js'
import { announceReleaseToAll, waitForLocalRelease } from './release-bus.js'
import { databaseCall, readWriteKeyId, type LockRef, type ServerPlan, type StoreContext } from './store-context.js'
import { WaitRoom, type WaitRoomOptions } from './wait-room.js'

/** What the read/write locks need besides the store's context. */
export interface ReadWriteParts {
  readonly owner: LockOwner
  readonly plan: () => ServerPlan | Promise<ServerPlan>
  readonly room: Pick<WaitRoomOptions<MultiLock>, 'timers' | 'monotonicNow' | 'backoff' | 'slowWaitWarningMs' | 'log' | 'occupied'>
  /** How long a waiting writer's intent lasts after its last attempt. */
  readonly intentMs: number
}

/** A wait for read/write locks: its parts, and the intent token of a writer that blocks new readers. */
interface PartsWait extends LockRef {
  readonly parts: readonly ResolvedPart[]
  readonly intent: string | undefined
  /** Once the wait ended without the lock: the withdrawal of its intent, which never rejects. */
  withdrawn?: Promise<void>
}

/** How messages name a multi-lock: its parts. */
const describeParts = (parts: readonly ResolvedPart[]): string => parts.map((p) => `${describeLock(p.name, p.key)} (${p.write ? 'write' : 'read'})`).join(', ')

export class ReadWriteLocks {
  readonly #ctx: StoreContext
  readonly #parts: ReadWriteParts
  readonly #room: WaitRoom<MultiLock>
  // Per wait queue, the functions that stop listening for its keys' releases.
  readonly #listening = new Map<string, Array<() => void>>()
  // Per key (readWriteKeyId), the wait queues of this store that want it.
  readonly #queuesOf = new Map<string, Set<string>>()
  // Withdrawals of intents under way, which stopAll() waits for.
  readonly #withdrawing = new Set<Promise<void>>()

  constructor(ctx: StoreContext, parts: ReadWriteParts) {
    this.#ctx = ctx
    this.#parts = parts
    this.#room = new WaitRoom<MultiLock>({
      ...parts.room,
      attempt: (wait, _alone, _first) => this.#attemptWaiting(wait as PartsWait),
      waitingStarted: (wait) => this.#listen(wait as PartsWait),
      waitingEnded: (wait) => this.#stopListening(wait),
      ended: (wait, waitedMs, outcome) => {
        if (outcome !== 'acquired') (wait as PartsWait).withdrawn = this.#withdraw(wait as PartsWait)
        ctx.events.emit('waited', { name: wait.name, key: wait.key, waitedMs, outcome })
      },
    })
  }

  /** One attempt for every part, all or none; the MultiLock, or `null` if any part is held in a conflicting mode. */
  attempt(parts: readonly ResolvedPart[]): Promise<MultiLock | null> {
    return this.#attempt(parts, undefined)
  }

  /** Waits until every part is held at once (see `LockStore#acquireMultiLock`). */
  wait(parts: readonly ResolvedPart[], blockNewReaders: boolean, timeoutMs: number, signal: AbortSignal | undefined): Promise<MultiLock> {
    const sorted = [...parts].sort(comparePart)
    const wait: PartsWait = {
      id: sorted.map((p) => readWriteKeyId(p.name, p.key)).join('\0\0'),
      name: parts.length === 1 ? parts[0]!.name : describeParts(parts),
      key: parts.length === 1 ? parts[0]!.key : '',
      parts,
      intent: blockNewReaders && parts.some((p) => p.write) ? randomUUID() : undefined,
    }
    // A wait that ended without the lock settles once its intent is withdrawn, so that a reader
    // asking right after (the caller, say) is not refused for an intent that is on its way out.
    return this.#room.wait(wait, timeoutMs, signal).catch(async (error: unknown) => {
      await wait.withdrawn
      throw error
    })
  }

  /** Ends every wait with `reason`; resolves once they have ended and withdrawn their intents. */
  async stopAll(reason: unknown): Promise<void> {
    await this.#room.stopAll(reason)
    await Promise.all(this.#withdrawing)
  }

  /** A holder's row of `(name, key)` is gone (released or forced out): this process's waiters for that key try again. */
  released(name: string, key: string): void {
    announceReleaseToAll(this.#ctx.tableName, readWriteKeyId(name, key))
  }

  async #attempt(parts: readonly ResolvedPart[], intent: string | undefined): Promise<MultiLock | null> {
    const ctx = this.#ctx
    await this.#parts.plan() // the server's settings are checked once, as for plain locks
    // Every acquirer locks key rows in the same (sorted) order, so multi-locks cannot deadlock.
    const request = [...parts].sort(comparePart).map((p): ReadWritePart => ({ ...p, token: randomUUID() }))
    const sentAt = ctx.monotonicNow()
    const fences = await databaseCall(ctx, () => `acquire ${describeParts(parts)}`, () => acquireReadWrite(ctx.knex, ctx.dialect, {
      table: ctx.tableName, parts: request, instanceName: ctx.instanceName, nowMs: ctx.nowMs(), leaseMs: ctx.lockTimeoutMs, intent,
    }))
    const first = parts[0]!
    if (fences === null) {
      ctx.events.emit('refused', { name: first.name, key: first.key, durationMs: ctx.monotonicNow() - sentAt })
      return null
    }
    return this.#won(parts, request, fences, sentAt)
  }

  /** Takes on the rows just written, unless too late to trust or the store is closing. */
  async #won(parts: readonly ResolvedPart[], request: readonly ReadWritePart[], fences: readonly bigint[], sentAt: number): Promise<MultiLock | null> {
    const ctx = this.#ctx
    const records = request.map((part, i): HeldLock => ({
      id: `${readWriteKeyId(part.name, part.key)}\0${part.token}`, mode: part.write ? 'write' : 'read', name: part.name, key: part.key, token: part.token,
      fence: fences[i]!, controller: undefined, loss: undefined, state: 'held',
      ref: undefined as unknown as WeakRef<Lock>, releasing: undefined, renewedAt: sentAt, acquiredAt: sentAt, handOvers: 0,
    }))
    const durationMs = ctx.monotonicNow() - sentAt
    if (durationMs >= ctx.lockTimeoutMs || ctx.isClosed()) {
      await databaseCall(ctx, 'give up read/write locks just won', () => ctx.holders.releaseMany(records)).catch((error: unknown) => {
        ctx.log('warn', { err: error }, `worker-locks: could not release ${describeParts(parts)} just won; they expire after ${ctx.lockTimeoutMs} ms.`)
      })
      if (ctx.isClosed()) throw new LockStoreClosedError()
      ctx.log('warn', {}, `worker-locks: acquiring ${describeParts(parts)} took longer than lockTimeoutMs; it was given up.`)
      return null
    }
    const byId = new Map<string, Lock>()
    for (const record of records) {
      const lock = new Lock(this.#parts.owner, record)
      ;(record as { ref: WeakRef<Lock> }).ref = new WeakRef(lock)
      ctx.held.add(record, lock)
      byId.set(`${record.name}\0${record.key}`, lock)
      ctx.events.emit('acquired', { name: record.name, key: record.key, fence: record.fence, durationMs })
    }
    return new MultiLock(parts.map((p) => byId.get(`${p.name}\0${p.key}`)!))
  }

  // A waiting writer that is refused claims its keys, so that new readers stay out until it is in.
  async #attemptWaiting(wait: PartsWait): Promise<MultiLock | null> {
    const won = await this.#attempt(wait.parts, wait.intent)
    const intent = wait.intent
    if (won || intent === undefined) return won
    const ctx = this.#ctx
    for (const part of wait.parts.filter((p) => p.write)) {
      await databaseCall(ctx, () => `mark that a writer waits for ${describeLock(part.name, part.key)}`,
        () => claimIntent(ctx.knex, ctx.dialect, ctx.tableName, part.name, part.key, intent, this.#parts.intentMs, ctx.nowMs()))
    }
    return null
  }

  // A writer that gave up withdraws its claim at once rather than leaving readers out until it lapses.
  #withdraw(wait: PartsWait): Promise<void> | undefined {
    const intent = wait.intent
    if (intent === undefined) return undefined
    const ctx = this.#ctx
    const parts = wait.parts.filter((p) => p.write)
    const withdrawing = Promise.all(parts.map((p) => dropIntent(ctx.knex, ctx.dialect, ctx.tableName, p.name, p.key, intent))).then(() => undefined, (error: unknown) => {
      ctx.log('warn', { err: error }, `worker-locks: could not withdraw a waiting writer's claim on ${describeParts(parts)}; it lapses after ${this.#parts.intentMs} ms.`)
    })
    this.#withdrawing.add(withdrawing)
    void withdrawing.then(() => this.#withdrawing.delete(withdrawing))
    ctx.track(withdrawing)
    return withdrawing
  }

  /** Wakes this store's waits for the key `keyId` (a `readWriteKeyId`), as a release heard from another process does; whether any waits. */
  wake(keyId: string): boolean {
    const queues = this.#queuesOf.get(keyId)
    for (const id of queues ?? []) this.#room.wake(id)
    return queues !== undefined
  }

  #listen(wait: PartsWait): void {
    const wake = { wake: () => { this.#room.wake(wait.id) } }
    this.#listening.set(wait.id, wait.parts.map((p) => {
      const keyId = readWriteKeyId(p.name, p.key)
      let queues = this.#queuesOf.get(keyId)
      if (!queues) this.#queuesOf.set(keyId, (queues = new Set()))
      queues.add(wait.id)
      return waitForLocalRelease(this.#ctx.tableName, keyId, wake)
    }))
  }

  #stopListening(wait: LockRef): void {
    for (const stop of this.#listening.get(wait.id) ?? []) stop()
    this.#listening.delete(wait.id)
    for (const part of (wait as PartsWait).parts) {
      const keyId = readWriteKeyId(part.name, part.key)
      const queues = this.#queuesOf.get(keyId)
      if (queues?.delete(wait.id) && queues.size === 0) this.#queuesOf.delete(keyId)
    }
  }
}

function comparePart(a: ResolvedPart, b: ResolvedPart): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0
}
