// One demo worker: a separate process that keeps picking one of the jobs at random and runs it
// only if no other worker holds that job's lock. It reports each run as JSON lines on stdout
// for the coordinator (main.mts), which checks them.
//
// Run by main.mts as: node worker.mjs <sqlite file> <worker name>
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { LockStore } from 'worker-locks'
import { JOBS, LOCK_TIMING, now, openDatabase, type WorkerEvent } from './shared.mjs'

const [file, worker] = process.argv.slice(2)
if (!file || !worker) throw new Error('usage: worker.mjs <sqlite file> <worker name>')

const knex = openDatabase(file)
// The instance name is only for the live view; each worker's must be unique (see LockStoreOptions).
const store = new LockStore(knex, { instanceName: worker, ...LOCK_TIMING })

const report = (event: WorkerEvent): void => console.log(JSON.stringify(event))
const between = (min: number, max: number): number => min + Math.random() * (max - min)

// Stopping is polite: the job under way finishes and releases its lock. SIGKILL, which the
// coordinator sends to one worker, allows none of this; the lock's timeout covers that case.
let stopping = false
const input = createInterface({ input: process.stdin })
input.on('line', (line) => { if (line.trim() === 'stop') stopping = true })
input.on('close', () => { stopping = true }) // the coordinator is gone
process.on('SIGTERM', () => { stopping = true })

while (!stopping) {
  const job = JOBS[Math.floor(Math.random() * JOBS.length)] ?? JOBS[0]
  try {
    const result = await store.tryWithLock(job, '', async (lock) => {
      const fence = String(lock.fence)
      report({ type: 'start', job, worker, fence, at: now() })
      // The "work". It listens to the lock's signal as real work should: if renewals find the
      // lock gone, carrying on would mean running beside the worker that now holds it.
      const lost = await sleep(between(300, 900), false, { signal: lock.signal }).catch(() => true)
      report({ type: 'end', job, worker, fence, at: now(), ...(lost ? { lost } : {}) })
    })
    if (result.acquired) continue
  } catch (error) {
    report({ type: 'error', worker, message: error instanceof Error ? error.message : String(error) })
  }
  await sleep(between(100, 300)) // busy (or failed): try again, maybe another job
}

input.close()
await store.close()
await knex.destroy()
