// What only SQLite does: the library version decides whether the native acquire can run.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { sqliteSupportsNative } from '../../dialects/sqlite.js'
import { LockStore, UnsupportedDatabaseError, createLockTable, dropLockTable } from '../../src/index.js'
import { connect, uniqueName } from '../targets.mjs'

describe('sqlite: version detection', () => {
  it('needs 3.35 (RETURNING) for the native acquire', () => {
    for (const version of ['3.35.0', '3.35.5', '3.49.1', '3.100.0', '4.0.0']) assert.equal(sqliteSupportsNative(version), true, version)
    for (const version of ['3.34.1', '3.24.0', '3.9.2', '2.8.17', 'garbage']) assert.equal(sqliteSupportsNative(version), false, version)
  })

  it('picks native on the bundled library, emulated on an old one, and refuses to force native there', async () => {
    // SQLite lets an application function replace sqlite_version(), which makes this real
    // database report an old library. Only a one-connection pool sees the replacement.
    const makeKnex = (version: string | undefined) => {
      const knex = connect('sqlite', { poolMax: 1 })
      if (version !== undefined) {
        const acquire = knex.client.acquireRawConnection.bind(knex.client)
        knex.client.acquireRawConnection = async () => {
          const conn = await acquire()
          conn.function('sqlite_version', () => version)
          return conn
        }
      }
      return knex
    }
    const tableName = uniqueName('wl_sqlite_ver')
    const current = makeKnex(undefined)
    const old = makeKnex('3.34.1')
    try {
      await createLockTable(current, { tableName })
      const auto = new LockStore(current, { tableName })
      await auto.init()
      assert.equal(auto.strategy, 'native')

      const fallback = new LockStore(old, { tableName })
      assert.ok(await fallback.tryAcquireLock('on-old-sqlite'))
      assert.equal(fallback.strategy, 'emulated')
      await fallback.close()

      const forced = new LockStore(old, { tableName, strategy: 'native' })
      await assert.rejects(forced.init(), (error: unknown) => {
        assert.ok(error instanceof UnsupportedDatabaseError)
        assert.match(error.message, /strategy 'native' cannot run on SQLite 3\.34\.1: .*3\.35/)
        return true
      })
      await assert.rejects(forced.tryAcquireLock('x'), UnsupportedDatabaseError)
    } finally {
      await dropLockTable(current, { tableName })
      await current.destroy()
      await old.destroy()
    }
  })
})
