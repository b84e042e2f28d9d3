// Builds the parts of one LockStore and wires them together: the shared context, the attempt,
// the releasing, the waiters and how they hear of releases. The facade keeps what it returns.
import { performance } from 'node:perf_hooks'
import type { Knex } from 'knex'
import { readWriteTables, type Dialect } from '../dialects/index.js'
import { Acquisition } from './acquisition.js'
import { systemClock } from './clock.js'
import { coordinationFor } from './coordination/index.js'
import { LockEvents } from './events.js'
import { HeldLocks, type HeldLock } from './held-locks.js'
import { LockTable } from './lock-table.js'
import { logTo, type LogLevel } from './logger.js'
import { ReadWriteLocks } from './read-write.js'
import { Releasing } from './releasing.js'
import { readWriteKeyId, type ServerPlan, type StoreContext } from './store-context.js'
import type { ResolvedOptions } from './validate.js'
import { WaitRoom } from './wait-room.js'

// Every read/write key id starts so (see readWriteKeyId); no plain lock id does.
const READ_WRITE_PREFIX = readWriteKeyId('', '').slice(0, 4)

/** What the parts need from the facade. */
export interface FacadeHooks {
  /** The server plan, asked of the server on first use. */
  readonly plan: () => ServerPlan | Promise<ServerPlan>
  /** The server plan if it has been asked for already. */
  readonly planned: () => ServerPlan | undefined
  readonly track: (work: Promise<unknown>) => void
  readonly isClosed: () => boolean
  readonly isStillValid: (record: HeldLock) => Promise<boolean>
}

export interface StoreParts {
  readonly ctx: StoreContext
  readonly acquisition: Acquisition
  readonly releasing: Releasing
  readonly waiting: WaitRoom
  readonly readWrite: ReadWriteLocks
}

export function assembleStore(knex: Knex, dialect: Dialect, o: ResolvedOptions, instanceName: string, hooks: FacadeHooks): StoreParts {
  const clock = o.clock
  const timers = typeof clock === 'object' ? clock : systemClock
  // Deadlines need a clock that never jumps; a test Clock is trusted to be one.
  const monotonicNow = typeof clock === 'object' ? () => clock.now() : () => performance.now()
  const nowMs = clock === 'database' ? () => null : clock === 'local' ? () => Date.now() : () => clock.now()
  const log = (level: LogLevel, details: object, message: string): void => logTo(o.logger, level, details, message)
  const events = new LockEvents((error) => log('error', { err: error }, 'worker-locks: an event listener threw; the lock work went on.'))
  // A renewal slower than the interval is as good as failed; give it at least a second.
  const renewalTimeoutMs = Math.max(1_000, o.renewalIntervalMs)
  const table = new LockTable(knex, dialect, o.tableName, renewalTimeoutMs, { durableReleases: o.durableReleases })
  const holders = new LockTable(knex, dialect, readWriteTables(o.tableName).holders, renewalTimeoutMs, { holdersOf: o.tableName, durableReleases: o.durableReleases })
  const held = new HeldLocks({ table, holders, timers, monotonicNow, nowMs, lockTimeoutMs: o.lockTimeoutMs, renewalIntervalMs: o.renewalIntervalMs, log, events })
  let waiting!: WaitRoom
  let readWrite!: ReadWriteLocks
  const coordination = coordinationFor({
    knex, dialect, tableName: o.tableName, timers, monotonicNow, maxBackoffMs: o.backoff.maxDelayMs, log,
    wake: (id) => (id.startsWith(READ_WRITE_PREFIX) ? readWrite.wake(id) : waiting.wake(id)),
  })
  // The coordination listens while either kind of wait is under way.
  const busy = { plain: false, readWrite: false }
  const occupied = (kind: keyof typeof busy, now: boolean): void => {
    const before = busy.plain || busy.readWrite
    busy[kind] = now
    if (before !== (busy.plain || busy.readWrite)) coordination.occupied(!before)
  }
  const ctx: StoreContext = {
    knex, dialect, table, holders, tableName: o.tableName, instanceName, lockTimeoutMs: o.lockTimeoutMs,
    held, events, coordination, nowMs, monotonicNow, log, track: hooks.track, isClosed: hooks.isClosed,
  }
  const owner = { release: (state: object, keepForMs: number) => releasing.release(state as HeldLock, keepForMs), isStillValid: (state: object) => hooks.isStillValid(state as HeldLock) }
  const acquisition: Acquisition = new Acquisition(ctx, { plan: hooks.plan, owner, giveUp: (lock, row) => releasing.giveUp(lock, row), waiting: () => waiting })
  const releasing: Releasing = new Releasing(ctx, () => acquisition, () => hooks.planned()?.facts)
  waiting = new WaitRoom({
    timers, monotonicNow, backoff: o.backoff, slowWaitWarningMs: o.slowWaitWarningMs, log,
    attempt: (lock, alone, first) => acquisition.attempt(lock, { alone, first }),
    ended: (lock, waitedMs, outcome) => {
      coordination.waitEnded(lock, outcome === 'acquired')
      events.emit('waited', { name: lock.name, key: lock.key, waitedMs, outcome })
    },
    occupied: (now) => occupied('plain', now),
    waitingStarted: (lock) => coordination.waitingStarted(lock),
    waitingEnded: (lock) => coordination.waitingEnded(lock),
  })
  const room = { timers, monotonicNow, backoff: o.backoff, slowWaitWarningMs: o.slowWaitWarningMs, log, occupied: (now: boolean) => occupied('readWrite', now) }
  // A waiting writer's claim outlives the pause between its attempts (at most maxDelayMs) twice over.
  readWrite = new ReadWriteLocks(ctx, { owner, plan: hooks.plan, room, intentMs: 2 * o.backoff.maxDelayMs + 1_000 })
  return { ctx, acquisition, releasing, waiting, readWrite }
}
