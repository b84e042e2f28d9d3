// What only SQLite does: the library version decides whether the native acquire can run, a
// database is known by its file, and a transaction must never wait across an await.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { sqliteSupportsNative } from '../../dialects/sqlite.js'
import { LockStore, ManualClock, UnsupportedDatabaseError, createLockTable, dropLockTable, type Lock } from '../../src/index.js'
import { isAcquire, statementsDuring } from '../harness.mjs'
import { connect, uniqueName } from '../targets.mjs'

describe('sqlite: version detection', () => {
  it('needs 3.35 (RETURNING) for the native acquire', () => {
    for (const version of ['3.35.0', '3.35.5', '3.49.1', '3.100.0', '4.0.0']) assert.equal(sqliteSupportsNative(version), true, version)
    for (const version of ['3.34.1', '3.24.0', '3.9.2', '2.8.17', 'garbage']) assert.equal(sqliteSupportsNative(version), false, version)
  })

  it('picks native on the bundled library, emulated on an old one, and refuses to force native there', async () => {
    // SQLite lets an application function replace sqlite_version(), which makes this real
    // database report an old library. Only a one-connection pool sees the replacement.
    const makeKnex = (version: string | undefined) => {
      const knex = connect('sqlite', { poolMax: 1 })
      if (version !== undefined) {
        const acquire = knex.client.acquireRawConnection.bind(knex.client)
        knex.client.acquireRawConnection = async () => {
          const conn = await acquire()
          conn.function('sqlite_version', () => version)
          return conn
        }
      }
      return knex
    }
    const tableName = uniqueName('wl_sqlite_ver')
    const current = makeKnex(undefined)
    const old = makeKnex('3.34.1')
    try {
      await createLockTable(current, { tableName })
      const auto = new LockStore(current, { tableName })
      await auto.init()
      assert.equal(auto.strategy, 'native')

      const fallback = new LockStore(old, { tableName })
      assert.ok(await fallback.tryAcquireLock('on-old-sqlite'))
      assert.equal(fallback.strategy, 'emulated')
      await fallback.close()

      const forced = new LockStore(old, { tableName, strategy: 'native' })
      await assert.rejects(forced.init(), (error: unknown) => {
        assert.ok(error instanceof UnsupportedDatabaseError)
        assert.match(error.message, /strategy 'native' cannot run on SQLite 3\.34\.1: .*3\.35/)
        return true
      })
      await assert.rejects(forced.tryAcquireLock('x'), UnsupportedDatabaseError)
    } finally {
      await dropLockTable(current, { tableName })
      await current.destroy()
      await old.destroy()
    }
  })
})

