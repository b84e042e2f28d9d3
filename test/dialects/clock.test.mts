// The database clock expression of each dialect: whole milliseconds since the epoch, in UTC
// whatever the session's time zone.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import knexFactory from 'knex'
import { findDialect } from '../../dialects/index.js'
import { LockStore, UnsupportedDatabaseError } from '../../src/index.js'
import { forEachDatabase } from '../matrix.mjs'
import { connect } from '../targets.mjs'

forEachDatabase('database clock', (database) => {
  it('reads whole milliseconds since the epoch, agreeing with this machine', async () => {
    const knex = connect(database, { poolMax: 1 })
    try {
      const dialect = findDialect(knex)
      assert.ok(dialect)
      // A session time zone far from UTC must not move the value.
      if (database === 'mysql') await knex.raw("SET time_zone = '+05:00'")
      if (database === 'postgres') await knex.raw("SET TIME ZONE 'Asia/Kathmandu'")
      const before = Date.now()
      const result = await knex.raw(`SELECT ${dialect.nowSql} AS now_ms`)
      const after = Date.now()
      const row = database === 'postgres' ? result.rows[0] : database === 'mysql' ? result[0][0] : result[0]
      const value = Number(row.now_ms)
      assert.ok(Number.isSafeInteger(value), `an integer, got ${String(row.now_ms)}`)
      // Same machine, same clock: allow for the round trip and a little scheduling noise.
      assert.ok(value >= before - 1000 && value <= after + 1000, `${value} within [${before}, ${after}]`)
    } finally {
      await knex.destroy()
    }
  })
})

it('refuses a knex client it does not support, naming the supported ones', async () => {
  const knex = knexFactory({ client: 'redshift', connection: {} })
  try {
    assert.throws(() => new LockStore(knex), (error: unknown) => {
      assert.ok(error instanceof UnsupportedDatabaseError)
      assert.equal(error.code, 'UNSUPPORTED_DATABASE')
      assert.match(error.message, /"redshift".*pg, better-sqlite3/)
      return true
    })
  } finally {
    await knex.destroy()
  }
})
