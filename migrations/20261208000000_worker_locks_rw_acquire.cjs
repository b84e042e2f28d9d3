'use strict'
// worker-locks migration 6: PostgreSQL takes a read/write lock in one round trip.
// Released migrations are history: never edit or rename this file (knex records its name).
// It carries its own DDL and imports nothing from the library, whose helpers will change.
//
// `<table>_rw_acquire(...)` runs the steps of a read/write acquisition that the library otherwise
// sends one by one in a READ COMMITTED transaction (four round trips or more), in the same order
// and with the same row locks: for each part, sorted, upsert its key row (which locks it until
// commit, draws the key's fence and clears the caller's own writer intent), insert the holder
// unless a conflicting holder or, for a new reader, a live writer intent is there, and if not,
// delete the key's stale holders and try once more. One refused part undoes every part: the work
// runs in a block whose exception (raised by the function itself, and caught there, so nothing
// reaches the server's log) rolls it back, and the function returns NULL. Stores of versions that
// do not call it lock the same rows in the same order, so both may run side by side.
// On SQLite and MySQL/MariaDB nothing changes.

const DEFAULT_TABLE = 'worker_locks'
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/

function tableNameOf(knex) {
  const params = knex.userParams || {}
  return params.workerLocksTableName || DEFAULT_TABLE
}

function names(tableName) {
  if (!IDENTIFIER.test(tableName)) throw new TypeError(`worker-locks: table name ${JSON.stringify(tableName)} is not a plain identifier`)
  return { keys: `${tableName}_rw_keys`, holders: `${tableName}_rw_holders`, fn: `${tableName}_rw_acquire` }
}

const isPostgres = (knex) => knex.client.dialect === 'postgresql'

const SIGNATURE = 'text[], text[], text[], boolean[], text, bigint, bigint, text'

// Table names are plain identifiers (checked above), safe inside the body's quotes.
function functionSql(n) {
  const insertHolder = `
        INSERT INTO "${n.holders}" (lock_name, lock_key, token, instance_name, write_mode, last_renewed_ts, lease_ms, fence)
          SELECT names[i], keys[i], tokens[i], instance, CASE WHEN writes[i] THEN 1 ELSE 0 END, now_at, lease, drawn
          FROM "${n.keys}" a WHERE a.lock_name = names[i] AND a.lock_key = keys[i]
          AND NOT EXISTS (SELECT 1 FROM "${n.holders}" h WHERE h.lock_name = names[i] AND h.lock_key = keys[i] AND (writes[i] OR h.write_mode = 1))
          AND (writes[i] OR intent IS NOT NULL OR a.intent_token IS NULL OR a.intent_until < now_at);
        GET DIAGNOSTICS taken = ROW_COUNT;`
  return `
  DECLARE
    -- The caller's clock, or the database's (clock_timestamp: now() is frozen at the transaction's start).
    now_at bigint := coalesce(now_ms, (floor(extract(epoch from clock_timestamp()) * 1000))::bigint);
    fences bigint[] := '{}';
    drawn bigint;
    taken bigint;
  BEGIN
    BEGIN
      FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        INSERT INTO "${n.keys}" AS a (lock_name, lock_key, fence) VALUES (names[i], keys[i], 1)
          ON CONFLICT (lock_name, lock_key) DO UPDATE SET fence = a.fence + 1,
            intent_token = CASE WHEN writes[i] AND a.intent_token = intent THEN NULL ELSE a.intent_token END
          RETURNING fence INTO drawn;${insertHolder}
        IF taken = 0 THEN
          DELETE FROM "${n.holders}" WHERE lock_name = names[i] AND lock_key = keys[i] AND last_renewed_ts + lease_ms < now_at;
          GET DIAGNOSTICS taken = ROW_COUNT;
          IF taken > 0 THEN${insertHolder}
          END IF;
        END IF;
        IF taken = 0 THEN
          RAISE SQLSTATE 'WLRF0';
        END IF;
        fences := fences || drawn;
      END LOOP;
    EXCEPTION WHEN SQLSTATE 'WLRF0' THEN
      RETURN NULL;
    END;
    RETURN fences;
  END`
}

const functionExists = async (knex, fn) =>
  (await knex.raw(`SELECT 1 FROM pg_proc WHERE oid = to_regprocedure(?)`, [`"${fn}"(${SIGNATURE})`])).rows.length > 0

async function upTable(knex, tableName) {
  if (!isPostgres(knex)) return
  const n = names(tableName)
  if (await functionExists(knex, n.fn)) return
  // Parameters: names, keys, tokens, writes (one entry per part, sorted), instance, now (NULL for
  // the database's clock), lease, the caller's writer intent (NULL for none).
  try {
    await knex.raw(`CREATE OR REPLACE FUNCTION ??(names text[], keys text[], tokens text[], writes boolean[], instance text, now_ms bigint, lease bigint, intent text)
      RETURNS bigint[] LANGUAGE plpgsql AS $wl$${functionSql(n)}$wl$`, [n.fn])
    // Every role that may use the tables may call it (it runs with the caller's rights), also
    // where default privileges keep new functions from PUBLIC: the application's role is often
    // not the one that migrates.
    await knex.raw(`GRANT EXECUTE ON FUNCTION ??(${SIGNATURE}) TO PUBLIC`, [n.fn])
  } catch (error) {
    // Processes migrating at once: the losers' CREATE may fail ("tuple concurrently updated").
    if (await functionExists(knex, n.fn).catch(() => false)) return
    throw error
  }
}

async function downTable(knex, tableName) {
  if (!isPostgres(knex)) return
  await knex.raw(`DROP FUNCTION IF EXISTS ??(${SIGNATURE})`, [names(tableName).fn])
}

exports.up = (knex) => upTable(knex, tableNameOf(knex))
exports.down = (knex) => downTable(knex, tableNameOf(knex))
// For createLockTable(), which passes the table name directly.
exports.upTable = upTable
exports.downTable = downTable
