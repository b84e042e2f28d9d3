// What only MySQL/MariaDB does: mysql2's CLIENT_FOUND_ROWS flag changes what affectedRows means,
// so the native acquire must read its outcome another way, and a renewal in the same millisecond
// changes no row. Both are checked with the flag on (mysql2's default) and off. And no statement
// ends in RETURNING, whose reply a Galera node drops when the insert loses certification.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { Knex } from 'knex'
import { database, type AcquireRequest, type ServerFacts } from '../../dialects/index.js'
import { mysqlDialect, mysqlVersionProblem } from '../../dialects/mysql.js'
import { LockTable } from '../../src/lock-table.js'
import type { HeldLock } from '../../src/lock.js'
import { LockStore, ManualClock, UnsupportedDatabaseError, createLockTable, dropLockTable } from '../../src/index.js'
import { forEachDatabase, forEachTarget } from '../matrix.mjs'
import { Harness, statementsDuring } from '../harness.mjs'
import { connect, uniqueName } from '../targets.mjs'

// The flag matters to the native path only, which this calls directly.
forEachDatabase('CLIENT_FOUND_ROWS', () => {
  for (const flags of [['FOUND_ROWS'], ['-FOUND_ROWS']]) {
    describe(`mysql2 flags ${flags.join(',')}`, () => {
      const tableName = uniqueName('wl_flags')
      let knex: Knex
      let facts: ServerFacts
      before(async () => {
        knex = connect('mysql', { mysqlFlags: flags, poolMax: 1 }) // one connection: session state carries over
        await createLockTable(knex, { tableName })
        facts = await mysqlDialect.detect(database(knex, mysqlDialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }))
      })
      after(async () => {
        await dropLockTable(knex, { tableName })
        await knex.destroy()
      })
      const request = (instanceName: string, token: string, nowMs: number): AcquireRequest =>
        ({ table: tableName, name: 'n', key: 'k', instanceName, token, leaseMs: 100, nowMs })
      const row = async () => {
        const found = await knex(tableName).first('token', 'fence')
        return { token: String(found?.token), fence: BigInt(found?.fence ?? -1) }
      }

      it('tells inserted, refused, taken over and reclaimed apart on one connection, with the fence written', async () => {
        const acquired = async (r: AcquireRequest) => {
          const fence = await mysqlDialect.acquireNative(database(knex, mysqlDialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }), r, facts)
          if (fence !== null) assert.deepEqual(await row(), { token: r.token, fence }, 'the fence handed back is the row\'s')
          return fence !== null
        }
        assert.equal(await acquired(request('A', 'tA', 1000)), true, 'free: inserted')
        const first = await row()
        assert.equal(await acquired(request('B', 'tB', 1050)), false, 'held: refused')
        assert.equal(await acquired(request('B', 'tB2', 1100)), false, 'at the timeout: refused')
        assert.deepEqual(await row(), first, 'a refusal changes neither token nor fence')
        assert.equal(await acquired(request('B', 'tB3', 1101)), true, 'stale: taken over')
        const takenOver = await row()
        assert.equal(takenOver.token, 'tB3')
        assert.ok(takenOver.fence > first.fence)
        assert.equal(await acquired(request('B', 'tB4', 1102)), true, 'same instance: reclaimed')
        const reclaimed = await knex(tableName).first('instance_name', 'token', 'last_renewed_ts', 'fence')
        assert.deepEqual([String(reclaimed.instance_name), String(reclaimed.token), Number(reclaimed.last_renewed_ts)], ['B', 'tB4', 1102])
        assert.ok(BigInt(reclaimed.fence) > takenOver.fence)
        assert.equal(await acquired(request('C', 'tC', 1103)), false, 'refused again')
        await knex(tableName).delete()
        assert.equal(await acquired(request('C', 'tC2', 1104)), true, 'a refusal does not leak into the next insert')
        assert.ok((await row()).fence > BigInt(reclaimed.fence), 'the fence grows past a deleted row\'s')
      })

      it('keeps a lock renewed twice in the same millisecond', async () => {
        await knex(tableName).delete()
        assert.notEqual(await mysqlDialect.acquireNative(database(knex, mysqlDialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }), request('A', 'tA', 5000), facts), null)
        const table = new LockTable(knex, mysqlDialect, { tableName, strategy: 'native', durableReleases: true, preparedStatements: false, statementTimeoutMs: 30_000, renewalTimeoutMs: 5_000 })
        const held = { id: 'n\0k', mode: 'exclusive', name: 'n', key: 'k', token: 'tA' } as unknown as HeldLock
        assert.deepEqual(await table.renew([held], 5000), new Set(['tA']))
        assert.deepEqual(await table.renew([held, { ...held, token: 'other' }], 5000), new Set(['tA']))
      })
    })
  }
}, 'mysql')

