// The shipped migrations, through the knex migrator and through createLockTable.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockStore, LockTableError, createLockTable, dropLockTable, migrationsDirectory } from '../../src/index.js'
import { uniqueName } from '../targets.mjs'
import type { Harness } from '../harness.mjs'

const RW_ACQUIRE_SIGNATURE = 'text[], text[], text[], boolean[], text, bigint, bigint, text'

export function schemaSuite(h: Harness): void {
  /** Whether PostgreSQL has the read/write routine of migration 6 for `tableName` (never elsewhere). */
  const routineExists = async (tableName: string): Promise<boolean> => h.target.database === 'postgres'
    && (await h.knex.raw('SELECT to_regprocedure(?) IS NOT NULL AS found', [`"${tableName}_rw_acquire"(${RW_ACQUIRE_SIGNATURE})`]) as { rows: Array<{ found: boolean }> }).rows[0]!.found

  it('migrates up and down with the knex migrator, table name from userParams', async () => {
    const tableName = uniqueName('wl_mig')
    const knex = h.knex.withUserParams({ workerLocksTableName: tableName })
    const config = { directory: migrationsDirectory, tableName: `${tableName}_migrations`, loadExtensions: ['.cjs'] }
    try {
      const [, applied] = await knex.migrate.latest(config)
      assert.equal(applied.length, 6)
      if (h.target.database === 'sqlite') {
        // Migration 4 drops SQLite's index on the fence, which the draw no longer reads; its down brings it back.
        const fenceIndex = async () => (await h.knex.raw("SELECT name FROM sqlite_master WHERE type = 'index' AND name = ?", [`${tableName}_fence_idx`])).length
        assert.equal(await fenceIndex(), 0)
        await knex.migrate.down(config) // migration 6, nothing on SQLite
        await knex.migrate.down(config) // migration 5, nothing on SQLite
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
      // Migration 5: PostgreSQL's fence epoch (see docs/internals.md), nothing elsewhere.
      assert.equal(await h.knex.schema.hasTable(`${tableName}_fence_epoch`), h.target.database === 'postgres')
      // Migration 6: PostgreSQL's read/write routine, nothing elsewhere.
      assert.equal(await routineExists(tableName), h.target.database === 'postgres')
      const [, again] = await knex.migrate.latest(config)
      assert.deepEqual(again, [], 'a second run applies nothing')
      const store = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      assert.ok(await store.tryAcquireLock('migrated'))
      await store.close()
      await knex.migrate.rollback(config, true)
      assert.equal(await h.knex.schema.hasTable(tableName), false)
      assert.equal(await h.knex.schema.hasTable(`${tableName}_waiters`), false)
      for (const table of ['rw_keys', 'rw_holders']) assert.equal(await h.knex.schema.hasTable(`${tableName}_${table}`), false, table)
      assert.equal(await h.knex.schema.hasTable(`${tableName}_fence_epoch`), false)
      assert.equal(await routineExists(tableName), false)
    } finally {
      if (h.target.database === 'postgres') {
        await h.knex.raw('DROP FUNCTION IF EXISTS ??()', [`${tableName}_fence_epoch_fn`])
        await h.knex.raw(`DROP FUNCTION IF EXISTS ??(${RW_ACQUIRE_SIGNATURE})`, [`${tableName}_rw_acquire`])
      }
      await h.knex.schema.dropTableIfExists(`${tableName}_fence_epoch`)
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

  // Without the fence epoch's trigger, fences could go back after a failover: such a table is not migrated.
  it('refuses on PostgreSQL a table whose fence epoch trigger or table (migration 5) or read/write routine (migration 6) is missing', { skip: h.target.database !== 'postgres' && 'PostgreSQL only' }, async () => {
    const tableName = uniqueName('wl_epoch')
    try {
      await createLockTable(h.knex, { tableName })
      await h.knex.raw('DROP TRIGGER ?? ON ??', [`${tableName}_fence_epoch`, `${tableName}_rw_keys`])
      const store = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      const error = await store.init().then(() => undefined, (e: unknown) => e)
      assert.ok(error instanceof LockTableError, String(error))
      assert.match(error.message, /fence epoch/)
      await store.close()
      await h.knex.schema.dropTable(`${tableName}_fence_epoch`)
      const again = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      assert.ok(await again.tryAcquireLock('x').then(() => undefined, (e: unknown) => e) instanceof LockTableError)
      await again.close()
      await createLockTable(h.knex, { tableName })
      const migrated = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      assert.ok(await migrated.tryAcquireLock('x'), 'migrating again repairs it')
      await migrated.close()
      // Migration 6: the read/write routine, which the native strategy calls.
      await h.knex.raw(`DROP FUNCTION ??(${RW_ACQUIRE_SIGNATURE})`, [`${tableName}_rw_acquire`])
      const withoutRoutine = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      const refused = await withoutRoutine.tryAcquireReadWriteLock('x', '', { write: true }).then(() => undefined, (e: unknown) => e)
      assert.ok(refused instanceof LockTableError, String(refused))
      assert.match(refused.message, /read\/write routine/)
      await withoutRoutine.close()
      await createLockTable(h.knex, { tableName })
      const repaired = new LockStore(h.knex, { tableName, strategy: h.target.strategy })
      assert.ok(await repaired.tryAcquireReadWriteLock('x', '', { write: true }), 'migrating again brings the routine back')
      await repaired.close()
    } finally {
      await dropLockTable(h.knex, { tableName })
    }
  })

  it('validates the table name of createLockTable', async () => {
    await assert.rejects(createLockTable(h.knex, { tableName: 'x; drop' }), TypeError)
  })
}
