// Fencing tokens in action: a worker that stalls past its lock's timeout loses the lock to
// another worker, wakes up still believing it holds it, and tries to write. The resource
// refuses the write because it carries a lower fence than one it has already seen.
//
// Run: npm run example:fencing   (SQLite in a temporary file; nothing to set up)
import { rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import knexFactory from 'knex'
import { LockStore, ManualClock, createLockTable } from 'worker-locks'

/** The protected resource. It keeps the highest fence it has seen and refuses anything lower. */
class FencedDocument {
  #highestFence = 0n
  #content = ''

  write(fence: bigint, content: string): void {
    if (fence < this.#highestFence) {
      throw new Error(`refused: fence ${fence} is older than ${this.#highestFence}`)
    }
    this.#highestFence = fence
    this.#content = content
  }

  get content(): string {
    return this.#content
  }
}

const file = join(tmpdir(), `worker-locks-fencing-${process.pid}.sqlite`)
const knex = knexFactory({ client: 'better-sqlite3', connection: { filename: file }, useNullAsDefault: true })
await createLockTable(knex)
const doc = new FencedDocument()

// Worker A's clock never moves, so its renewals never run: it stands for a process whose event
// loop is stuck (a long GC pause, a blocking call) for longer than the lock's timeout.
const stalledClock = new ManualClock(Date.now())
const workerA = new LockStore(knex, { instanceName: 'worker-a', clock: stalledClock, lockTimeoutMs: 1_000, renewalIntervalMs: 250 })
const workerB = new LockStore(knex, { instanceName: 'worker-b', clock: 'local', lockTimeoutMs: 1_000, renewalIntervalMs: 250 })

const lockA = await workerA.tryAcquireLock('report')
if (!lockA) throw new Error('worker A should get the free lock')
console.log(`worker A holds the lock with fence ${lockA.fence}`)
doc.write(lockA.fence, 'draft by A')

await sleep(1_200) // A is stalled past the timeout
const lockB = await workerB.tryAcquireLock('report')
if (!lockB) throw new Error('worker B should take over the stale lock')
console.log(`worker B took over with fence ${lockB.fence}`)
doc.write(lockB.fence, 'final by B')

// A wakes up. Its renewal has not run yet, so it does not know; the fence protects the document.
try {
  doc.write(lockA.fence, 'late overwrite by A')
  console.log('worker A overwrote the document: this must not happen')
  process.exitCode = 1
} catch (error) {
  console.log(`worker A's late write was ${(error as Error).message}`)
}
await stalledClock.advance(250) // A's next renewal finds the lock gone and aborts its signal
console.log(`worker A's signal aborted: ${lockA.signal.aborted} (${(lockA.signal.reason as Error).message})`)
console.log(`document: ${doc.content}`)

await workerA.close()
await workerB.close()
await knex.destroy()
for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true })
