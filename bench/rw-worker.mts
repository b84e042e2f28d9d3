// One of the worker processes of the read/write benchmark (bench/read-write.mts). Connects, says
// "ready", and on "go END" runs the phases of WL_PHASES one after another, in windows of the wall
// clock shared by all workers that end at END: WL_SECONDS of work, then WL_GRACE_MS in which a
// wait still going is cut (aborted), then a pause until the next window. In a phase it loops: picks
// one of the phase's keys and whether this section writes (WL_WRITE_SHARE of them), waits for the
// lock (the read/write lock in that mode, or in a `plain` phase the plain lock of that key
// whatever the mode), holds it for WL_HOLD_MS of busy work, and releases it. Each phase has a lock
// name of its own, so that no phase meets another's leftovers.
//
// Prints one JSON line: per phase, every section with its fence and its times on CLOCK_MONOTONIC
// (process.hrtime: the same clock in every process of the machine, so the parent can lay the
// sections of all workers side by side), the failed statements it saw (deadlocks and
// serialization failures included, which the library retries or counts as refused), its refused
// attempts, the waits that failed or were cut, and its CPU time.
//
// Environment: WL_DATABASE, WL_TABLE, WL_SQLITE_FILE, WL_PHASES (JSON RwPhase[]), WL_SECONDS,
// WL_GRACE_MS, WL_PAUSE_MS, WL_WRITE_SHARE, WL_HOLD_MS.
import { setTimeout as sleep } from 'node:timers/promises'
import Sqlite from 'better-sqlite3'
import mysql from 'mysql2'
import pg from 'pg'
import { pathToFileURL } from 'node:url'
import type { Lock } from '../src/index.js'
import { connect, type Database } from '../test/targets.mjs'
import { waitForGo } from './child.mjs'

/** Read/write locks or plain ones, on how many keys. */
export interface RwPhase { kind: 'read-write' | 'plain'; keys: number }

/** One critical section: key index, 1 for a writer, fence, then ms on CLOCK_MONOTONIC: wait began, held, release began. */
export type Section = [key: number, write: 0 | 1, fence: string, calledAt: number, acquiredAt: number, releasingAt: number]

export interface RwPhaseResult {
  sections: Section[]
  /** CLOCK_MONOTONIC (ms) when the phase's work began and ended: sections held outside do not count. */
  startAt: number
  endAt: number
  /** Failed statements by error code, whether or not the library recovered from them. */
  queryErrors: Record<string, number>
  /** Attempts that found the lock held (the `refused` event). */
  refused: number
  /** Waits and releases that ended in an error, by what failed and the error's name, and a few messages. */
  failures: Record<string, number>
  failureSamples: string[]
  /** The wait cut WL_GRACE_MS after the end, if any: key, 1 for a writer, ms it had waited. */
  cut: [key: number, write: 0 | 1, waitedMs: number] | null
  /** CPU time of this process during the phase, ms. */
  cpuMs: number
}

const monotonicMs = (): number => Number(process.hrtime.bigint()) / 1e6
const env = process.env
const phases = JSON.parse(env.WL_PHASES ?? '[]') as RwPhase[]
const seconds = Number(env.WL_SECONDS ?? 1)
const graceMs = Number(env.WL_GRACE_MS ?? 1000)
const pauseMs = Number(env.WL_PAUSE_MS ?? 200)
const writeShare = Number(env.WL_WRITE_SHARE ?? 0.3)
const holdMs = Number(env.WL_HOLD_MS ?? 0.2)
const knex = connect(env.WL_DATABASE as Database, { poolMax: 2 })
// WL_LIBRARY: another build's dist/src/index.js to take LockStore from (the bench's --before).
const { LockStore } = await import(env.WL_LIBRARY ? pathToFileURL(env.WL_LIBRARY).href : '../src/index.js') as typeof import('../src/index.js')
const store = new LockStore(knex, { tableName: env.WL_TABLE ?? '', lockTimeoutMs: 120_000, renewalIntervalMs: 30_000 })
await store.init()

let current: RwPhaseResult | undefined
countDriverErrors((error) => {
  if (!current) return
  const { code, errno } = (error ?? {}) as { code?: unknown; errno?: unknown }
  const name = String(errno ?? code ?? 'unknown')
  current.queryErrors[name] = (current.queryErrors[name] ?? 0) + 1
})
store.on('refused', () => { if (current) current.refused++ })

/**
 * Calls `count` with the error of every statement that fails in this process, those the library
 * catches and retries or counts as refused included. At the drivers, because the library's
 * prepared statements do not pass through knex's query-error event.
 */
