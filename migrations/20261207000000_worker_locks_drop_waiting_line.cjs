'use strict'
// worker-locks migration 5: PostgreSQL drops the waiting line (`<table>_waiters`); nothing
// changes elsewhere.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// Up to version 0.1 a store waiting on PostgreSQL kept a place in this table, and a release woke
// the store of another process first in line. It bought 1.17x on one hot lock with 8 processes,
// and its listener held a session-level advisory lock, which behind a transaction pooler stays
// on a server connection others share; a release now wakes every listening process instead.
// Stores of older versions still running against the table stay correct without it (they acquire
// and release without the line once they find it missing), so the order of upgrade is free.

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

const isPostgres = (knex) => knex.client.dialect === 'postgresql'

async function upTable(knex, tableName) {
  if (!isPostgres(knex)) return
  await knex.raw('DROP TABLE IF EXISTS ??', [waitersOf(tableName)])
}

// The table as migration 1 made it.
async function downTable(knex, tableName) {
  if (!isPostgres(knex) || !(await knex.schema.hasTable(tableName))) return
  await knex.raw(
    `CREATE TABLE IF NOT EXISTS ?? (
       lock_name VARCHAR(255) NOT NULL,
       lock_key VARCHAR(255) NOT NULL,
       waiter VARCHAR(16) NOT NULL CHECK (waiter ~ '^[0-9a-f]{16}$'),
       process_tag VARCHAR(64) NOT NULL,
       since_ts BIGINT NOT NULL,
       expires_ts BIGINT NOT NULL,
       PRIMARY KEY (lock_name, lock_key, waiter)
     )`,
    [waitersOf(tableName)],
  )
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
