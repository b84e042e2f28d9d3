// Bad names, keys and options: a typed error before any SQL, and nothing held is lost.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { InvalidLockNameError, LockStore } from '../../src/index.js'
import type { Harness } from '../harness.mjs'

const badNames: Array<[string, unknown]> = [
  ['empty', ''],
  ['too long', 'x'.repeat(256)],
  ['too long in code points', '😀'.repeat(256)],
  ['NUL', 'a\0b'],
  ['lone surrogate', 'a\uD800'],
  ['number', 42],
  ['null', null],
  ['undefined', undefined],
  ['object', { toString: () => 'x' }],
]

const badKeys: Array<[string, unknown]> = [
  ['too long', 'k'.repeat(256)],
  ['NUL', '\0'],
  ['lone surrogate', '\uDFFF'],
  ['number', 7],
  ['null', null],
]

const badOptions: Array<[string, object, typeof TypeError | typeof RangeError]> = [
  ['zero timeout', { lockTimeoutMs: 0 }, RangeError],
  ['negative timeout', { lockTimeoutMs: -5 }, RangeError],
  ['fractional timeout', { lockTimeoutMs: 1.5 }, TypeError],
  ['string timeout', { lockTimeoutMs: '1000' }, TypeError],
  ['NaN renewal', { renewalIntervalMs: Number.NaN }, TypeError],
  ['renewal not below timeout', { lockTimeoutMs: 1000, renewalIntervalMs: 1000 }, RangeError],
  ['timer overflow', { lockTimeoutMs: 2 ** 31 }, RangeError],
  ['unknown strategy', { strategy: 'fast' }, TypeError],
  ['unknown clock', { clock: 'utc' }, TypeError],
  ['clock without timers', { clock: { now: () => 0 } }, TypeError],
  ['table with a quote', { tableName: 'locks"; DROP TABLE x; --' }, TypeError],
  ['table with a dot', { tableName: 'public.locks' }, TypeError],
  ['table too long', { tableName: 't'.repeat(49) }, TypeError],
  ['empty instance', { instanceName: '' }, TypeError],
  ['instance with NUL', { instanceName: 'a\0' }, TypeError],
  ['logger not an object', { logger: 'console' }, TypeError],
  ['misspelt option', { lockTimeOutMs: 1000 }, TypeError],
  ['durableReleases not a boolean', { durableReleases: 'yes' }, TypeError],
  ['timeout with no room for a renewal', { lockTimeoutMs: 1 }, RangeError],
]

// null is never "use the default": each of these names the option in a TypeError.
const nullOptions = ['instanceName', 'tableName', 'lockTimeoutMs', 'renewalIntervalMs', 'strategy', 'clock', 'logger', 'backoff', 'slowWaitWarningMs', 'durableReleases', 'statementTimeoutMs', 'preparedStatements']

// Built once, when first needed: 50 million characters, far past any limit.
let huge: string | undefined
const hugeString = (): string => (huge ??= 'x'.repeat(50_000_000))

