// What only PostgreSQL does: LISTEN/NOTIFY wakes a waiter when another process releases, and
// the listening connection comes back after it was killed. MySQL and SQLite waiters poll.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { ManualClock } from '../../src/index.js'
import { Harness, RecordingLogger } from '../harness.mjs'
import { forEachTarget } from '../matrix.mjs'
import { startWorker } from '../worker-process.mjs'

const LISTENING = 'listening for releases in table'

forEachTarget('cross-process wake-ups', (target) => {
  const h = new Harness(target)

  it("wakes a waiter with an hour's backoff when another process releases, also after its listener was killed", async () => {
    const logger = new RecordingLogger()
    // The clock never moves: only a notification can wake this waiter.
    const store = h.store({
      clock: new ManualClock(), logger, lockTimeoutMs: 600_000, renewalIntervalMs: 60_000,
      backoff: { initialDelayMs: 3_600_000, maxDelayMs: 3_600_000 },
    })
    const name = h.lockName('notify')

    const first = await startWorker(h, name)
    const waiting = store.acquireLock(name)
    await logger.waitFor(LISTENING, 1)
    await first.release()
    const lock = await waiting
    assert.equal(await lock.isStillValid(), true)
    await lock.release()
    first.child.stdin?.end()
    await first.exited

    const second = await startWorker(h, name)
    const waitingAgain = store.acquireLock(name)
    await logger.waitFor(LISTENING, 2)
    const { rows } = await h.knex.raw(
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE query = ?',
      [`LISTEN "${h.tableName}_released"`],
    ) as { rows: Array<{ killed: boolean }> }
    assert.deepEqual(rows.map((r) => r.killed), [true], 'exactly the listening connection was terminated')
    await logger.waitFor(LISTENING, 3) // it reconnected
    assert.ok(logger.at('warn').some((m) => m.includes('dropped')), 'the drop was reported')
    await second.release()
    const again = await waitingAgain
    assert.ok(again.fence > lock.fence)
    second.child.stdin?.end()
    await second.exited
  })
}, ['postgres'])
