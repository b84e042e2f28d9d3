'use strict'
// worker-locks migration 4: hand-over to the first in the waiting line (PostgreSQL only).
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// Adds `instance_name` to `<table>_waiters` (migration 3): the instance name of the waiting
// store. With it, a release can give the lock straight to the store first in line, in the
// releasing statement, writing that store's instance name into the lock row, instead of
// deleting the row and waking the store to come and take it. Places written without it (stores
// of an older worker-locks) are woken as before. On SQLite and MySQL this migration does nothing.

const DEFAULT_TABLE = 'worker_locks'
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function waitersOf(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return `${tableName}_waiters`
}

async function upTable(knex, tableName) {
  if (knex.client.dialect !== 'postgresql') return
  // IF NOT EXISTS: processes migrating at once, or a second run, find the column there.
  await knex.raw('ALTER TABLE ?? ADD COLUMN IF NOT EXISTS instance_name VARCHAR(255)', [waitersOf(tableName)])
}

async function downTable(knex, tableName) {
  if (knex.client.dialect !== 'postgresql') return
  const line = waitersOf(tableName)
  if (await knex.schema.hasTable(line)) await knex.raw('ALTER TABLE ?? DROP COLUMN IF EXISTS instance_name', [line])
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