export function badInputSuite(h: Harness): void {
  it('rejects bad names and keys with InvalidLockNameError before any SQL, keeping held locks', async () => {
    const store = h.store()
    const name = h.lockName()
    const held = await store.tryAcquireLock(name)
    assert.ok(held)
    const { queries } = await h.countQueries(h.knex, async () => {
      for (const [label, bad] of badNames) {
        await assert.rejects(store.tryAcquireLock(bad as string, 'k'), InvalidLockNameError, `name: ${label}`)
      }
      for (const [label, bad] of badKeys) {
        await assert.rejects(store.tryAcquireLock(name, bad as string), InvalidLockNameError, `key: ${label}`)
      }
    })
    assert.equal(queries, 0)
    assert.equal(await held.isStillValid(), true)
    assert.equal(await h.store().tryAcquireLock(name), null)
  })

  it('explains what is wrong in the message', async () => {
    const store = h.store()
    await assert.rejects(store.tryAcquireLock(''), { code: 'INVALID_LOCK_NAME', message: 'Lock name must not be empty.' })
    await assert.rejects(store.tryAcquireLock('n', 'k'.repeat(300)), { message: 'Lock key must be at most 255 characters, got 300.' })
    await assert.rejects(store.tryAcquireLock(5 as unknown as string), { message: 'Lock name must be a string, got the number 5.' })
  })

  it('rejects bad options with TypeError or RangeError naming the option', () => {
    for (const [label, options, type] of badOptions) {
      assert.throws(() => new LockStore(h.knex, options as never), type, label)
    }
    assert.throws(() => new LockStore(h.knex, { lockTimeoutMs: 500, renewalIntervalMs: 900 }), /renewalIntervalMs \(900\) must be less than lockTimeoutMs \(500\)/)
    assert.throws(() => new LockStore({} as never), TypeError)
  })

  it('refuses null for every option, naming it, instead of using the default', () => {
    for (const option of nullOptions) {
      assert.throws(() => new LockStore(h.knex, { [option]: null } as never), { name: 'TypeError', message: new RegExp(`option ${option} must not be null`) }, option)
    }
    assert.throws(() => new LockStore(h.knex, { backoff: { maxDelayMs: null } } as never), { name: 'TypeError', message: /backoff option maxDelayMs must not be null/ })
  })

  it('blames lockTimeoutMs, not the renewal interval it implies, for a timeout too short for a renewal', () => {
    assert.throws(() => new LockStore(h.knex, { lockTimeoutMs: 1 }), (error: Error) => {
      assert.ok(error instanceof RangeError)
      assert.match(error.message, /lockTimeoutMs must be between 2 and/)
      assert.doesNotMatch(error.message, /renewalIntervalMs/)
      return true
    })
    assert.equal(h.store({ lockTimeoutMs: 2 }).renewalIntervalMs, 1, 'the shortest timeout that leaves room for a renewal is accepted')
  })

  it('rejects a huge name or key by its length before looking at its characters, before any SQL', async () => {
    const store = h.store()
    const name = h.lockName()
    const held = await store.tryAcquireLock(name)
    assert.ok(held)
    const tooLong = { name: 'InvalidLockNameError', message: /must be at most 255 characters, got a string of length 5000000\d\.$/ }
    const { queries } = await h.countQueries(h.knex, async () => {
      await assert.rejects(store.tryAcquireLock(hugeString()), tooLong)
      // A NUL would be reported if the characters were looked at first.
      await assert.rejects(store.tryAcquireLock(`${hugeString()}\0`), tooLong)
      await assert.rejects(store.tryAcquireLock(`\uD800${hugeString()}`), tooLong)
      await assert.rejects(store.tryAcquireLock(name, `${hugeString()}\0`), { message: /^Lock key must be at most 255 characters, got a string of length/ })
      await assert.rejects(store.acquireLock(`${hugeString()}\0`, '', { timeoutMs: 0 }), tooLong)
      await assert.rejects(store.listLocks({ name: `${hugeString()}\0` }), tooLong)
      await assert.rejects(store.forceRelease(name, `${hugeString()}\0`), { name: 'InvalidLockNameError' })
    })
    assert.equal(queries, 0)
    assert.throws(() => new LockStore(h.knex, { instanceName: `${hugeString()}\0` }), { name: 'TypeError', message: /instanceName must be at most 255 characters, got a string of length/ })
    // 255 code points of two code units each are still a valid name, right at the limit.
    const longest = await store.tryAcquireLock('😀'.repeat(255))
    assert.ok(longest)
    await longest.release()
    assert.equal(await held.isStillValid(), true)
  })

  it('cannot be steered into SQL by names and keys', async () => {
    const store = h.store()
    const hostile = [`x'; DELETE FROM ${h.tableName}; --`, '" OR 1=1 --', '?', '??', ':name', '\\', "'"]
    for (const text of hostile) {
      const lock = await store.tryAcquireLock(text, text)
      assert.ok(lock, JSON.stringify(text))
      const row = await h.knex(h.tableName).where({ lock_name: text, lock_key: text }).first('token')
      assert.equal(String(row?.token), lock.token)
    }
    assert.equal(Number((await h.knex(h.tableName).count({ n: '*' }).whereIn('lock_name', hostile))[0]?.n), hostile.length)
  })
}
