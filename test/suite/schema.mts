// The shipped migrations, through the knex migrator and through createLockTable.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockStore, createLockTable, dropLockTable, migrationsDirectory } from '../../src/index.js'
import { uniqueName } from '../targets.mjs'
import type { Harness } from '../harness.mjs'

export function schemaSuite(h: Harness): void {
  it('migrates up and down with the knex migrator, table name from userParams', async () => {
    const tableName = uniqueName('wl_mig')
    const knex = h.knex.withUserParams({ workerLocksTableName: tableName })
    const config = { directory: migrationsDirectory, tableName: `${tableName}_migrations`, loadExtensions: ['.cjs'] }
    try {
      const [, applied] = await knex.migrate.latest(config)
      assert.equal(applied.length, 4)
      if (h.target.database === 'sqlite') {
        // Migration 4 drops SQLite's index on the fence, which the draw no longer reads; its down brings it back.
        const fenceIndex = async () => (await h.knex.raw("SELECT name FROM sqlite_master WHERE type = 'index' AND name = ?", [`${tableName}_fence_idx`])).length
        assert.equal(await fenceIndex(), 0)
        await knex.migrate.down(config)
        assert.equal(await fenceIndex(), 1)
        await knex.migrate.latest(config)
        assert.equal(await fenceIndex(), 0)
      }
      assert.equal(await h.knex.schema.hasTable(tableName), true)
      for (const table of ['rw_keys', 'rw_holders']) assert.equal(await h.knex.schema.hasTable(`${tableName}_${table}`), true, table)
      for (const column of ['fence', 'lease_ms']) assert.equal(await h.knex.schema.hasColumn(tableName, column), true, column)
      // Migration 1 made PostgreSQL's waiting line, which only versions up to 0.1 use (see docs/internals.md).
      assert.equal(await h.knex.schema.hasTable(`${tableName}_waiters`), h.target.database === 'postgres')
      const [, again] = await knex.migrate.latest(config)
      assert.deepEqual(again, [], 'a second run applies nothing')
      const store = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      assert.ok(await store.tryAcquireLock('migrated'))
      await store.close()
      await knex.migrate.rollback(config, true)
      assert.equal(await h.knex.schema.hasTable(tableName), false)
      assert.equal(await h.knex.schema.hasTable(`${tableName}_waiters`), false)
      for (const table of ['rw_keys', 'rw_holders']) assert.equal(await h.knex.schema.hasTable(`${tableName}_${table}`), false, table)
    } finally {
      await h.knex.schema.dropTableIfExists(`${tableName}_rw_holders`)
      await h.knex.schema.dropTableIfExists(`${tableName}_rw_keys`)
      await h.knex.schema.dropTableIfExists(`${tableName}_waiters`)
      await h.knex.schema.dropTableIfExists(tableName)
      await h.knex.schema.dropTableIfExists(`${tableName}_migrations`)
      await h.knex.schema.dropTableIfExists(`${tableName}_migrations_lock`)
    }
  })

  it('creates the table once when several processes race to create it', async () => {
    const tableName = uniqueName('wl_race')
    const connections = [h.connection({ poolMax: 1 }), h.connection({ poolMax: 1 }), h.connection({ poolMax: 1 })]
    try {
      await Promise.all(connections.map((k) => createLockTable(k, { tableName })))
      await createLockTable(h.knex, { tableName }) // and again, idempotent
      assert.equal(await h.knex.schema.hasTable(`${tableName}_waiters`), h.target.database === 'postgres')
      assert.equal(await h.knex.schema.hasColumn(tableName, 'lease_ms'), true)
      const stores = connections.map((k) => new LockStore(k, { tableName, strategy: h.target.strategy }))
      const locks = await Promise.all(stores.map((s) => s.tryAcquireLock('once')))
      assert.equal(locks.filter(Boolean).length, 1)
      await Promise.all(stores.map((s) => s.close()))
    } finally {
      await dropLockTable(h.knex, { tableName })
    }
    assert.equal(await h.knex.schema.hasTable(tableName), false)
    assert.equal(await h.knex.schema.hasTable(`${tableName}_waiters`), false)
  })

  it('validates the table name of createLockTable', async () => {
    await assert.rejects(createLockTable(h.knex, { tableName: 'x; drop' }), TypeError)
  })
}
