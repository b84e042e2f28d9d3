// The backoff schedule on its own: no database, no clock.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { backoffDelay, DEFAULT_BACKOFF } from '../src/backoff.js'
import { resolveBackoff } from '../src/validate.js'

describe('backoff', () => {
  it('doubles from 100 ms to the 5 s cap with the defaults, jitter aside', () => {
    const middle = () => 0.5 // no jitter
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(DEFAULT_BACKOFF, n, middle)), [100, 200, 400, 800, 1600, 3200, 5000, 5000])
  })

  it('keeps every delay within ±jitter of its base and never above the cap, however long the wait', () => {
    let seed = 1
    const random = () => ((seed = (seed * 16_807) % 2_147_483_647) / 2_147_483_647)
    for (let grown = 0; grown < 10_000; grown++) {
      const delay = backoffDelay(DEFAULT_BACKOFF, grown, random)
      const base = Math.min(5_000, 100 * 2 ** Math.min(grown, 64))
      assert.ok(delay >= 1 && delay <= 5_000, `grown ${grown}: ${delay}`)
      assert.ok(delay >= Math.floor(base * 0.9) && delay <= Math.ceil(base * 1.1), `grown ${grown}: ${delay} vs ${base}`)
    }
    assert.equal(backoffDelay(DEFAULT_BACKOFF, Number.MAX_SAFE_INTEGER, () => 0.999), 5_000)
  })

  it('validates its options', () => {
    assert.deepEqual(resolveBackoff(undefined), DEFAULT_BACKOFF)
    assert.deepEqual(resolveBackoff({ maxDelayMs: 1_000 }), { ...DEFAULT_BACKOFF, maxDelayMs: 1_000 })
    assert.throws(() => resolveBackoff({ initialDelayMs: 0 }), RangeError)
    assert.throws(() => resolveBackoff({ initialDelayMs: 500, maxDelayMs: 100 }), RangeError)
    assert.throws(() => resolveBackoff({ jitter: 2 }), RangeError)
    assert.throws(() => resolveBackoff({ multiplier: '2' }), TypeError)
    assert.throws(() => resolveBackoff({ initalDelayMs: 5 }), TypeError)
  })
})