// Stores of one process on separate knex instances wake each other when they share a table name;
// the woken store asks its own database, so a wake from a store on another file grants nothing.
describe('sqlite: stores of one process on separate knex instances', () => {
  const open = (filename: string): Knex => knexFactory({
    client: 'better-sqlite3',
    connection: { filename },
    useNullAsDefault: true,
    pool: { min: 0, max: 2, afterCreate(conn: { pragma(s: string): unknown }, done: (error: Error | null, conn: unknown) => void) {
      conn.pragma('journal_mode = WAL')
      conn.pragma('busy_timeout = 5000')
      done(null, conn)
    } },
  })

  /**
   * Runs `fn` with a knex instance for each of `files` (in a fresh temporary directory: `locks`,
   * `other`, and `locks` again through a symbolic link to the directory), each with a lock table
   * named `tableName`, then destroys the instances and removes the directory with its files.
   */
  async function onFiles(files: ReadonlyArray<'locks' | 'locks through a link' | 'other'>, fn: (knexes: Knex[], tableName: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'wl-sqlite-'))
    symlinkSync(dir, `${dir}-link`)
    const path = { 'locks': join(dir, 'locks.sqlite'), 'locks through a link': `${dir}-link/./locks.sqlite`, 'other': join(dir, 'other.sqlite') }
    const knexes = files.map((file) => open(path[file]))
    const tableName = uniqueName('wl_sqlite_files')
    try {
      for (const knex of knexes) await createLockTable(knex, { tableName })
      await fn(knexes, tableName)
    } finally {
      await Promise.all(knexes.map((knex) => knex.destroy()))
      rmSync(`${dir}-link`, { force: true })
      rmSync(dir, { recursive: true, force: true })
    }
  }

  /** The SQL of every statement `knex` runs while `fn` runs. */
  const statementsOn = async (knex: Knex, fn: () => Promise<unknown>): Promise<string[]> => (await statementsDuring(knex, fn)).kinds

  for (const strategy of ['native', 'emulated'] as const) {
    it(`wakes a waiting store on the same file when the lock is released, which then takes it with its own attempt (${strategy})`, async () => {
      await onFiles(['locks', 'locks through a link'], async ([holderKnex, waiterKnex], tableName) => {
        assert.ok(holderKnex && waiterKnex)
        // The clock never moves: the waiter never polls, so only the release can end its wait.
        const options = { tableName, strategy, clock: new ManualClock() }
        const holder = new LockStore(holderKnex, options)
        const waiter = new LockStore(waiterKnex, options)
        const held = await holder.tryAcquireLock('report')
        assert.ok(held)
        const refused = new Promise<void>((resolve) => waiter.on('refused', () => resolve()))
        const waiting = waiter.acquireLock('report')
        await refused
        await new Promise((resolve) => setImmediate(resolve))
        let lock: Lock | undefined
        const waiterSql = await statementsOn(waiterKnex, async () => {
          const holderSql = await statementsOn(holderKnex, async () => {
            await held.release()
            lock = await waiting
          })
          assert.deepEqual(holderSql, ['release'], 'the release deleted the row: nothing was handed over')
        })
        assert.ok(waiterSql.some(isAcquire), 'the waiter asked the database itself')
        assert.ok(lock && lock.fence > held.fence)
        const [row] = await holder.listLocks({ name: 'report' })
        assert.equal(row?.instanceName, waiter.instanceName)
        assert.equal(row.fence, lock.fence)
        await lock.release()
        await holder.close()
        await waiter.close()
      })
    })

    it(`never hands a lock to a store on another file with the same table name (${strategy})`, { timeout: 30_000 }, async () => {
      await onFiles(['locks', 'other'], async ([here, there], tableName) => {
        assert.ok(here && there)
        const options = { tableName, strategy, clock: new ManualClock() }
        const holderHere = new LockStore(here, options)
        const waiterHere = new LockStore(here, options)
        const holderThere = new LockStore(there, options)
        const heldHere = await holderHere.tryAcquireLock('report')
        const heldThere = await holderThere.tryAcquireLock('report')
        assert.ok(heldHere && heldThere)
        let refusals = 0
        let woken!: () => void
        const refusedAgain = new Promise<void>((resolve) => { woken = resolve })
        waiterHere.on('refused', () => { if (++refusals === 2) woken() })
        let acquired = false
        const waiting = waiterHere.acquireLock('report').then((lock) => { acquired = true; return lock })
        while (refusals < 1) await new Promise((resolve) => setImmediate(resolve))
        await new Promise((resolve) => setImmediate(resolve))
        // The release on the other file wakes the waiter (the same table name), which asks its
        // own database and is refused: nothing was handed to it.
        await heldThere.release()
        await refusedAgain
        assert.equal(acquired, false)
        assert.equal((await holderHere.listLocks({ name: 'report' }))[0]?.instanceName, holderHere.instanceName)
        assert.deepEqual(await holderThere.listLocks({ name: 'report' }), [], 'deleted on its own file')
        await heldHere.release()
        assert.ok((await waiting).fence > heldHere.fence)
        await Promise.all([holderHere.close(), waiterHere.close(), holderThere.close()])
      })
    })
  }
})

// better-sqlite3 waits for SQLite's write lock synchronously, blocking the whole thread. A
// read/write acquisition's transaction left open across an await (as it was, through knex) made
// any other write of the same process meanwhile (a plain lock, a release, the application's own
// statement) block the thread for the busy timeout and fail with "database is locked" (here
// within the first few calls, after 5 s each). Its transaction now runs in one go.
describe('sqlite: read/write acquisitions among other writes of one process', () => {
  it('never blocks the process or fails the others with "database is locked" (pool of 4 connections)', { timeout: 60_000 }, async () => {
    const knex = connect('sqlite', { poolMax: 4 })
    const tableName = uniqueName('wl_sqlite_rw')
    const app = `${tableName}_app`
    await createLockTable(knex, { tableName })
    await knex.schema.createTable(app, (t) => { t.integer('id').primary(); t.integer('n').notNullable() })
    await knex(app).insert({ id: 1, n: 0 })
    const store = new LockStore(knex, { tableName })
    const errors: string[] = []
    const loop = async (label: string, step: (i: number) => Promise<unknown>): Promise<void> => {
      for (let i = 0; i < 100 && errors.length === 0; i++) {
        try {
          await step(i)
        } catch (error) {
          errors.push(`${label}: ${error instanceof Error ? error.message : String(error)}`)
        }
      }
    }
    try {
      await Promise.all([
        loop('read/write', async (i) => { await (await store.tryAcquireReadWriteLock('report', `k${i % 3}`, { write: i % 2 === 0 }))?.release() }),
        loop('multi-lock', async (i) => { await (await store.tryAcquireMultiLock([{ name: 'report', key: `k${i % 3}`, write: true }, { name: 'report', key: 'm', write: false }]))?.release() }),
        loop('plain lock', async (i) => { await (await store.tryAcquireLock('plain', `k${i % 3}`))?.release() }),
        loop('application', () => knex(app).where({ id: 1 }).increment('n', 1)),
      ])
      assert.deepEqual(errors, [])
    } finally {
      await store.close()
      await knex.schema.dropTableIfExists(app)
      await dropLockTable(knex, { tableName })
      await knex.destroy()
    }
  })
})

