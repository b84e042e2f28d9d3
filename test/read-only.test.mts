// Read-only sessions and files, on every database: a store and createLockTable refuse them with a
// ReadOnlyDatabaseError before any write, and a statement refused as read-only later is told
// apart from other failures. A real PostgreSQL standby: test/pg-standby.test.mts.
import assert from 'node:assert/strict'
import { after, before, it } from 'node:test'
import type { Knex } from 'knex'
import { findDialect } from '../dialects/index.js'
import { LockStore, ReadOnlyDatabaseError, createLockTable, dropLockTable } from '../src/index.js'
import { readOnlyFailure } from '../src/read-only.js'
import { statementsDuring } from './harness.mjs'
import { forEachDatabase } from './matrix.mjs'
import { connect, uniqueName, type ConnectionTweaks, type Database } from './targets.mjs'

const READ_ONLY: Record<Database, ReadonlyArray<{ how: string; tweaks: ConnectionTweaks; says: RegExp }>> = {
  postgres: [{ how: 'default_transaction_read_only = on', tweaks: { sessionSql: 'SET default_transaction_read_only = on' }, says: /default_transaction_read_only is on/ }],
  mysql: [{ how: 'SET SESSION TRANSACTION READ ONLY', tweaks: { sessionSql: 'SET SESSION TRANSACTION READ ONLY' }, says: /(tx|transaction)_read_only is ON/ }],
  sqlite: [
    { how: 'PRAGMA query_only = 1', tweaks: { sessionSql: 'PRAGMA query_only = 1' }, says: /query_only is on/ },
    { how: 'a file opened read-only', tweaks: { sqliteReadonly: true }, says: /file is opened read-only/ },
  ],
}

/** An assert.rejects check: a ReadOnlyDatabaseError (not a standby) whose one-line message says read-only and `says`. */
const readOnly = (says: RegExp) => (error: unknown): boolean => {
  assert.ok(error instanceof ReadOnlyDatabaseError, String(error))
  assert.equal(error.code, 'DATABASE_READ_ONLY')
  assert.equal(error.standby, false)
  assert.match(error.message, /^worker-locks cannot write to (PostgreSQL|MariaDB|MySQL|SQLite) [^\n]*read-only[^\n]*$/)
  assert.match(error.message, says)
  return true
}

forEachDatabase('read-only connections', (database) => {
  const tableName = uniqueName('wl_ro')
  let writable: Knex
  before(async () => {
    writable = connect(database)
    await createLockTable(writable, { tableName })
  })
  after(async () => {
    await dropLockTable(writable, { tableName })
    await writable.destroy()
  })

  for (const { how, tweaks, says } of READ_ONLY[database]) {
    it(`refuses ${how} at init(), at the first acquire and in createLockTable, before any write`, async () => {
      const knex = connect(database, { ...tweaks, poolMax: 1 })
      const store = new LockStore(knex, { tableName })
      const created = uniqueName('wl_ro_new')
      try {
        const { sql } = await statementsDuring(knex, async () => {
          await assert.rejects(store.init(), readOnly(says))
          await assert.rejects(store.tryAcquireLock('read-only'), readOnly(says))
          await assert.rejects(store.tryAcquireMultiLock([{ name: 'read-only', write: true }]), readOnly(says))
          await assert.rejects(store.acquireLock('read-only', '', { timeoutMs: 60_000 }), readOnly(says), 'a wait rejects at once')
          await assert.rejects(createLockTable(knex, { tableName: created }), readOnly(says))
        })
        assert.ok(sql.length > 0)
        assert.deepEqual(sql.filter((text) => !/^\s*(select|show)\b/i.test(text)), [], 'only the server\'s facts were asked')
        assert.equal(await writable.schema.hasTable(created), false)
        assert.deepEqual(await writable(tableName).select('lock_name'), [])
      } finally {
        await store.close()
        await knex.destroy()
      }
    })

    it(`tells a statement refused by ${how} from other failures`, async () => {
      const knex = connect(database, { ...tweaks, poolMax: 1 })
      const dialect = findDialect(knex)
      assert.ok(dialect)
      try {
        const refused: unknown = await knex(tableName).where({ lock_name: 'nobody' }).delete().then(() => undefined, (error: unknown) => error)
        assert.ok(refused instanceof Error, 'the delete was refused')
        assert.equal(dialect.isReadOnly(refused), true, String(refused))
        const mapped = readOnlyFailure(dialect, refused, 'the server')
        assert.ok(mapped instanceof ReadOnlyDatabaseError)
        assert.equal(mapped.cause, refused)
        assert.match(mapped.message, /^worker-locks cannot write to the server: [^\n]*read-only/)
        const missing: unknown = await writable.raw(`SELECT * FROM ${uniqueName('wl_none')}`).then(() => undefined, (error: unknown) => error)
        assert.ok(missing instanceof Error)
        assert.equal(dialect.isReadOnly(missing), false)
        assert.equal(readOnlyFailure(dialect, missing), undefined)
      } finally {
        await knex.destroy()
      }
    })
  }
})