function countDriverErrors(count: (error: unknown) => void): void {
  type Method = (...args: unknown[]) => unknown
  const wrapCallback = (args: unknown[]): void => {
    const callback = args.at(-1)
    if (typeof callback !== 'function') return
    args[args.length - 1] = (error: unknown, ...rest: unknown[]) => {
      if (error) count(error)
      return (callback as Method)(error, ...rest)
    }
  }
  const patch = (prototype: object, name: string, wrap: (original: Method) => Method): void => {
    const target = prototype as Record<string, Method>
    target[name] = wrap(target[name]!)
  }
  // pg and mysql2: a callback, or (pg) a promise. (mysql2's command objects have a `then` that throws.)
  const asynchronous = (original: Method): Method => function (this: unknown, ...args: unknown[]) {
    wrapCallback(args)
    const result = original.apply(this, args)
    if (result instanceof Promise) result.then(undefined, count)
    return result
  }
  patch(pg.Client.prototype, 'query', asynchronous)
  patch(mysql.Connection.prototype, 'query', asynchronous)
  patch(mysql.Connection.prototype, 'execute', asynchronous)
  // better-sqlite3: preparing and running statements throw.
  const synchronous = (original: Method): Method => function (this: unknown, ...args: unknown[]) {
    try {
      return original.apply(this, args)
    } catch (error) {
      count(error)
      throw error
    }
  }
  const memory = new Sqlite(':memory:')
  const statementPrototype = Object.getPrototypeOf(memory.prepare('SELECT 1')) as object
  memory.close()
  for (const name of ['run', 'all', 'get']) patch(statementPrototype, name, synchronous)
  for (const name of ['prepare', 'exec']) patch(Sqlite.prototype, name, synchronous)
}

function failed(result: RwPhaseResult, what: string, error: unknown): void {
  const name = `${what}: ${error instanceof Error ? error.name : 'unknown'}`
  result.failures[name] = (result.failures[name] ?? 0) + 1
  if (result.failureSamples.length < 3) result.failureSamples.push(`${what}: ${String(error)}`)
}

async function runPhase(phase: RwPhase, name: string, result: RwPhaseResult): Promise<void> {
  const stop = new AbortController()
  const cutting = setTimeout(() => { stop.abort() }, result.endAt + graceMs - monotonicMs())
  while (monotonicMs() < result.endAt) {
    const key = Math.floor(Math.random() * phase.keys)
    const write = Math.random() < writeShare
    const calledAt = monotonicMs()
    let lock: Lock
    try {
      const wait = { timeoutMs: 60_000, signal: stop.signal }
      lock = phase.kind === 'plain'
        ? await store.acquireLock(name, `k${key}`, wait)
        : await store.acquireReadWriteLock(name, `k${key}`, { ...wait, write })
    } catch (error) {
      if (stop.signal.aborted) {
        result.cut = [key, write ? 1 : 0, monotonicMs() - calledAt]
        break
      }
      failed(result, 'acquire', error)
      continue
    }
    const acquiredAt = monotonicMs()
    while (monotonicMs() - acquiredAt < holdMs) { /* the critical section's work */ }
    const releasingAt = monotonicMs()
    try {
      await lock.release()
    } catch (error) {
      failed(result, 'release', error)
    }
    result.sections.push([key, write ? 1 : 0, String(lock.fence), calledAt, acquiredAt, releasingAt])
  }
  clearTimeout(cutting)
}

const end = await waitForGo()
const slotMs = seconds * 1000 + graceMs + pauseMs
const firstAt = monotonicMs() + (end - (performance.timeOrigin + performance.now())) - phases.length * slotMs
const results: RwPhaseResult[] = []
for (const [i, phase] of phases.entries()) {
  const startAt = firstAt + i * slotMs
  await sleep(Math.max(0, startAt - monotonicMs()))
  const cpuAtStart = process.cpuUsage()
  const result: RwPhaseResult = { sections: [], startAt, endAt: startAt + seconds * 1000, queryErrors: {}, refused: 0, failures: {}, failureSamples: [], cut: null, cpuMs: 0 }
  current = result
  await runPhase(phase, `rw-bench-${i}`, result)
  current = undefined
  const cpu = process.cpuUsage(cpuAtStart)
  result.cpuMs = (cpu.user + cpu.system) / 1000
  results.push(result)
}
await store.close()
await knex.destroy()
console.log(JSON.stringify(results))
