// listLocks, forceRelease and the event hooks.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { InvalidLockNameError, ManualClock, type LockEventMap } from '../../src/index.js'
import { RecordingLogger, type Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs
const RENEWAL = 2_000

export function inspectionSuite(h: Harness): void {
  it('lists the locks of every worker with holder, fence, age and staleness', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock, { instanceName: 'inspect-a' })
    const stuck = h.clockedStore(new ManualClock(clock.now()), { instanceName: 'inspect-b' })
    const name = h.lockName('listed-ñ')
    const first = await a.tryAcquireLock(name, 'k1')
    const second = await stuck.tryAcquireLock(name, 'k2 😀')
    assert.ok(first && second)
    await clock.advance(TIMEOUT + 1) // a renews; stuck does not
    const rows = await a.listLocks({ name })
    assert.deepEqual(rows.map((r) => [r.name, r.key, r.instanceName, r.fence]), [
      [name, 'k1', 'inspect-a', first.fence],
      [name, 'k2 😀', 'inspect-b', second.fence],
    ])
    assert.equal(rows[0]?.stale, false)
    assert.equal(rows[1]?.stale, true)
    assert.equal(rows[1]?.ageMs, TIMEOUT + 1)
    assert.equal(rows[1]?.lastRenewedAt.getTime(), clock.now() - TIMEOUT - 1)
    assert.deepEqual((await a.listLocks({ name, key: 'k1' })).map((r) => r.key), ['k1'])
    assert.deepEqual((await a.listLocks({ instanceName: 'inspect-b' })).map((r) => r.key), ['k2 😀'])
    await assert.rejects(a.listLocks({ name: '' }), InvalidLockNameError)
    await assert.rejects(a.listLocks({ owner: 'x' } as never), TypeError)
  })

  it('force-releases a lock: the holder learns it at its next renewal, a waiter gets it at once', async () => {
    const clock = new ManualClock()
    const holder = h.clockedStore(clock)
    const operator = h.clockedStore(clock)
    const waiter = h.clockedStore(clock)
    const name = h.lockName('forced')
    const lock = await holder.tryAcquireLock(name)
    assert.ok(lock)
    const waiting = waiter.acquireLock(name)
    assert.equal(await operator.forceRelease(name), true)
    assert.ok(await waiting, 'the waiter was woken without the clock moving')
    assert.equal(await operator.forceRelease(`${name}-absent`), false)
    await clock.advance(RENEWAL)
    assert.equal(lock.signal.aborted, true)
    assert.equal(lock.lost, true)
  })

  it('reports acquired, refused, released, renewed, lost and waited events, and survives a throwing listener', async () => {
    const clock = new ManualClock()
    const logger = new RecordingLogger()
    const store = h.clockedStore(clock, { logger })
    const seen: Array<[string, unknown]> = []
    const record = <E extends keyof LockEventMap>(event: E) => store.on(event, (e) => { seen.push([event, e]) })
    for (const event of ['acquired', 'refused', 'released', 'renewed', 'lost', 'waited'] as const) record(event)
    store.on('acquired', () => { throw new Error('listener bug') })

    const name = h.lockName('events')
    const lock = await store.tryAcquireLock(name)
    assert.ok(lock)
    assert.equal(await h.clockedStore(clock).tryAcquireLock(name), null) // another store: no event here
    const other = h.clockedStore(clock)
    const otherSeen: string[] = []
    other.on('refused', (e) => otherSeen.push(e.name))
    assert.equal(await other.tryAcquireLock(name), null)
    assert.deepEqual(otherSeen, [name])

    await clock.advance(RENEWAL)
    await lock.release()
    const waited = await store.acquireLock(name, '', { timeoutMs: 0 })
    await h.knex(h.tableName).where({ lock_name: name }).delete()
    await clock.advance(RENEWAL)
    void waited

    const kinds = seen.map(([k]) => k)
    assert.deepEqual(kinds, ['acquired', 'renewed', 'released', 'acquired', 'waited', 'lost'])
    const acquired = seen[0]?.[1] as LockEventMap['acquired']
    assert.equal(acquired.fence, lock.fence)
    assert.ok(acquired.durationMs >= 0)
    assert.deepEqual(seen[1]?.[1], { count: 1, durationMs: 0 })
    assert.deepEqual(seen[2]?.[1], { name, key: '', heldMs: RENEWAL })
    assert.deepEqual(seen[4]?.[1], { name, key: '', waitedMs: 0, outcome: 'acquired' })
    assert.deepEqual(seen[5]?.[1], { name, key: '', reason: 'taken-over', heldMs: RENEWAL })
    assert.ok(logger.at('error').some((m) => m.includes('event listener threw')))
  })
}
