// What only PostgreSQL does: LISTEN/NOTIFY wakes a waiter when another process releases, and
// the listening connection comes back after it was killed. MySQL and SQLite waiters poll.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { it } from 'node:test'
import { ManualClock } from '../../src/index.js'
import { Harness, RecordingLogger } from '../harness.mjs'
import { forEachTarget } from '../matrix.mjs'
import { startWorker } from '../worker-process.mjs'

const LISTENING = 'listening for releases in table'

/** The server process ids of the connections listening on the harness's table. */
async function listeningPids(h: Harness): Promise<number[]> {
  const { rows } = await h.knex.raw('SELECT pid FROM pg_stat_activity WHERE query = ? ORDER BY pid',
    [`LISTEN "${h.tableName}_released"`]) as { rows: Array<{ pid: number }> }
  return rows.map((r) => r.pid)
}

// A closed connection's server process lingers for a moment: poll (briefly, in real time) for
// the change rather than reading once.
async function gone(h: Harness, pids: number[]): Promise<void> {
  for (let i = 0; i < 200 && (await listeningPids(h)).some((pid) => pids.includes(pid)); i++) await new Promise((resolve) => setTimeout(resolve, 25))
  assert.deepEqual((await listeningPids(h)).filter((pid) => pids.includes(pid)), [], 'the listening connection closed')
}
async function stays(h: Harness, pids: number[]): Promise<void> {
  for (let i = 0; i < 8; i++) {
    assert.deepEqual(await listeningPids(h), pids, 'the listening connection is still open')
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

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

    const lingering = await listeningPids(h)
    assert.equal(lingering.length, 1, 'the listening connection lingers after the wait')
    const second = await startWorker(h, name)
    const waitingAgain = store.acquireLock(name)
    assert.deepEqual(await listeningPids(h), lingering, 'the second wait listens on the same connection')
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
    // A wait for a lock this store holds, released at once: the store waits, then has no waiter.
    const waitOnce = async (listens: number): Promise<void> => {
      const holder = await store.tryAcquireLock(name)
      assert.ok(holder)
      const blocked = store.acquireLock(name)
      await logger.waitFor(LISTENING, listens)
      await holder.release()
      await (await blocked).release()
    }
    await waitOnce(1)
    const first = await listeningPids(h)
    assert.equal(first.length, 1)
    await clock.advance(9_000)
    await waitOnce(1) // within the linger: same connection, and the 10 s start again
    await clock.advance(9_000)
    await stays(h, first)
    assert.equal(logger.entries.filter((e) => e.message.includes(LISTENING)).length, 1, 'one connection for every wait')
    await clock.advance(1_000)
    await gone(h, first)

    await waitOnce(2) // a new wait opens a new connection
    const second = await listeningPids(h)
    assert.equal(second.length, 1)
    assert.notDeepEqual(second, first)
    await store.close()
    await gone(h, second)
  })

  it('lets a process that forgets close() exit while the listening connection lingers', async () => {
    const child = spawn(process.execPath, [join(import.meta.dirname, '..', 'fixtures', 'wait-then-exit.mjs')], {
      env: { ...process.env, WL_DATABASE: 'postgres', WL_STRATEGY: h.target.strategy, WL_TABLE: h.tableName, WL_LOCK: h.lockName('exit') },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    // If the lingering connection kept the process alive, it would never exit: give up on it
    // after a minute (far longer than it needs) so that the test fails rather than hangs.
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    clearTimeout(killer)
    assert.equal(code, 0, `the process did not exit by itself: ${stdout}`)
    assert.match(stdout, /waited and released/)
  })
}, ['postgres'])
