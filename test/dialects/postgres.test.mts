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
    // The second wait reuses the connection the first one opened (it lingers after a wait).
    assert.equal(logger.entries.filter((e) => e.message.includes(LISTENING)).length, 1)
    const { rows } = await h.knex.raw(
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE query = ?',
      [`LISTEN "${h.tableName}_released"`],
    ) as { rows: Array<{ killed: boolean }> }
    assert.deepEqual(rows.map((r) => r.killed), [true], 'exactly the listening connection was terminated')
    await logger.waitFor(LISTENING, 2) // it reconnected
    assert.ok(logger.at('warn').some((m) => m.includes('dropped')), 'the drop was reported')
    await second.release()
    const again = await waitingAgain
    assert.ok(again.fence > lock.fence)
    second.child.stdin?.end()
    await second.exited
  })

  it('keeps the listening connection for 10 s after the last waiter leaves, then closes it; close() closes it at once', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const store = h.store({ clock, logger, lockTimeoutMs: 600_000, renewalIntervalMs: 60_000 })
    const name = h.lockName('linger')
    const listening = async (): Promise<number> => {
      const { rows } = await h.knex.raw('SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = ?',
        [`LISTEN "${h.tableName}_released"`]) as { rows: Array<{ n: number }> }
      return rows[0]?.n ?? -1
    }
    // A server backend outlives its client by a moment: wait until the count is what we expect.
    const settlesAt = async (expected: number): Promise<void> => {
      for (let i = 0; i < 200 && (await listening()) !== expected; i++) await new Promise((resolve) => setTimeout(resolve, 25))
      assert.equal(await listening(), expected)
    }

    const holder = await store.tryAcquireLock(name, 'a')
    assert.ok(holder)
    const waiting = store.acquireLock(name, 'b').then((lock) => lock.release())
    await waiting
    const blocked = store.acquireLock(name, 'a')
    await logger.waitFor(LISTENING, 1)
    await holder.release()
    await (await blocked).release()
    await settlesAt(1)
    await clock.advance(9_000)
    await settlesAt(1)
    // A new wait within the linger period keeps the connection and restarts the period.
    const holder2 = await store.tryAcquireLock(name, 'a')
    assert.ok(holder2)
    const blocked2 = store.acquireLock(name, 'a')
    await holder2.release()
    await (await blocked2).release()
    await clock.advance(9_000)
    await settlesAt(1)
    assert.equal(logger.entries.filter((e) => e.message.includes(LISTENING)).length, 1, 'one connection for every wait')
    await clock.advance(1_000)
    await settlesAt(0)

    const holder3 = await store.tryAcquireLock(name, 'a')
    assert.ok(holder3)
    const blocked3 = store.acquireLock(name, 'a')
    await logger.waitFor(LISTENING, 2)
    await holder3.release()
    await (await blocked3).release()
    await store.close()
    await settlesAt(0)
  })
}, ['postgres'])
