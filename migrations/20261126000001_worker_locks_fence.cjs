'use strict'
// worker-locks migration 2: fencing tokens.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// Adds `fence`, a number that every acquisition of a lock makes larger than the fence of every
// earlier acquisition of the same (name, key), even when the row was deleted in between. Rows
// held while this runs keep working; their holders simply have no fence (0 or an early value).
// Each step checks whether it is already done, so a run that stopped half-way can be repeated.

const DEFAULT_TABLE = 'worker_locks'
// The table name is spliced into DDL (PostgreSQL takes no bind parameters there, and a
// sequence's name travels inside a string literal), so it must be a plain identifier.
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function names(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return {
    sequence: `${tableName}_fence_seq`, // PostgreSQL
    counter: `${tableName}_fence`, // SQLite (highest fence of deleted rows), MySQL (last fence issued)
    index: `${tableName}_fence_idx`, // SQLite
    onDelete: `${tableName}_fence_ad`, // SQLite
    onInsert: `${tableName}_fence_bi`, // MySQL
    onUpdate: `${tableName}_fence_bu`, // MySQL
  }
}

// Runs `create` unless `exists` says the object is there. When several processes migrate at
// once, all may see it missing; the losers' CREATE fails, and a second look settles it.
async function ensure(exists, create) {
  if (await exists()) return
  try {
    await create()
  } catch (error) {
    if (await exists().catch(() => false)) return
    throw error
  }
}

const hasFence = (knex, tableName) => () => knex.schema.hasColumn(tableName, 'fence')

// PostgreSQL: a sequence feeds the column's default, so an INSERT (or the `excluded` row of an
// upsert) carries a fresh value with no extra statement, and deleting rows cannot lower it.
async function upPostgres(knex, tableName, n) {
  await ensure(
    async () => (await knex.raw('SELECT to_regclass(?) AS seq', [`"${n.sequence}"`])).rows[0].seq !== null,
    () => knex.raw('CREATE SEQUENCE IF NOT EXISTS ??', [n.sequence]),
  )
  await ensure(hasFence(knex, tableName), async () => {
    // A volatile default gives every existing row its own value as the column is added.
    await knex.raw(`ALTER TABLE ?? ADD COLUMN IF NOT EXISTS fence BIGINT NOT NULL DEFAULT nextval('"${n.sequence}"'::regclass)`, [tableName])
    await knex.raw('ALTER SEQUENCE ?? OWNED BY ??.fence', [n.sequence, tableName])
  })
}

// SQLite: writers are serialised, so an acquire computes max(live fences, highest deleted
// fence) + 1 inside its own statement; a trigger remembers the fence of every deleted row.
async function upSqlite(knex, tableName, n) {
  await ensure(hasFence(knex, tableName), () => knex.raw('ALTER TABLE ?? ADD COLUMN fence INTEGER NOT NULL DEFAULT 0', [tableName]))
  await knex.raw('CREATE TABLE IF NOT EXISTS ?? (id INTEGER PRIMARY KEY CHECK (id = 1), high_water INTEGER NOT NULL)', [n.counter])
  await knex.raw('INSERT OR IGNORE INTO ?? (id, high_water) VALUES (1, 0)', [n.counter])
  await knex.raw('CREATE INDEX IF NOT EXISTS ?? ON ?? (fence)', [n.index, tableName])
  await knex.raw(
    `CREATE TRIGGER IF NOT EXISTS ?? AFTER DELETE ON ?? FOR EACH ROW
     BEGIN UPDATE ?? SET high_water = MAX(high_water, OLD.fence) WHERE id = 1; END`,
    [n.onDelete, tableName, n.counter],
  )
}

const mysqlTriggerExists = (knex, name) => async () => {
  const [rows] = await knex.raw('SELECT 1 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = ?', [name])
  return rows.length > 0
}

// MySQL/MariaDB: no sequences on MySQL and no RETURNING, so triggers draw the next value from a
// one-row counter whenever a row is inserted or changes hands. The counter only grows.
async function upMysql(knex, tableName, n) {
  await ensure(hasFence(knex, tableName), () => knex.raw('ALTER TABLE ?? ADD COLUMN fence BIGINT NOT NULL DEFAULT 0', [tableName]))
  await knex.raw('CREATE TABLE IF NOT EXISTS ?? (id TINYINT NOT NULL PRIMARY KEY, value BIGINT NOT NULL) ENGINE=InnoDB', [n.counter])
  await knex.raw('INSERT IGNORE INTO ?? (id, value) VALUES (1, 0)', [n.counter])
  await ensure(mysqlTriggerExists(knex, n.onInsert), () =>
    knex.raw(
      `CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW BEGIN
         UPDATE ?? SET value = value + 1 WHERE id = 1;
         SET NEW.fence = (SELECT value FROM ?? WHERE id = 1);
       END`,
      [n.onInsert, tableName, n.counter, n.counter],
    ))
  await ensure(mysqlTriggerExists(knex, n.onUpdate), () =>
    knex.raw(
      `CREATE TRIGGER ?? BEFORE UPDATE ON ?? FOR EACH ROW BEGIN
         IF NEW.token <> OLD.token THEN
           UPDATE ?? SET value = value + 1 WHERE id = 1;
           SET NEW.fence = (SELECT value FROM ?? WHERE id = 1);
         END IF;
       END`,
      [n.onUpdate, tableName, n.counter, n.counter],
    ))
}

async function upTable(knex, tableName) {
  const n = names(tableName)
  const dialect = knex.client.dialect
  if (dialect === 'postgresql') return upPostgres(knex, tableName, n)
  if (dialect === 'mysql') return upMysql(knex, tableName, n)
  return upSqlite(knex, tableName, n)
}

async function downTable(knex, tableName) {
  const n = names(tableName)
  const dialect = knex.client.dialect
  if (dialect === 'mysql') {
    await knex.raw('DROP TRIGGER IF EXISTS ??', [n.onInsert])
    await knex.raw('DROP TRIGGER IF EXISTS ??', [n.onUpdate])
  } else if (dialect !== 'postgresql') {
    await knex.raw('DROP TRIGGER IF EXISTS ??', [n.onDelete])
    await knex.raw('DROP INDEX IF EXISTS ??', [n.index])
  }
  if (await knex.schema.hasTable(tableName)) {
    if (await knex.schema.hasColumn(tableName, 'fence')) {
      await knex.schema.alterTable(tableName, (t) => t.dropColumn('fence'))
    }
  }
  if (dialect === 'postgresql') await knex.raw('DROP SEQUENCE IF EXISTS ??', [n.sequence])
  else await knex.schema.dropTableIfExists(n.counter)
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
