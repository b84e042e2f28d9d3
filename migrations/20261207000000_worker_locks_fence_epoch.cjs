'use strict'
// worker-locks migration 5: PostgreSQL fences carry an epoch that grows with every promotion.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// A promoted standby may lack the last fences the old primary drew (asynchronous replication
// loses them): its sequence and key rows are behind, and the fences it draws would repeat or go
// back. Every promotion starts a new, larger timeline, which any role can read from the current
// WAL file's name. `<table>_fence_epoch` remembers the timeline the last fence was drawn on and an
// epoch; when the timeline changes, the epoch grows by as much (by 1 when the timeline went down:
// a dump restored or pg_upgrade'd into a new cluster). A trigger on `<table>` and on
// `<table>_rw_keys` lifts every fence written below `epoch << 48` into the epoch, so the first
// fence drawn on a new primary is larger than any the old one drew, even when the epoch row the
// new primary has is itself behind (epochs grow by timeline differences, so an older row on a
// larger timeline still lands above). A trigger, not the library's statements: a store of an
// older version still running must not write small fences after a newer one wrote large ones.
// On SQLite and MySQL/MariaDB nothing changes.

const DEFAULT_TABLE = 'worker_locks'
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function names(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return {
    keys: `${tableName}_rw_keys`,
    epoch: `${tableName}_fence_epoch`,
    fn: `${tableName}_fence_epoch_fn`,
    trigger: `${tableName}_fence_epoch`, // on both tables; trigger names are per table
  }
}

const isPostgres = (knex) => knex.client.dialect === 'postgresql'

// The timeline of the server's current WAL insert position: the first 8 hex digits of its file
// name. Needs no privilege beyond a login (these functions are granted to every role); they were
// named after "xlog" before PostgreSQL 10.
const timelineSql = (versionNum) => versionNum >= 100000
  ? "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint"
  : "('x' || substr(pg_xlogfile_name(pg_current_xlog_location()), 1, 8))::bit(32)::bigint"

// Rows carry fences of at most 2^48 within one epoch (281 trillion acquisitions).
function functionSql(epochTable, timeline) {
  return `
  DECLARE
    tl bigint := ${timeline};
    stored bigint;
    ep bigint;
  BEGIN
    SELECT timeline, epoch INTO stored, ep FROM "${epochTable}" WHERE id = 1;
    IF NOT FOUND THEN
      -- undefined_table, which the library reports as a lock table that is not migrated
      RAISE EXCEPTION 'worker-locks: the row of "${epochTable}" is missing; run "worker-locks migrate"' USING ERRCODE = '42P01';
    END IF;
    IF stored <> tl THEN
      -- Concurrent first fences of a new timeline wait on the row; the losers find it moved.
      UPDATE "${epochTable}" SET epoch = epoch + CASE WHEN tl > timeline THEN tl - timeline ELSE 1 END, timeline = tl
        WHERE id = 1 AND timeline <> tl RETURNING epoch INTO ep;
      IF NOT FOUND THEN
        SELECT epoch INTO ep FROM "${epochTable}" WHERE id = 1;
      END IF;
    END IF;
    IF NEW.fence < (ep << 48) THEN
      NEW.fence := (ep << 48) + (NEW.fence % 281474976710656);
    END IF;
    RETURN NEW;
  END`
}

const exists = async (knex, sql, bindings) => (await knex.raw(sql, bindings)).rows.length > 0
const triggerExists = (knex, table, trigger) =>
  exists(knex, 'SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(?) AND tgname = ?', [`"${table}"`, trigger])

// Runs `create` unless `check` says it is done; when several processes migrate at once, the
// losers' CREATE fails and a second look settles it.
async function ensure(check, create) {
  if (await check()) return
  try {
    await create()
  } catch (error) {
    if (await check().catch(() => false)) return
    throw error
  }
}

async function upTable(knex, tableName) {
  if (!isPostgres(knex)) return
  const n = names(tableName)
  const versionNum = Number((await knex.raw("SELECT current_setting('server_version_num') AS num")).rows[0].num)
  const timeline = timelineSql(versionNum)
  await ensure(() => knex.schema.hasTable(n.epoch), () => knex.raw(
    'CREATE TABLE IF NOT EXISTS ?? (id INT PRIMARY KEY CHECK (id = 1), timeline BIGINT NOT NULL, epoch BIGINT NOT NULL)', [n.epoch]))
  // Epoch 0 on the timeline of today: fences stay as they are until the first promotion.
  await knex.raw(`INSERT INTO ?? (id, timeline, epoch) VALUES (1, ${timeline}, 0) ON CONFLICT (id) DO NOTHING`, [n.epoch])
  // CREATE OR REPLACE, as two migrating processes may both get here.
  await ensure(() => exists(knex, 'SELECT 1 FROM pg_proc WHERE oid = to_regproc(?)', [`"${n.fn}"`]), () => knex.raw(
    `CREATE OR REPLACE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $wl$${functionSql(n.epoch, timeline)}$wl$`, [n.fn]))
  // EXECUTE PROCEDURE: EXECUTE FUNCTION is PostgreSQL 11+.
  for (const table of [tableName, n.keys]) {
    await ensure(() => triggerExists(knex, table, n.trigger), () => knex.raw(
      'CREATE TRIGGER ?? BEFORE INSERT OR UPDATE OF fence ON ?? FOR EACH ROW EXECUTE PROCEDURE ??()', [n.trigger, table, n.fn]))
  }
}

async function downTable(knex, tableName) {
  if (!isPostgres(knex)) return
  const n = names(tableName)
  for (const table of [tableName, n.keys]) {
    if (await knex.schema.hasTable(table)) await knex.raw('DROP TRIGGER IF EXISTS ?? ON ??', [n.trigger, table])
  }
  await knex.raw('DROP FUNCTION IF EXISTS ??()', [n.fn])
  await knex.schema.dropTableIfExists(n.epoch)
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
