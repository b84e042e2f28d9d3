'use strict'
// worker-locks migration 3: read/write locks, in two tables of their own next to the lock table.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// `<table>_rw_keys`: one small row per (name, key) ever locked for reading or writing. An
// acquisition locks it first (it is the key's mutex), draws the key's next fence from it, and
// reads a waiting writer's intent from it. Rows are kept, so fences never go back.
// `<table>_rw_holders`: one row per holder (many readers or one writer), each with its own token
// and lease, renewed and released like a row of the lock table. No index on the lease: on
// MariaDB one made releases and acquisitions lock rows in opposite orders and deadlock.

const DEFAULT_TABLE = 'worker_locks'
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function names(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return { keys: `${tableName}_rw_keys`, holders: `${tableName}_rw_holders` }
}

// Runs `create` unless the table is there; when several processes migrate at once, the losers'
// CREATE fails and a second look settles it.
async function ensureTable(knex, name, create) {
  if (await knex.schema.hasTable(name)) return
  try {
    await knex.schema.createTable(name, create)
  } catch (error) {
    if (await knex.schema.hasTable(name).catch(() => false)) return
    throw error
  }
}

const isMysql = (knex) => knex.client.dialect === 'mysql'

// The same identity columns as the lock table: byte-for-byte comparison on every database.
function identity(knex, t, withToken) {
  const columns = withToken ? ['lock_name', 'lock_key', 'instance_name'] : ['lock_name', 'lock_key']
  for (const column of columns) {
    if (isMysql(knex)) t.specificType(column, 'VARBINARY(1020)').notNullable()
    else t.string(column, 255).notNullable()
  }
  if (withToken) {
    if (isMysql(knex)) t.specificType('token', 'VARBINARY(64)').notNullable()
    else t.string('token', 64).notNullable()
  }
  if (isMysql(knex)) t.engine('InnoDB')
}

async function upTable(knex, tableName) {
  const n = names(tableName)
  await ensureTable(knex, n.keys, (t) => {
    identity(knex, t, false)
    t.bigInteger('fence').notNullable().defaultTo(0)
    // A waiting writer's claim: while it lasts, new readers are refused.
    if (isMysql(knex)) t.specificType('intent_token', 'VARBINARY(64)').nullable()
    else t.string('intent_token', 64).nullable()
    t.bigInteger('intent_until').nullable()
    t.primary(['lock_name', 'lock_key'])
  })
  await ensureTable(knex, n.holders, (t) => {
    identity(knex, t, true)
    t.smallint('write_mode').notNullable()
    t.bigInteger('last_renewed_ts').notNullable()
    t.bigInteger('lease_ms').notNullable()
    t.bigInteger('fence').notNullable()
    t.primary(['lock_name', 'lock_key', 'token'])
  })
}

async function downTable(knex, tableName) {
  const n = names(tableName)
  await knex.schema.dropTableIfExists(n.holders)
  await knex.schema.dropTableIfExists(n.keys)
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
