'use strict'
// worker-locks migration 1: the lock table, its fences and (PostgreSQL) its waiting line.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// The table name is 'worker_locks' unless the knex instance's userParams carry
// `workerLocksTableName` (knexfile: `userParams: { workerLocksTableName: 'my_locks' }`).
// Each step checks whether it is already done, so a run that stopped half-way can be repeated,
// and several processes may migrate at once.

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
    waiters: `${tableName}_waiters`, // PostgreSQL
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

const isMysql = (knex) => knex.client.dialect === 'mysql'
const isPostgres = (knex) => knex.client.dialect === 'postgresql'

function createLockTable(knex, tableName) {
  return knex.schema.createTable(tableName, (t) => {
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
}

const hasFence = (knex, tableName) => () => knex.schema.hasColumn(tableName, 'fence')

// `fence`: every acquisition of a lock gets a larger fence than every earlier acquisition of the
// same (name, key), even when the row was deleted in between. The library draws it; the schema
// keeps what it needs to never go back.

// PostgreSQL: a sequence, also the column's default for rows other writers insert.
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
  // The waiting line: stores of other processes that wait for a lock, oldest first, so that a
  // release wakes the one whose turn it is instead of every listening process. A place is a
  // hint: the woken store still asks the lock row.
  await ensure(() => knex.schema.hasTable(n.waiters), () => knex.raw(
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
    [n.waiters],
  ))
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
// one-row counter whenever a row is inserted or changes hands. The counter only grows, and the
// trigger's UPDATE locks it until the acquiring statement commits.
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
  await ensure(() => knex.schema.hasTable(tableName), () => createLockTable(knex, tableName))
  if (isPostgres(knex)) return upPostgres(knex, tableName, n)
  if (isMysql(knex)) return upMysql(knex, tableName, n)
  return upSqlite(knex, tableName, n)
}

async function downTable(knex, tableName) {
  const n = names(tableName)
  if (isMysql(knex)) {
    await knex.raw('DROP TRIGGER IF EXISTS ??', [n.onInsert])
    await knex.raw('DROP TRIGGER IF EXISTS ??', [n.onUpdate])
  }
  if (isPostgres(knex)) await knex.schema.dropTableIfExists(n.waiters)
  // Dropping the table drops SQLite's trigger and index, and PostgreSQL's sequence (owned by it).
  await knex.schema.dropTableIfExists(tableName)
  if (isPostgres(knex)) await knex.raw('DROP SEQUENCE IF EXISTS ??', [n.sequence])
  else await knex.schema.dropTableIfExists(n.counter)
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
