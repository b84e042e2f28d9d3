// What only MySQL/MariaDB does: mysql2's CLIENT_FOUND_ROWS flag changes what affectedRows means,
// so the native acquire must read its outcome another way, and a renewal in the same millisecond
// changes no row. Both are checked with the flag on (mysql2's default) and off.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { Knex } from 'knex'
import type { AcquireRequest } from '../../dialects/index.js'
import { mysqlDialect } from '../../dialects/mysql.js'
import { LockTable } from '../../src/lock-table.js'
import { createLockTable, dropLockTable } from '../../src/index.js'
import { forEachDatabase } from '../matrix.mjs'
import { connect, uniqueName } from '../targets.mjs'

// The flag matters to the native path only, which this calls directly.
forEachDatabase('CLIENT_FOUND_ROWS', () => {
  for (const flags of [['FOUND_ROWS'], ['-FOUND_ROWS']]) {
    describe(`mysql2 flags ${flags.join(',')}`, () => {
      const tableName = uniqueName('wl_flags')
      let knex: Knex
      before(async () => {
        knex = connect('mysql', { mysqlFlags: flags, poolMax: 1 }) // one connection: session state carries over
        await createLockTable(knex, { tableName })
      })
      after(async () => {
        await dropLockTable(knex, { tableName })
        await knex.destroy()
      })
      const request = (instanceName: string, token: string, nowMs: number): AcquireRequest =>
        ({ table: tableName, name: 'n', key: 'k', instanceName, token, lockTimeoutMs: 100, nowMs })
      const holder = async () => String((await knex(tableName).first('token'))?.token)

      it('tells inserted, refused, taken over and reclaimed apart on one connection', async () => {
        const acquired = async (r: AcquireRequest) => (await mysqlDialect.acquireNative(knex, r)) !== null
        assert.equal(await acquired(request('A', 'tA', 1000)), true, 'free: inserted')
        assert.equal(await acquired(request('B', 'tB', 1050)), false, 'held: refused')
        assert.equal(await acquired(request('B', 'tB2', 1100)), false, 'at the timeout: refused')
        assert.equal(await holder(), 'tA')
        assert.equal(await acquired(request('B', 'tB3', 1101)), true, 'stale: taken over')
        assert.equal(await holder(), 'tB3')
        assert.equal(await acquired(request('B', 'tB4', 1102)), true, 'same instance: reclaimed')
        const row = await knex(tableName).first('instance_name', 'token', 'last_renewed_ts')
        assert.deepEqual([String(row.instance_name), String(row.token), Number(row.last_renewed_ts)], ['B', 'tB4', 1102])
        assert.equal(await acquired(request('C', 'tC', 1103)), false, 'refused again')
        await knex(tableName).delete()
        assert.equal(await acquired(request('C', 'tC2', 1104)), true, 'a refusal does not leak into the next insert')
      })

      it('keeps a lock renewed twice in the same millisecond', async () => {
        await knex(tableName).delete()
        assert.notEqual(await mysqlDialect.acquireNative(knex, request('A', 'tA', 5000)), null)
        const table = new LockTable(knex, mysqlDialect, tableName, 100, 5_000)
        const row = { name: 'n', key: 'k', token: 'tA' }
        assert.deepEqual(await table.renewMany([row], 5000), new Set(['tA']))
        assert.deepEqual(await table.renewMany([row, { ...row, token: 'other' }], 5000), new Set(['tA']))
      })
    })
  }
}, 'mysql')
