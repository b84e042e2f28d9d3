// Property-based tests of names, keys and options (fast-check): whatever a caller passes, the
// answer is a Lock, null, or a typed error before any SQL; never a raw database error, never
// injected SQL; identity is exact, and nothing already held is lost.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import fc from 'fast-check'
import { InvalidLockNameError, LockStore, MAX_NAME_LENGTH } from '../../src/index.js'
import type { Harness } from '../harness.mjs'

const RUNS = Number(process.env.PROPERTY_RUNS ?? 60)

// Strings that stress quoting, encodings and limits: SQL punctuation, NUL, lone surrogates,
// astral characters, trailing spaces, case variants, and lengths around the 255 limit.
const awkward = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ unit: fc.constantFrom("'", '"', '`', '\\', ';', '?', '??', ':', '$1', '%', '_', '\0', ' ', '\uD800', 'é', 'E\u0301', '😀', 'a', 'A'), maxLength: 30 }),
  fc.integer({ min: MAX_NAME_LENGTH - 2, max: MAX_NAME_LENGTH + 2 }).map((n) => 'x'.repeat(n)),
  fc.integer({ min: MAX_NAME_LENGTH - 2, max: MAX_NAME_LENGTH + 2 }).map((n) => '😀'.repeat(n)),
  fc.constantFrom('', ' ', 'abc', 'ABC', 'abc ', 'àbc', `x'); DROP TABLE t; --`),
)

const validName = (s: string): boolean =>
  s.length > 0 && !s.includes('\0') && s.isWellFormed() && [...s].length <= MAX_NAME_LENGTH
const validKey = (s: string): boolean => s === '' || validName(s)

export function propertiesSuite(h: Harness): void {
  it('answers any name and key with a lock, null or InvalidLockNameError, keeping what is held', async () => {
    const store = h.store()
    const anchor = await store.tryAcquireLock(h.lockName('anchor'))
    assert.ok(anchor)
    const run = h.lockName('prop')
    await fc.assert(fc.asyncProperty(awkward, awkward, async (suffix, key) => {
      const name = `${run}${suffix}`
      let queries = 0
      const count = (): void => { queries++ }
      h.knex.on('query', count)
      try {
        const lock = await store.tryAcquireLock(name, key)
        if (!validName(name) || !validKey(key)) return false // must have thrown
        if (lock) {
          // Identity is exact: the row holds exactly these strings.
          const row = await h.knex(h.tableName).where({ lock_name: name, lock_key: key }).first('token')
          assert.equal(String(row?.token), lock.token)
          await lock.release()
        }
        return true
      } catch (error) {
        assert.ok(error instanceof InvalidLockNameError, `not a raw error: ${String(error)}`)
        assert.ok(!validName(name) || !validKey(key), `refused a valid name/key: ${JSON.stringify([name, key])}`)
        assert.equal(queries, 0, 'no SQL ran for a bad name')
        return true
      } finally {
        h.knex.off('query', count)
      }
    }), { numRuns: RUNS })
    assert.equal(await anchor.isStillValid(), true, 'the lock held all along is still held')
    // Nothing the properties wrote leaked into other rows: only the anchor remains under this run.
    const leftovers = await h.knex(h.tableName).where('lock_name', 'like', `${run}%`).count({ n: '*' })
    assert.equal(Number(leftovers[0]?.n), 0)
  })

  it('never lets two different names or keys share a lock', async () => {
    const store = h.store()
    const other = h.store()
    const run = h.lockName('ident')
    await fc.assert(fc.asyncProperty(
      fc.tuple(awkward, awkward, awkward, awkward).filter(([a, b, c, d]) => validName(`${run}${a}`) && validKey(b) && validName(`${run}${c}`) && validKey(d) && (a !== c || b !== d)),
      async ([a, b, c, d]) => {
        const first = await store.tryAcquireLock(`${run}${a}`, b)
        assert.ok(first, 'a fresh lock is free')
        const second = await other.tryAcquireLock(`${run}${c}`, d)
        assert.ok(second, `${JSON.stringify([a, b])} and ${JSON.stringify([c, d])} are different locks`)
        await first.release()
        await second.release()
      },
    ), { numRuns: RUNS })
  })

  it('answers any options object with a store or a TypeError/RangeError', () => {
    const value = fc.oneof(fc.integer({ min: -5, max: 2 ** 32 }), fc.double(), fc.string({ maxLength: 10 }), fc.constant(undefined), fc.constant(null), fc.boolean())
    fc.assert(fc.property(
      fc.record({ lockTimeoutMs: value, renewalIntervalMs: value, tableName: fc.oneof(fc.string({ maxLength: 60 }), value), strategy: fc.oneof(fc.constantFrom('auto', 'native', 'emulated'), value) }, { requiredKeys: [] }),
      (options) => {
        try {
          const store = new LockStore(h.knex, options as never)
          assert.ok(store.lockTimeoutMs > store.renewalIntervalMs)
        } catch (error) {
          assert.ok(error instanceof TypeError || error instanceof RangeError, String(error))
        }
      },
    ), { numRuns: RUNS * 5 })
  })
}