// better-sqlite3 statements run synchronously, on a connection checked out of knex's pool through
// the client's own acquireConnection (nothing of the pool's insides is read or changed); a
// connection an application's transaction has checked out is never used.
describe('sqlite: statements on the pool an application shares', () => {
  it('waits for a connection an open transaction holds instead of writing inside that transaction', async () => {
    const knex = connect('sqlite', { poolMax: 1 })
    const tableName = uniqueName('wl_sqlite_pool')
    await createLockTable(knex, { tableName })
    const store = new LockStore(knex, { tableName })
    try {
      await store.init()
      let taking: Promise<Lock | null> | undefined
      let settledInside = false
      await knex.transaction(async (trx) => {
        taking = store.tryAcquireLock('shared-pool')
        taking.then(() => { settledInside = true }, () => undefined) // a rejection is seen where `taking` is awaited
        // Other work of the transaction; the acquire cannot have run, the only connection being this one.
        for (let i = 0; i < 5; i++) await trx.raw('SELECT 1')
        assert.equal(settledInside, false, 'the acquire waited for the connection')
        assert.equal(await trx(tableName).count({ n: '*' }).first().then((r) => Number(r?.n)), 0)
        throw new Error('roll back')
      }).catch((error: unknown) => assert.match(String(error), /roll back/))
      const lock = await taking
      assert.ok(lock, 'the acquire ran once the transaction gave the connection back')
      // Had it run inside the transaction, the rollback would have taken its row away.
      const row = await knex(tableName).where({ lock_name: 'shared-pool' }).first('token')
      assert.equal(String(row?.token), lock.token)
      const { kinds } = await statementsDuring(knex, () => lock.release())
      assert.deepEqual(kinds, ['release'], 'the query event fires')
      assert.equal(await knex(tableName).where({ lock_name: 'shared-pool' }).first(), undefined)

      // Even with the connection idle, every statement checks one out of the pool.
      const checkout = knex.client.acquireConnection.bind(knex.client)
      let checkouts = 0
      knex.client.acquireConnection = () => { checkouts++; return checkout() }
      let again: Lock | null
      try {
        again = await store.tryAcquireLock('shared-pool')
        await again?.release()
      } finally {
        knex.client.acquireConnection = checkout
      }
      assert.ok(again)
      assert.equal(checkouts, 2, 'one checkout for the acquire, one for the release')
    } finally {
      await store.close()
      await dropLockTable(knex, { tableName })
      await knex.destroy()
    }
  })
})

// A loop that never yields to the event loop keeps every Lock it made alive (WeakRefs keep their
// targets until the job ends): the heap, measured during such a loop, must stay flat.
describe('sqlite: memory over many cycles', () => {
  it('keeps the heap flat during a loop of 100,000 acquire and release cycles', { timeout: 300_000 }, async () => {
    const gc = (globalThis as { gc?: () => void }).gc
    assert.ok(gc, 'run the tests with node --expose-gc')
    const knex = connect('sqlite', { poolMax: 2 })
    const tableName = uniqueName('wl_sqlite_heap')
    await createLockTable(knex, { tableName })
    const store = new LockStore(knex, { tableName })
    const cycle = async (i: number): Promise<void> => {
      const lock = await store.tryAcquireLock('heap', `k${i % 16}`)
      assert.ok(lock)
      await lock.release()
    }
    try {
      for (let i = 0; i < 10_000; i++) await cycle(i) // warm: statements prepared, code compiled
      await new Promise((resolve) => setImmediate(resolve))
      gc()
      const before = process.memoryUsage().heapUsed
      let grown = 0
      for (let i = 0; i < 100_000; i++) {
        await cycle(i)
        // Collected without leaving the loop: what the loop's own job keeps alive stays.
        if (i % 10_000 === 9_999) {
          gc()
          grown = Math.max(grown, process.memoryUsage().heapUsed - before)
        }
      }
      assert.ok(grown < 4 * 1024 * 1024, `the heap grew by ${(grown / 1024 / 1024).toFixed(1)} MB`)
    } finally {
      await store.close()
      await dropLockTable(knex, { tableName })
      await knex.destroy()
    }
  })
})

describe('sqlite: the sqlite3 driver', () => {
  it('is refused at construction with UnsupportedDatabaseError naming better-sqlite3, before any SQL', async () => {
    // Without a connection knex loads no driver, so this is knex's real sqlite3 client.
    const old = knexFactory({ client: 'sqlite3', useNullAsDefault: true })
    const current = connect('sqlite', { poolMax: 1 })
    try {
      assert.deepEqual([old.client.dialect, old.client.driverName], ['sqlite3', 'sqlite3'])
      assert.throws(() => new LockStore(old), (error: unknown) => {
        assert.ok(error instanceof UnsupportedDatabaseError, String(error))
        assert.match(error.message, /"sqlite3".*\bbetter-sqlite3\b/)
        return true
      })
      assert.equal(current.client.dialect, 'sqlite3', 'better-sqlite3 shares the knex dialect, and is taken')
      await new LockStore(current).close()
    } finally {
      await old.destroy()
      await current.destroy()
    }
  })
})
