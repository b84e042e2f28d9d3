// A failed attempt never leaves a transaction open. Triggers make inserts of one key fail on
// purpose: a read/write holder's, inside the read/write transaction (alone, and after another
// part of a multi-lock was written), and a plain lock's (inside the emulated transaction where
// there is one). Then the store's one connection must commit what it writes (another connection
// sees it) and hold nothing (another connection takes the same locks, its waits bounded).
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockDatabaseError } from '../../src/index.js'
import type { Harness } from '../harness.mjs'
import type { Database } from '../targets.mjs'

/** The key whose inserts the triggers refuse. */
const REFUSED_KEY = 'refused-by-trigger'

/** A session setting that makes a wait for a lock left held fail within seconds instead of hanging the run. */
const BOUNDED_WAITS: Record<Database, string | undefined> = {
  postgres: "SET lock_timeout = '5s'",
  mysql: 'SET SESSION lock_wait_timeout = 5, SESSION innodb_lock_wait_timeout = 5',
  sqlite: undefined, // the harness's busy_timeout
}

/** Triggers that refuse inserts of REFUSED_KEY into `tables`. */
function refuseInserts(h: Harness, tables: readonly string[]): { install(): Promise<void>; remove(knex: typeof h.knex): Promise<void> } {
  const trigger = (table: string): string => `${table}_refuse`
  switch (h.target.database) {
    case 'postgres': {
      const fn = `${h.tableName}_refuse_fn`
      return {
        async install() {
          await h.knex.raw(`CREATE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'insert refused on purpose'; END $$`, [fn])
          for (const table of tables) {
            await h.knex.raw(`CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW WHEN (NEW.lock_key = '${REFUSED_KEY}') EXECUTE FUNCTION ??()`, [trigger(table), table, fn])
          }
        },
        async remove(knex) {
          for (const table of tables) await knex.raw('DROP TRIGGER IF EXISTS ?? ON ??', [trigger(table), table])
          await knex.raw('DROP FUNCTION IF EXISTS ??()', [fn])
        },
      }
    }
    case 'mysql':
      return {
        async install() {
          for (const table of tables) {
            await h.knex.raw(`CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW BEGIN
              IF NEW.lock_key = '${REFUSED_KEY}' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'insert refused on purpose'; END IF; END`, [trigger(table), table])
          }
        },
        async remove(knex) { for (const table of tables) await knex.raw('DROP TRIGGER IF EXISTS ??', [trigger(table)]) },
      }
    case 'sqlite':
      return {
        async install() {
          for (const table of tables) {
            await h.knex.raw(`CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW WHEN NEW.lock_key = '${REFUSED_KEY}'
              BEGIN SELECT RAISE(ABORT, 'insert refused on purpose'); END`, [trigger(table), table])
          }
        },
        async remove(knex) { for (const table of tables) await knex.raw('DROP TRIGGER IF EXISTS ??', [trigger(table)]) },
      }
  }
}

const text = (value: unknown): string => (Buffer.isBuffer(value) ? value.toString('utf8') : String(value))

export function failedAttemptsSuite(h: Harness): void {
  it('leaves no transaction open after attempts that fail inside one', async () => {
    const holders = `${h.tableName}_rw_holders`
    // One connection: whatever a failed attempt left on it, the next call meets.
    const knex = h.connection({ poolMax: 1 })
    const other = h.connection({ ...(BOUNDED_WAITS[h.target.database] ? { sessionSql: BOUNDED_WAITS[h.target.database] } : {}) })
    const store = h.store({}, knex)
    const name = h.lockName('failing')
    const both = [{ name, key: 'a-first', write: true }, { name, key: REFUSED_KEY, write: true }]
    const triggers = refuseInserts(h, [h.tableName, holders])
    await triggers.install()
    let failed = true
    try {
      await assert.rejects(store.tryAcquireReadWriteLock(name, REFUSED_KEY, { write: true }), LockDatabaseError)
      await assert.rejects(store.tryAcquireMultiLock(both), LockDatabaseError, 'the first part was written before the second failed')
      await assert.rejects(store.tryAcquireLock(name, REFUSED_KEY), LockDatabaseError)
      if (h.target.database === 'sqlite') {
        const connection = await knex.client.acquireConnection() as { inTransaction: boolean }
        try {
          assert.equal(connection.inTransaction, false)
        } finally {
          await knex.client.releaseConnection(connection)
        }
      }
      failed = false
    } finally {
      // What failed above is the news, not the removal it may make fail in turn.
      await triggers.remove(other).catch((error: unknown) => { if (!failed) throw error })
    }

    const plain = await store.tryAcquireLock(name, 'after')
    const multi = await store.tryAcquireMultiLock(both)
    assert.ok(plain && multi)
    const seen = async (table: string): Promise<string[]> => (await other(table).where({ lock_name: name }).select('lock_key')).map((row: { lock_key: unknown }) => text(row.lock_key)).sort()
    assert.deepEqual(await seen(h.tableName), ['after'], 'another connection sees the plain lock: committed')
    assert.deepEqual(await seen(holders), ['a-first', REFUSED_KEY], 'another connection sees the holders: committed')
    await plain.release()
    await multi.release()

    const taker = h.store({}, other)
    const again = await taker.tryAcquireMultiLock(both)
    assert.ok(again, 'another connection takes the multi-lock')
    assert.ok(await taker.tryAcquireLock(name, REFUSED_KEY), 'and the plain lock the failed attempt tried')
    assert.ok(await taker.tryAcquireReadWriteLock(name, 'never-tried', { write: true }))
  })
}