forEachTarget('statements a Galera node answers', (target) => {
  const h = new Harness(target)
  it('acquires, renews, lists and releases plain and read/write locks without INSERT … RETURNING', async () => {
    const clock = new ManualClock()
    const store = h.clockedStore(clock)
    const { sql } = await statementsDuring(h.knex, async () => {
      const lock = await store.tryAcquireLock(h.lockName())
      const rw = await store.tryAcquireMultiLock([{ name: h.lockName('rw'), write: true }, { name: h.lockName('rw'), write: false }])
      assert.ok(lock && rw)
      assert.equal(await h.clockedStore(clock).tryAcquireLock(lock.name), null)
      await store.listLocks()
      await clock.advance(2_000) // a renewal
      await lock.release()
      await rw.release()
    })
    assert.ok(sql.length >= 5, sql.join('\n'))
    assert.deepEqual(sql.filter((text) => /\bRETURNING\b/i.test(text)), [])
  })
}, ['mysql'])

describe('mysql: server checks', () => {
  it('knows which versions have JSON_TABLE', () => {
    for (const ok of ['10.6.0-MariaDB', '10.11.19-MariaDB-0+deb12u1', '11.4.2-MariaDB', '8.0.4', '8.0.36', '9.1.0']) assert.equal(mysqlVersionProblem(ok), '', ok)
    for (const old of ['10.5.23-MariaDB', '10.3.39-MariaDB', '8.0.3', '5.7.44-log']) assert.match(mysqlVersionProblem(old), /needs (MariaDB 10\.6|MySQL 8\.0\.4)/, old)
  })
})

forEachDatabase('NO_BACKSLASH_ESCAPES', () => {
  it('refuses a session in which mysql2 cannot quote values, before any lock SQL', async () => {
    const knex = connect('mysql', { poolMax: 1, sessionSql: "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')" })
    try {
      const store = new LockStore(knex, { tableName: 'never_created' })
      await assert.rejects(store.tryAcquireLock("it's"), (error: unknown) => {
        assert.ok(error instanceof UnsupportedDatabaseError)
        assert.match(error.message, /NO_BACKSLASH_ESCAPES/)
        return true
      })
    } finally {
      await knex.destroy()
    }
  })
}, 'mysql')

forEachDatabase('contention on one row', () => {
  // Found by the contention benchmark: InnoDB chose a release's DELETE as the victim of a
  // deadlock with acquirers of the same row (1213), and release() failed. Releases now retry.
  it('releases under heavy contention on one key without a deadlock error', async () => {
    const tableName = uniqueName('wl_deadlock')
    const setup = connect('mysql', { poolMax: 1 })
    await createLockTable(setup, { tableName })
    const knexes = Array.from({ length: 8 }, () => connect('mysql', { poolMax: 2 }))
    const stores = knexes.map((knex) => new LockStore(knex, { tableName, lockTimeoutMs: 60_000, renewalIntervalMs: 15_000, backoff: { initialDelayMs: 1, maxDelayMs: 5 } }))
    try {
      let sections = 0
      await Promise.all(stores.map(async (store) => {
        for (let i = 0; i < 50; i++) {
          const lock = await store.acquireLock('hot')
          sections++
          await lock.release()
        }
      }))
      assert.equal(sections, 400)
    } finally {
      await Promise.all(stores.map((s) => s.close()))
      await Promise.all(knexes.map((k) => k.destroy()))
      await dropLockTable(setup, { tableName })
      await setup.destroy()
    }
  })
}, 'mysql')

