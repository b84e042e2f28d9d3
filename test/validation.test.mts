// Argument checks that need no database server: events, releaseOnSignals, and the options of
// createLockTable/dropLockTable (on a SQLite file of its own, to prove nothing was touched).
import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { LockStore, createLockTable, dropLockTable, releaseOnSignals } from '../src/index.js'
import { DEFAULT_LOCK_TIMEOUT_MS } from '../src/validate.js'
import { statementsDuring } from './harness.mjs'
import { uniqueName } from './targets.mjs'

const file = join(tmpdir(), `${uniqueName('validation')}.sqlite`)
let knex: Knex
let store: LockStore

before(async () => {
  knex = knexFactory({ client: 'better-sqlite3', connection: { filename: file }, useNullAsDefault: true })
  // A stand-in for the default table: a call that misread its options must not drop it.
  await knex.schema.createTable('worker_locks', (table) => { table.integer('id') })
  store = new LockStore(knex)
})

after(async () => {
  await store.close()
  await knex.destroy()
  for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true })
})

/** Runs `fn` and asserts it rejected with `expected` without sending a single statement. */
async function rejectsWithoutSql(fn: () => Promise<unknown>, expected: RegExp | object, label: string): Promise<void> {
  const { sql } = await statementsDuring(knex, () => assert.rejects(fn, expected, label))
  assert.deepEqual(sql, [], `${label}: no SQL`)
}

it('times locks out after 120 s unless told otherwise', () => {
  assert.equal(DEFAULT_LOCK_TIMEOUT_MS, 120_000)
  assert.equal(store.lockTimeoutMs, DEFAULT_LOCK_TIMEOUT_MS)
  assert.equal(store.renewalIntervalMs, 30_000)
})

describe('store events', () => {
  it('refuses unknown event names and listeners that are not functions, in on() and off()', () => {
    const listener = (): void => undefined
    assert.throws(() => store.on('nonsense' as never, listener), { name: 'TypeError', message: /unknown event "nonsense"; the events are acquired, refused/ })
    assert.throws(() => store.off('nonsense' as never, listener), { name: 'TypeError', message: /LockStore\.off: unknown event "nonsense"/ })
    assert.throws(() => store.on(Symbol('acquired') as never, listener), TypeError)
    for (const bad of [null, undefined, 'listener', {}]) {
      assert.throws(() => store.on('acquired', bad as never), { name: 'TypeError', message: /listener for "acquired" must be a function/ }, String(bad))
      assert.throws(() => store.off('released', bad as never), TypeError, String(bad))
    }
  })

  it('still takes every event the store emits', () => {
    for (const name of ['acquired', 'refused', 'released', 'renewed', 'lost', 'waited'] as const) {
      const remove = store.on(name, () => undefined)
      remove()
    }
  })
})

describe('releaseOnSignals arguments', () => {
  const watched: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR2']
  const counts = (): number[] => watched.map((signal) => process.listenerCount(signal))

  it('refuses a bad store, bad options and signals that do not exist or cannot be caught, installing nothing', () => {
    const before = counts()
    const cases: Array<[string, () => unknown, typeof TypeError | typeof RangeError, RegExp]> = [
      ['null store', () => releaseOnSignals(null as never), TypeError, /needs a LockStore/],
      ['knex as the store', () => releaseOnSignals(knex as never), TypeError, /needs a LockStore/],
      ['null options', () => releaseOnSignals(store, null as never), TypeError, /options must be an object/],
      ['string options', () => releaseOnSignals(store, 'SIGTERM' as never), TypeError, /options must be an object/],
      ['unknown option', () => releaseOnSignals(store, { signal: ['SIGTERM'] } as never), TypeError, /Unknown releaseOnSignals option "signal"/],
      ['null signals', () => releaseOnSignals(store, { signals: null } as never), TypeError, /option signals must not be null/],
      ['no signals', () => releaseOnSignals(store, { signals: [] }), TypeError, /signals must be a non-empty array/],
      ['made-up signal', () => releaseOnSignals(store, { signals: ['SIGTERM', 'SIGFOO' as NodeJS.Signals] }), TypeError, /"SIGFOO" is not a signal/],
      ['lower case', () => releaseOnSignals(store, { signals: ['sigterm' as NodeJS.Signals] }), TypeError, /"sigterm" is not a signal/],
      ['SIGKILL', () => releaseOnSignals(store, { signals: ['SIGUSR2', 'SIGKILL'] }), TypeError, /SIGKILL cannot be caught/],
      ['SIGSTOP', () => releaseOnSignals(store, { signals: ['SIGINT', 'SIGSTOP'] }), TypeError, /SIGSTOP cannot be caught/],
      ['null timeout', () => releaseOnSignals(store, { timeoutMs: null } as never), TypeError, /option timeoutMs must not be null/],
      ['negative timeout', () => releaseOnSignals(store, { timeoutMs: -1 }), RangeError, /timeoutMs must be between 0 and 2147483647 milliseconds/],
    ]
    for (const [label, call, type, message] of cases) {
      assert.throws(call, (error: Error) => error instanceof type && message.test(error.message), label)
      assert.deepEqual(counts(), before, `${label}: no handler left installed`)
    }
  })

  it('installs and removes handlers for good arguments', () => {
    const before = counts()
    const remove = releaseOnSignals(store, { signals: ['SIGUSR2', 'SIGHUP'] })
    assert.deepEqual(counts(), before.map((n, i) => (watched[i] === 'SIGUSR2' || watched[i] === 'SIGHUP' ? n + 1 : n)))
    remove()
    assert.deepEqual(counts(), before)
  })
})

describe('createLockTable and dropLockTable options', () => {
  it('refuses null, unknown and non-object options before any SQL, leaving the default table alone', async () => {
    for (const [name, fn] of [['createLockTable', createLockTable], ['dropLockTable', dropLockTable]] as const) {
      await rejectsWithoutSql(() => fn(knex, { tableName: null } as never), { name: 'TypeError', message: new RegExp(`${name} option tableName must not be null`) }, `${name} null tableName`)
      await rejectsWithoutSql(() => fn(knex, { table: 'locks' } as never), { name: 'TypeError', message: new RegExp(`Unknown ${name} option "table"`) }, `${name} unknown option`)
      for (const options of [null, 'worker_locks', ['worker_locks'], 5]) {
        await rejectsWithoutSql(() => fn(knex, options as never), { name: 'TypeError', message: new RegExp(`${name} options must be an object`) }, `${name} ${JSON.stringify(options)}`)
      }
      await rejectsWithoutSql(() => fn(knex, { tableName: 'bad name' }), TypeError, `${name} bad tableName`)
    }
    assert.equal(await knex.schema.hasTable('worker_locks'), true)
  })
})
