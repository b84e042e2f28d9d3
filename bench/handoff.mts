// Hand-off latency: from the moment a holder starts release() to the moment a waiter's
// acquireLock() resolves, in one process and across processes, per database, next to the
// database's round trip (SELECT 1, on a busy connection and after as long idle as the waiter
// slept) so the figure reads as "round trips".
//
// Run: npm run bench:handoff [-- ROUNDS]   (DIALECTS=… picks databases)
import { performance } from 'node:perf_hooks'
import { LockStore, createLockTable, dropLockTable } from '../src/index.js'
import { connect, resolveMatrix, uniqueName, type Database } from '../test/targets.mjs'
import { startWorker } from '../test/worker-process.mjs'

const ROUNDS = Number(process.argv[2] ?? 30)
const wallNow = (): number => performance.timeOrigin + performance.now()

function summary(samples: number[]): { p50: number; p99: number } {
  const sorted = [...samples].sort((a, b) => a - b)
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
  return { p50: at(0.5), p99: at(0.99) }
}

async function measure(database: Database): Promise<string[]> {
  const knex = connect(database, { poolMax: 4 })
  const tableName = uniqueName('wl_handoff')
  await createLockTable(knex, { tableName })
  try {
    // A round trip on a busy connection, and one on a connection that was idle as long as the
    // hand-off's waiter sleeps: waking an idle server backend (and this process) costs more than
    // the round trip itself on this machine, and every hand-off begins from idle.
    const roundTrips = async (idleMs: number): Promise<number[]> => {
      const times: number[] = []
      for (let i = 0; i < ROUNDS; i++) {
        if (idleMs > 0) await new Promise((resolve) => setTimeout(resolve, idleMs))
        const start = performance.now()
        await knex.raw('SELECT 1')
        times.push(performance.now() - start)
      }
      return times
    }
    const rtt = await roundTrips(0)
    const idleRtt = await roundTrips(20)
    const longIdleRtt = await roundTrips(300)

    const holder = new LockStore(knex, { tableName, strategy: 'native' })
    const waiterKnex = connect(database, { poolMax: 4 })
    const waiter = new LockStore(waiterKnex, { tableName, strategy: 'native' })
    const local: number[] = []
    for (let i = 0; i < ROUNDS; i++) {
      const lock = await holder.acquireLock('handoff')
      const waiting = waiter.acquireLock('handoff')
      await new Promise((resolve) => setTimeout(resolve, 20)) // let the waiter fall asleep
      const start = performance.now()
      await lock.release()
      const next = await waiting
      local.push(performance.now() - start)
      await next.release()
    }

    const remote: number[] = []
    const h = { target: { id: `${database}/native`, database, strategy: 'native' as const }, tableName }
    for (let i = 0; i < Math.min(ROUNDS, 10); i++) {
      // A warm worker, as a long-running service is: its statements prepared, its code compiled.
      const worker = await startWorker(h as never, 'handoff-remote', { WL_WARMUP: '200' })
      const waiting = waiter.acquireLock('handoff-remote')
      await new Promise((resolve) => setTimeout(resolve, 300)) // the waiter is asleep, its listener up
      worker.child.stdin?.write('release\n')
      const lock = await waiting
      const acquiredAt = wallNow()
      worker.child.stdin?.end()
      const exit = await worker.exited
      const releasedAt = Number(/releasing at ([\d.]+)/.exec(exit.stdout)?.[1])
      remote.push(acquiredAt - releasedAt)
      await lock.release()
    }
    await holder.close()
    await waiter.close()
    await waiterKnex.destroy()
    const r = summary(rtt).p50
    const l = summary(local)
    const x = summary(remote)
    const row = (waiter: string, s: { p50: number; p99: number }, idle: number): string =>
      `| ${database} | ${waiter} | ${s.p50.toFixed(2)} | ${s.p99.toFixed(2)} | ${r.toFixed(2)} | ${(s.p50 / r).toFixed(1)} | ${idle.toFixed(2)} | ${(s.p50 / idle).toFixed(1)} |`
    return [row('in process', l, summary(idleRtt).p50), row('across processes', x, summary(longIdleRtt).p50)]
  } finally {
    await dropLockTable(knex, { tableName })
    await knex.destroy()
  }
}

const { targets, missing } = await resolveMatrix()
for (const m of missing) console.error(`skipped ${m.database}: ${m.reason}`)
const rows: string[] = []
for (const database of new Set(targets.map((t) => t.database))) rows.push(...await measure(database))
console.log(`Hand-off latency, release() start → next holder's acquireLock() resolves (Node ${process.version})\n`)
console.log('| database | waiter | p50 ms | p99 ms | busy round trip ms | p50 in busy round trips | round trip after the same idle ms | p50 in those round trips |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- |')
for (const row of rows) console.log(row)