forEachDatabase('session settings', () => {
  const settings = [
    { setting: 'sql_mode ORACLE', sessionSql: "SET SESSION sql_mode = 'ORACLE'", says: /sql_mode ORACLE/ },
    // Part of ORACLE: the native acquire's assignments must see the ones before them.
    { setting: 'sql_mode SIMULTANEOUS_ASSIGNMENT', sessionSql: "SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')", says: /sql_mode SIMULTANEOUS_ASSIGNMENT/ },
    { setting: 'autocommit off', sessionSql: 'SET autocommit = 0', says: /autocommit is off/ },
  ]
  for (const { setting, sessionSql, says } of settings) {
    it(`refuses a session with ${setting} at init() and the first acquire, by name, before any lock SQL`, async () => {
      const tableName = uniqueName('wl_session')
      const setup = connect('mysql', { poolMax: 1 })
      const knex = connect('mysql', { poolMax: 1, sessionSql })
      try {
        await createLockTable(setup, { tableName })
        const store = new LockStore(knex, { tableName })
        const refused = (error: unknown): boolean => {
          assert.ok(error instanceof UnsupportedDatabaseError, String(error))
          assert.match(error.message, says)
          return true
        }
        const { sql } = await statementsDuring(knex, async () => {
          await assert.rejects(store.init(), refused)
          await assert.rejects(store.tryAcquireMultiLock([{ name: 'settings', write: true }]), refused)
        })
        assert.deepEqual(sql.filter((text) => !/^\s*show session variables/i.test(text)), [])
        await store.close()
      } finally {
        await knex.destroy()
        await dropLockTable(setup, { tableName })
        await setup.destroy()
      }
    })
  }
}, 'mysql')

forEachDatabase('connection charsets', () => {
  it('takes names as UTF-8 on a utf8mb4 connection, and refuses utf8 (mb3) and latin1 connections on the same table before any lock SQL', async () => {
    const tableName = uniqueName('wl_charset')
    const [utf8mb4, utf8, latin1] = ['UTF8MB4_GENERAL_CI', 'UTF8_GENERAL_CI', 'LATIN1_SWEDISH_CI'].map((mysqlCharset) => connect('mysql', { mysqlCharset, poolMax: 1 }))
    // knex's schema builder writes the charset option into CREATE TABLE, where a collation is no charset.
    const setup = connect('mysql', { poolMax: 1 })
    const stores: LockStore[] = []
    const store = (knex: Knex): LockStore => {
      const made = new LockStore(knex, { tableName })
      stores.push(made)
      return made
    }
    try {
      await createLockTable(setup, { tableName })
      const holder = store(utf8mb4!)
      for (const key of ['é', 'a😀c']) {
        assert.ok(await holder.tryAcquireLock('charset', key), key)
        assert.equal(await store(utf8mb4!).tryAcquireLock('charset', key), null, key)
      }
      for (const [knex, charset] of [[utf8!, 'utf8mb3'], [latin1!, 'latin1']] as const) {
        const refused = (error: unknown): boolean => {
          assert.ok(error instanceof UnsupportedDatabaseError, `${charset}: ${String(error)}`)
          assert.match(error.message, new RegExp(`character_set_client is ${charset}\\b.*charset 'utf8mb4'`))
          assert.doesNotMatch(error.message, /\n/)
          return true
        }
        const other = store(knex)
        const { sql } = await statementsDuring(knex, async () => {
          await assert.rejects(other.init(), refused)
          for (const key of ['é', 'a😀c']) await assert.rejects(other.tryAcquireLock('charset', key), refused)
        })
        assert.deepEqual(sql.filter((text) => !/^\s*show session variables/i.test(text)), [], charset)
      }
      const rows = await utf8mb4!(tableName).select(utf8mb4!.raw('HEX(lock_key) AS hex'), 'instance_name')
      assert.deepEqual(rows.map((r: { hex: string }) => r.hex).sort(), ['61F09F988063', 'C3A9'], 'one row per name, its key in UTF-8')
      assert.ok(rows.every((r: { instance_name: unknown }) => String(r.instance_name) === holder.instanceName))
    } finally {
      await Promise.all(stores.map((s) => s.close()))
      await dropLockTable(setup, { tableName })
      await Promise.all([setup, utf8mb4, utf8, latin1].map((k) => k?.destroy()))
    }
  })
}, 'mysql')
