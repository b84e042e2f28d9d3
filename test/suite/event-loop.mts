// Calls that never keep the event loop from turning: on SQLite the driver runs statements on this
// thread, so a loop of awaited calls would otherwise starve every timer, renewals included.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import type { Harness } from '../harness.mjs'

export function eventLoopSuite(h: Harness): void {
  it('lets timers run during a tight loop of acquire and release calls', async () => {
    const store = h.store()
    const name = h.lockName('loop')
    let fired = 0
    const timer = setInterval(() => { fired++ }, 0)
    try {
      for (let i = 0; i < 300; i++) {
        const lock = await store.tryAcquireLock(name, `k${i % 8}`)
        assert.ok(lock)
        await lock.release()
      }
    } finally {
      clearInterval(timer)
    }
    assert.ok(fired > 0, 'the interval fired during the loop')
  })

  it('renews a held lock while a tight loop of calls on other keys runs', { timeout: 120_000 }, async () => {
    // Real timers: what is checked is that the renewal timer gets its turn at all.
    const store = h.store({ lockTimeoutMs: 2_000, renewalIntervalMs: 20 })
    const held = await store.tryAcquireLock(h.lockName('held'))
    assert.ok(held)
    let renewals = 0
    store.on('renewed', () => { renewals++ })
    const other = h.lockName('loop')
    let cycles = 0
    // Ends when renewals have run twice; a starved timer never lets it end (the cap fails it).
    for (; renewals < 2 && cycles < 100_000; cycles++) {
      const lock = await store.tryAcquireLock(other, `k${cycles % 8}`)
      assert.ok(lock)
      await lock.release()
    }
    assert.ok(renewals >= 2, `no renewal ran during ${cycles} cycles`)
    assert.equal(held.lost, false)
    assert.equal(await held.isStillValid(), true)
  })
}
