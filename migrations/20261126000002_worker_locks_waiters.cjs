'use strict'
// worker-locks migration 3: the waiting line (PostgreSQL only).
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// `<table>_waiters` lists the stores of other processes that wait for a lock, oldest first, so
// that a release notifies the one whose turn it is instead of every listening process. Only
// PostgreSQL has release notifications; on SQLite and MySQL this migration does nothing.
// Without the table (a store newer than the schema) releases notify every waiting process, as
// before.

const DEFAULT_TABLE = 'worker_locks'
// The name is spliced into a string literal for to_regclass, so it must be a plain identifier.
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
  const line = waitersOf(tableName)
  if (await knex.schema.hasTable(line)) return
  // Processes migrating at once may all see it missing, and even IF NOT EXISTS can then fail on
  // PostgreSQL (a duplicate type name): the losers' CREATE fails, and a second look settles it.
  try {
    await create(knex, line)
  } catch (error) {
    if (await knex.schema.hasTable(line).catch(() => false)) return
    throw error
  }
}

function create(knex, line) {
  return knex.raw(
    `CREATE TABLE IF NOT EXISTS ?? (
       lock_name VARCHAR(255) NOT NULL,
       lock_key VARCHAR(255) NOT NULL,
       -- The store's name: 64 random bits in hex. Its NOTIFY channel is named after it, and its
       -- listening connection holds the advisory lock of the same 64 bits, so a place whose
       -- listener is gone (the process died, the connection dropped) is skipped at once.
       waiter VARCHAR(16) NOT NULL CHECK (waiter ~ '^[0-9a-f]{16}$'),
       process_tag VARCHAR(64) NOT NULL,
       since_ts BIGINT NOT NULL,
       expires_ts BIGINT NOT NULL,
       PRIMARY KEY (lock_name, lock_key, waiter)
     )`,
    [line],
  )
}

async function downTable(knex, tableName) {
  if (knex.client.dialect !== 'postgresql') return
  await knex.schema.dropTableIfExists(waitersOf(tableName))
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
