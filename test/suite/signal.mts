// lock.signal and lock.lost: the holder learns that its lock is gone.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockLostError, ManualClock, createLockTable, dropLockTable, type Lock } from '../../src/index.js'
import { uniqueName } from '../targets.mjs'
import { RecordingLogger, type Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs
const RENEWAL = 2_000

function lossOf(lock: Lock): LockLostError {
  assert.equal(lock.signal.aborted, true, 'the signal is aborted')
  const reason: unknown = lock.signal.reason
  assert.ok(reason instanceof LockLostError, 'the reason is a LockLostError')
  assert.equal(reason.code, 'LOCK_LOST')
  assert.equal(reason.lockName, lock.name)
  return reason
}

export function signalSuite(h: Harness): void {
  it('aborts when another worker takes over the stale lock', async () => {
    const logger = new RecordingLogger()
    const stuck = new ManualClock()
    const clock = new ManualClock()
    const holder = h.clockedStore(stuck, { logger })
    const lock = await holder.tryAcquireLock(h.lockName())
    assert.ok(lock)
    let aborts = 0
    lock.signal.addEventListener('abort', () => aborts++)
    await clock.advance(TIMEOUT + 1)
    assert.ok(await h.clockedStore(clock).tryAcquireLock(lock.name))
    assert.equal(lock.signal.aborted, false, 'not known yet')
    await stuck.advance(RENEWAL)
    assert.equal(lossOf(lock).reason, 'taken-over')
    assert.equal(lock.lost, true)
    assert.equal(aborts, 1)
    assert.ok(logger.at('warn').some((m) => m.includes('was lost')))
  })

  it('aborts when the row is deleted behind the holder', async () => {
    const clock = new ManualClock()
    const lock = await h.clockedStore(clock).tryAcquireLock(h.lockName())
    assert.ok(lock)
    await h.knex(h.tableName).where({ lock_name: lock.name, lock_key: lock.key }).delete()
    await clock.advance(RENEWAL)
    assert.equal(lossOf(lock).reason, 'taken-over')
  })

  it('aborts when no renewal succeeds for the timeout, and not a moment before', async () => {
    const clock = new ManualClock()
    const knex = h.connection({ poolMax: 1 })
    const lock = await h.clockedStore(clock, {}, knex).tryAcquireLock(h.lockName())
    assert.ok(lock)
    await knex.destroy() // the database is out of reach for this store
    await clock.advance(TIMEOUT - 1)
    assert.equal(lock.signal.aborted, false)
    assert.equal(lock.lost, false)
    await clock.advance(1)
    const loss = lossOf(lock)
    assert.equal(loss.reason, 'expired')
    assert.ok(loss.cause instanceof Error, 'the last renewal error is the cause')
    assert.equal(lock.lost, true)
  })

  it('does not abort on a failed renewal inside the lease, and keeps the lock', async () => {
    const clock = new ManualClock()
    const tableName = uniqueName('wl_blip')
    await createLockTable(h.knex, { tableName })
    try {
      const holder = h.clockedStore(clock, { tableName })
      const other = h.clockedStore(clock, { tableName })
      const lock = await holder.tryAcquireLock('blip')
      assert.ok(lock)
      await h.knex.schema.renameTable(tableName, `${tableName}_away`)
      await clock.advance(RENEWAL) // this renewal fails
      await h.knex.schema.renameTable(`${tableName}_away`, tableName)
      for (let i = 0; i < 10; i++) {
        await clock.advance(TIMEOUT / 2)
        assert.equal(await other.tryAcquireLock('blip'), null)
      }
      assert.equal(lock.signal.aborted, false)
      assert.equal(await lock.isStillValid(), true)
      await lock.release()
    } finally {
      await h.knex.schema.dropTableIfExists(`${tableName}_away`)
      await dropLockTable(h.knex, { tableName })
    }
  })

  it('aborts with reason released on release() and close(), without calling it lost', async () => {
    const store = h.store()
    const released = await store.tryAcquireLock(h.lockName())
    const closed = await store.tryAcquireLock(h.lockName())
    assert.ok(released && closed)
    await released.release()
    assert.equal(lossOf(released).reason, 'released')
    assert.equal(released.lost, false)
    await store.close()
    assert.equal(lossOf(closed).reason, 'released')
    assert.equal(closed.lost, false)
  })

  it('renews 1,000 locks with a constant number of statements and learns which were lost', async () => {
    const clock = new ManualClock()
    const knex = h.connection({ poolMax: 2 })
    const store = h.clockedStore(clock, {}, knex)
    const one = await store.tryAcquireLock(h.lockName('single'))
    assert.ok(one)
    const single = await h.countQueries(knex, () => clock.advance(RENEWAL))
    assert.equal(single.queries, 1)

    const locks: Lock[] = [one]
    for (let i = 0; i < 999; i++) {
      const lock = await store.tryAcquireLock(h.lockName('many'))
      assert.ok(lock)
      locks.push(lock)
    }
    const many = await h.countQueries(knex, () => clock.advance(RENEWAL))
    assert.equal(many.queries, single.queries, '1,000 locks renew with as many statements as one')

    const gone = locks.slice(100, 110)
    await h.knex(h.tableName).whereIn('token', gone.map((l) => l.token)).delete()
    const lossy = await h.countQueries(knex, () => clock.advance(RENEWAL))
    assert.equal(lossy.queries, 2, 'one renewal, one look at which rows remain')
    assert.deepEqual(locks.filter((l) => l.signal.aborted).map((l) => l.token), gone.map((l) => l.token))
    const closing = await h.countQueries(knex, () => store.close())
    assert.equal(closing.queries, 1, 'close() releases them all in one statement')
    assert.equal(Number((await h.knex(h.tableName).whereIn('token', locks.map((l) => l.token)).count({ n: '*' }))[0]?.n), 0)
  })
}
