'use strict'
// worker-locks migration 2: each row carries its holder's lease.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// `lease_ms`: how long the row stays held without a renewal, written by the store that acquired
// it (its lockTimeoutMs). Whether a row may be taken over is judged by the lease in the row, so
// a worker configured with a shorter timeout cannot take a lock from a holder that renews on its
// own schedule. Safe on a live table: adding a column with a constant default rewrites nothing
// on PostgreSQL 11+, MariaDB 10.3+ and SQLite, and rows held while it runs keep working. Rows
// written by stores that predate the column get 120000, the library's default lease.

const DEFAULT_TABLE = 'worker_locks'
const DEFAULT_LEASE_MS = 120000

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

const hasLease = (knex, tableName) => knex.schema.hasColumn(tableName, 'lease_ms')

async function upTable(knex, tableName) {
  if (await hasLease(knex, tableName)) return
  try {
    await knex.schema.alterTable(tableName, (t) => t.bigInteger('lease_ms').notNullable().defaultTo(DEFAULT_LEASE_MS))
  } catch (error) {
    // Another process added it between our check and our ALTER.
    if (await hasLease(knex, tableName).catch(() => false)) return
    throw error
  }
}

async function downTable(knex, tableName) {
  if (!(await knex.schema.hasTable(tableName)) || !(await hasLease(knex, tableName))) return
  // A plain DROP COLUMN (SQLite 3.35+): knex's SQLite fallback would rebuild the table and lose
  // the fence trigger.
  await knex.raw('ALTER TABLE ?? DROP COLUMN lease_ms', [tableName])
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
