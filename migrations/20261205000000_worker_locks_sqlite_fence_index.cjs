'use strict'
// worker-locks migration 4: SQLite drops the index on `fence`; nothing changes elsewhere.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// Up to version 0.1 a SQLite acquire drew its fence as MAX(fence) of the whole table (read
// through this index) or the high water of deleted rows, plus one. Fences need only grow per
// lock, so it now reads the high water alone (a takeover: the row's own fence too), and the index
// is written on every acquire and release for nothing: without it, 8 processes on 1,000 keys took
// and released about a sixth more locks per second (bench/RESULTS.md, issue 18). Stores of older
// versions still running against the table stay correct without it (their MAX(fence) scans the
// table instead), only slower, so upgrade them before or soon after migrating.

const DEFAULT_TABLE = 'worker_locks'
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function indexOf(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return `${tableName}_fence_idx`
}

const isSqlite = (knex) => knex.client.dialect === 'sqlite3' // better-sqlite3 and sqlite3 alike

async function upTable(knex, tableName) {
  if (!isSqlite(knex)) return
  await knex.raw('DROP INDEX IF EXISTS ??', [indexOf(tableName)])
}

async function downTable(knex, tableName) {
  if (!isSqlite(knex) || !(await knex.schema.hasColumn(tableName, 'fence'))) return
  await knex.raw('CREATE INDEX IF NOT EXISTS ?? ON ?? (fence)', [indexOf(tableName), tableName])
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
