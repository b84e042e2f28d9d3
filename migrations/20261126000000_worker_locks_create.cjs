'use strict'
// worker-locks migration 1: the lock table.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// The table name is 'worker_locks' unless the knex instance's userParams carry
// `workerLocksTableName` (knexfile: `userParams: { workerLocksTableName: 'my_locks' }`).

const DEFAULT_TABLE = 'worker_locks'

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function isMysql(knex) {
  return knex.client.dialect === 'mysql'
}

async function upTable(knex, tableName) {
  if (await knex.schema.hasTable(tableName)) return
  try {
    await knex.schema.createTable(tableName, (t) => {
      if (isMysql(knex)) {
        // Binary strings compare byte for byte: MariaDB's default collations fold case and
        // accents and ignore trailing spaces, which would make 'abc', 'ABC' and 'abc ' one lock.
        // 1020 bytes hold 255 characters of UTF-8; the two key columns together stay within
        // InnoDB's 3072-byte key limit.
        t.specificType('lock_name', 'VARBINARY(1020)').notNullable()
        t.specificType('lock_key', 'VARBINARY(1020)').notNullable()
        t.specificType('instance_name', 'VARBINARY(1020)').notNullable()
        t.specificType('token', 'VARBINARY(64)').notNullable()
        t.engine('InnoDB')
      } else {
        // PostgreSQL compares text byte for byte under deterministic collations; SQLite's
        // default BINARY collation does too.
        t.string('lock_name', 255).notNullable()
        t.string('lock_key', 255).notNullable()
        t.string('instance_name', 255).notNullable()
        t.string('token', 64).notNullable()
      }
      t.bigInteger('last_renewed_ts').notNullable()
      t.primary(['lock_name', 'lock_key'])
    })
  } catch (error) {
    // Another process created it between our check and our CREATE: that is the goal reached.
    if (await knex.schema.hasTable(tableName).catch(() => false)) return
    throw error
  }
}

async function downTable(knex, tableName) {
  await knex.schema.dropTableIfExists(tableName)
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
