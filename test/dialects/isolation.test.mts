// What only servers with isolation levels do: a session whose default is SERIALIZABLE must not
// turn a lost race into an exception (PostgreSQL reports 40001, InnoDB may deadlock with 1213).
// SQLite is serializable always and is covered by the shared suite.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockStore } from '../../src/index.js'
import { Harness, kindOf } from '../harness.mjs'
import { forEachTarget } from '../matrix.mjs'

const SERIALIZABLE = {
  postgres: "SET default_transaction_isolation = 'serializable'",
  mysql: 'SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE',
  sqlite: undefined,
}

forEachTarget('session at SERIALIZABLE', (target) => {
  const h = new Harness(target)

  const racers = (): LockStore[] =>
    [0, 1, 2, 3].map(() => h.store({}, h.connection({ poolMax: 2, sessionSql: SERIALIZABLE[target.database] })))

  it('gives exactly one winner per round and never rejects', async () => {
    const stores = racers()
    for (let round = 0; round < 20; round++) {
      const name = h.lockName('serializable')
      const locks = await Promise.all(stores.map((s) => s.tryAcquireLock(name)))
      assert.equal(locks.filter(Boolean).length, 1, `round ${round}`)
    }
  })

  // PostgreSQL's one-statement routine needs READ COMMITTED: at SERIALIZABLE the store keeps the transaction of statements.
  it('gives each round\'s write side of a read/write lock to exactly one racer and never rejects', async () => {
    const connections = [0, 1, 2, 3].map(() => h.connection({ poolMax: 2, sessionSql: SERIALIZABLE[target.database] }))
    const kinds: string[] = []
    for (const knex of connections) knex.on('query', (query: object) => { kinds.push(kindOf(query)) })
    const stores = connections.map((knex) => h.store({}, knex))
    for (let round = 0; round < 20; round++) {
      const name = h.lockName('serializable-rw')
      const locks = await Promise.all(stores.map((s) => s.tryAcquireReadWriteLock(name, '', { write: true })))
      assert.equal(locks.filter(Boolean).length, 1, `round ${round}`)
    }
    assert.ok(kinds.includes('rw-key') && !kinds.includes('rw-acquire'), `the transaction of statements: ${[...new Set(kinds)].join(', ')}`)
  })

  it('gives a stale lock to exactly one of several racing workers', async () => {
    const stores = racers()
    for (let round = 0; round < 10; round++) {
      const name = h.lockName('stale-race')
      await h.knex(h.tableName).insert({ lock_name: name, lock_key: '', instance_name: 'gone', token: 'gone', last_renewed_ts: 0 })
      const locks = await Promise.all(stores.map((s) => s.tryAcquireLock(name)))
      const winners = locks.filter((l) => l !== null)
      assert.equal(winners.length, 1, `round ${round}`)
      assert.equal((await h.row(name))?.token, winners[0]?.token)
    }
  })
}, ['postgres', 'mysql'])
