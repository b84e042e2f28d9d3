// What only PostgreSQL does: LISTEN/NOTIFY wakes a waiter when another process releases, once a
// probe has shown that notifications reach the listening connection; the listening connection
// comes back after it was killed. MySQL and SQLite waiters poll.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { afterEach, it } from 'node:test'
import type { Knex } from 'knex'
import { LockStore, ManualClock, createLockTable, dropLockTable, type LockStoreOptions } from '../../src/index.js'
import { Harness, RecordingLogger, statementsDuring } from '../harness.mjs'
import { forEachTarget } from '../matrix.mjs'
import { connect, POSTGRES_URL, uniqueName } from '../targets.mjs'
import { killChildren, startWaiter, startWorker, type ChildWorker } from '../worker-process.mjs'

const LISTENING = 'listening for releases in table'

/** What the listening connection's last query (its LISTEN) contains. */
const listenQuery = (h: Harness, table = h.tableName): string => `LISTEN "${table}_released"`

/** The server process ids of the connections listening on the harness's table (or `table`). */
async function listeningPids(h: Harness, table = h.tableName): Promise<number[]> {
  const { rows } = await h.knex.raw('SELECT pid FROM pg_stat_activity WHERE strpos(query, ?) > 0 AND pid <> pg_backend_pid() ORDER BY pid',
    [listenQuery(h, table)]) as { rows: Array<{ pid: number }> }
  return rows.map((r) => r.pid)
}

// Polls (briefly, in real time) until `read` gives `length` items: the processes under test
// write the line and open their connections in the background.
async function until<T>(read: () => Promise<T[]>, length: number, what: string): Promise<T[]> {
  let items = await read()
  for (let i = 0; i < 400 && items.length !== length; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25))
    items = await read()
  }
  assert.equal(items.length, length, what)
  return items
}

/** Options of a store that never polls: only a release can end its waits. */
function patient(): LockStoreOptions {
  return { clock: new ManualClock(), lockTimeoutMs: 600_000, renewalIntervalMs: 60_000, backoff: { initialDelayMs: 3_600_000, maxDelayMs: 3_600_000 } }
}

/** `url` logging in as `user`. */
function withUser(url: string, user: string): string {
  const parsed = new URL(url)
  parsed.username = user
  parsed.password = ''
  return parsed.href
}

/** The attempts a waiter process had refused. */
const refusals = (waiter: ChildWorker): string[] => waiter.lines().filter((l) => l.startsWith('refused'))

/** The fence a waiter printed when it acquired `name`. */
function printedFence(waiter: ChildWorker, name: string): bigint {
  const line = waiter.lines().find((l) => l.startsWith(`acquired ${name} `))
  assert.ok(line, `the waiter acquired ${name}`)
  return BigInt(line.slice(`acquired ${name} `.length))
}

async function finish(...workers: ChildWorker[]): Promise<void> {
  for (const w of workers) w.child.stdin?.end()
  for (const w of workers) assert.equal((await w.exited).code, 0)
}

// A closed connection's server process lingers for a moment: poll (briefly, in real time) for
// the change rather than reading once.
async function gone(h: Harness, pids: number[]): Promise<void> {
  for (let i = 0; i < 200 && (await listeningPids(h)).some((pid) => pids.includes(pid)); i++) await new Promise((resolve) => setTimeout(resolve, 25))
  assert.deepEqual((await listeningPids(h)).filter((pid) => pids.includes(pid)), [], 'the listening connection closed')
}
async function stays(h: Harness, pids: number[]): Promise<void> {
  for (let i = 0; i < 8; i++) {
    assert.deepEqual(await listeningPids(h), pids, 'the listening connection is still open')
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

forEachTarget('cross-process wake-ups', (target) => {
  const h = new Harness(target)
  afterEach(killChildren)

  it("wakes a waiter with an hour's backoff when another process releases, also after its listener was killed", async () => {
    const logger = new RecordingLogger()
    // The clock never moves: only a notification can wake this waiter.
    const store = h.store({
      clock: new ManualClock(), logger, lockTimeoutMs: 600_000, renewalIntervalMs: 60_000,
      backoff: { initialDelayMs: 3_600_000, maxDelayMs: 3_600_000 },
    })
    const name = h.lockName('notify')

    const first = await startWorker(h, name)
    const waiting = store.acquireLock(name)
    await logger.waitFor(LISTENING, 1)
    await first.release()
    const lock = await waiting
    assert.equal(await lock.isStillValid(), true)
    await lock.release()
    first.child.stdin?.end()
    await first.exited

    const lingering = await listeningPids(h)
    assert.equal(lingering.length, 1, 'the listening connection lingers after the wait')
    const second = await startWorker(h, name)
    const waitingAgain = store.acquireLock(name)
    assert.deepEqual(await listeningPids(h), lingering, 'the second wait listens on the same connection')
    const { rows } = await h.knex.raw(
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE strpos(query, ?) > 0 AND pid <> pg_backend_pid()',
      [listenQuery(h)],
    ) as { rows: Array<{ killed: boolean }> }
    assert.deepEqual(rows.map((r) => r.killed), [true], 'exactly the listening connection was terminated')
    await logger.waitFor(LISTENING, 2) // it reconnected
    assert.ok(logger.at('warn').some((m) => m.includes('dropped')), 'the drop was reported')
    await second.release()
    const again = await waitingAgain
    assert.ok(again.fence > lock.fence)
    second.child.stdin?.end()
    await second.exited
  })

  it("wakes read/write waiters with an hour's backoff when a holder in another process releases", { timeout: 30_000 }, async () => {
    const logger = new RecordingLogger()
    // The clock never moves: only a notification can wake these waiters.
    const store = h.store({ ...patient(), logger })
    const name = h.lockName('notify-rw')
    const writer = await startWorker(h, name, { WL_READ_WRITE: 'write' })
    const readers = [store.acquireReadWriteLock(name, '', { write: false }), store.acquireReadWriteLock(name, '', { write: false })]
    await logger.waitFor(LISTENING, 1)
    await writer.release()
    const held = await Promise.all(readers)
    assert.deepEqual(held.map((l) => l.mode), ['read', 'read'])
    const reader = await startWorker(h, name, { WL_READ_WRITE: 'read' })
    for (const lock of held) await lock.release()
    const writing = store.acquireReadWriteLock(name, '', { write: true })
    await reader.release()
    assert.equal((await writing).mode, 'write')
    await finish(writer, reader)
  })

  it('releases without waiting for the disk, for the release\'s own transaction only, unless durableReleases', async () => {
    const asyncCommit = "set_config('synchronous_commit', 'off', true)"
    for (const durableReleases of [false, true]) {
      const knex = h.connection({ poolMax: 1 }) // one connection: its own settings can be read after
      const store = h.store({ durableReleases }, knex)
      const name = h.lockName('durable')
      const { sql } = await statementsDuring(knex, async () => {
        await (await store.tryAcquireLock(name))!.release()
        await (await store.tryAcquireReadWriteLock(name, '', { write: true }))!.release()
        assert.ok(await store.tryAcquireLock(name))
        await store.close() // releases what it holds in one statement
      })
      const isRelease = (text: string): boolean => /WITH released AS \(\s*DELETE/.test(text)
      const releases = sql.filter(isRelease)
      assert.equal(releases.length, 3, sql.join('\n'))
      for (const text of releases) assert.equal(text.includes(asyncCommit), !durableReleases, text)
      assert.ok(sql.filter((text) => !isRelease(text)).every((text) => !text.includes(asyncCommit)), 'acquisitions stay durable')
      const { rows } = await knex.raw('SHOW synchronous_commit') as { rows: Array<{ synchronous_commit: string }> }
      assert.equal(rows[0]?.synchronous_commit, 'on', 'the connection\'s own setting is untouched')
      assert.ok(await h.store().tryAcquireLock(name), 'released')
    }
  })

  it('keeps the listening connection for 10 s after the last waiter leaves, then closes it; close() closes it at once', async () => {
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const store = h.store({ clock, logger, lockTimeoutMs: 600_000, renewalIntervalMs: 60_000 })
    const name = h.lockName('linger')
    // A wait for a lock this store holds, released at once: the store waits, then has no waiter.
    const waitOnce = async (listens: number): Promise<void> => {
      const holder = await store.tryAcquireLock(name)
      assert.ok(holder)
      const blocked = store.acquireLock(name)
      await logger.waitFor(LISTENING, listens)
      await holder.release()
      await (await blocked).release()
    }
    await waitOnce(1)
    const first = await listeningPids(h)
    assert.equal(first.length, 1)
    await clock.advance(9_000)
    await waitOnce(1) // within the linger: same connection, and the 10 s start again
    await clock.advance(9_000)
    await stays(h, first)
    assert.equal(logger.entries.filter((e) => e.message.includes(LISTENING)).length, 1, 'one connection for every wait')
    await clock.advance(1_000)
    await gone(h, first)

    await waitOnce(2) // a new wait opens a new connection
    const second = await listeningPids(h)
    assert.equal(second.length, 1)
    assert.notDeepEqual(second, first)
    await store.close()
    await gone(h, second)
  })

  it('lets a process that forgets close() exit while the listening connection lingers', async () => {
    const child = spawn(process.execPath, [join(import.meta.dirname, '..', 'fixtures', 'wait-then-exit.mjs')], {
      env: { ...process.env, WL_DATABASE: 'postgres', WL_STRATEGY: h.target.strategy, WL_TABLE: h.tableName, WL_LOCK: h.lockName('exit') },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    // If the lingering connection kept the process alive, it would never exit: give up on it
    // after a minute (far longer than it needs) so that the test fails rather than hangs.
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    clearTimeout(killer)
    assert.equal(code, 0, `the process did not exit by itself: ${stdout}`)
    assert.match(stdout, /waited and released/)
  })

  // The waiters below never poll: a wait that no notification reaches never ends, and the test
  // times out rather than passing.
  it('wakes every waiting process on a release: one gets the lock, the others wait on for the next release', { timeout: 60_000 }, async () => {
    const name = h.lockName('every')
    const held = await h.store().tryAcquireLock(name)
    assert.ok(held)
    const waiters = [await startWaiter(h), await startWaiter(h)]
    for (const waiter of waiters) {
      waiter.send(`wait ${name}`)
      await waiter.printed(`refused ${name}`)
    }
    await until(() => listeningPids(h), 2, 'both waiters listen')
    await held.release()
    const first = await Promise.race(waiters.map((w, i) => w.printed(`acquired ${name}`).then(() => i)))
    const winner = waiters[first] as ChildWorker & { send(command: string): void }
    const other = waiters[1 - first] as ChildWorker & { send(command: string): void }
    // The release woke the other process too: it looked at the row again and found it taken.
    await until(async () => refusals(other), 2, 'the other waiter tried again and was refused')
    assert.ok(printedFence(winner, name) > held.fence)
    winner.send(`release ${name}`)
    await other.printed(`acquired ${name}`)
    assert.ok(printedFence(other, name) > printedFence(winner, name))
    await finish(...waiters)
  })

  it('polls, and says so once, when a probe shows that notifications do not reach the listening connection', { timeout: 60_000 }, async () => {
    // Every pooled connection swallows the probe's NOTIFY, as a transaction pooler makes it miss the listener.
    const knex = h.connection({ swallowProbes: true })
    const logger = new RecordingLogger()
    const clock = new ManualClock()
    const store = h.store({ clock, logger, lockTimeoutMs: 600_000, renewalIntervalMs: 60_000 }, knex)
    const name = h.lockName('deaf')
    const worker = await startWorker(h, name)
    const waiting = store.acquireLock(name)
    await logger.waitFor('are not delivered')
    await until(() => listeningPids(h), 0, 'the deaf connection closed')
    await worker.release()
    await clock.advance(200) // its backoff: the waiter polls
    const lock = await waiting
    assert.equal(await lock.isStillValid(), true)
    await lock.release()
    // A second wait soon after does not probe again, nor say it again.
    const second = await startWorker(h, name)
    const refused = new Promise<void>((resolve) => { const off = store.on('refused', () => { off(); resolve() }) })
    const again = store.acquireLock(name)
    await refused // asleep for its backoff, on the clock that only this test moves
    await second.release()
    await clock.advance(200)
    await (await again).release()
    assert.equal(logger.entries.filter((e) => e.message.includes('are not delivered')).length, 1)
    assert.deepEqual(logger.at('warn').filter((m) => !m.includes('are not delivered')), [])
    await finish(worker, second)
  })

  it('takes nothing from a notification: malformed, oversized, replayed and forged ones only make a waiter look again', { timeout: 60_000 }, async () => {
    const logger = new RecordingLogger()
    const name = h.lockName('forged')
    const holder = h.store()
    const held = await holder.tryAcquireLock(name)
    assert.ok(held)
    const waiter = h.store({ ...patient(), logger }, h.connection())
    let acquired: bigint | undefined
    let refused = 0
    waiter.on('refused', () => refused++)
    const waiting = waiter.acquireLock(name).then((lock) => { acquired = lock.fence; return lock })
    await logger.waitFor(LISTENING)
    const released = `${h.tableName}_released`
    const notify = (payload: string) => h.knex.raw('SELECT pg_notify(?, ?)', [released, payload])
    const junk = ['', 'not json', '{"name":"x"}', '[1, 2, 3]', '[null, "", "tag"]', '[""]', 'x'.repeat(7_990)]
    for (const payload of junk) await notify(payload)
    // Readable, but of locks nobody here waits for (one with names far too long to be a lock).
    await notify(JSON.stringify(['x'.repeat(3_000), 'y'.repeat(3_000), 'z']))
    await notify(JSON.stringify([h.lockName('other'), '', 'z']))
    // A hand-over forged as old releases sent them (a made-up token and fence), and a replay of a
    // real release's payload. Notifications arrive in order on one connection: once the waiter
    // has looked at the row again after each, all before were read.
    const forged = JSON.stringify([name, '', 'another-process', 'forged-token', '999999999', String(Date.now())])
    const replayed = JSON.stringify([name, '', 'replayed'])
    for (const payload of [forged, replayed]) {
      const before = refused
      await notify(payload)
      await until(async () => (refused > before ? [true] : []), 1, `the waiter looked at the row again after ${payload}`)
    }
    assert.equal(acquired, undefined, 'the waiter holds nothing')
    assert.equal((await h.row(name))?.token, held.token, 'the holder still holds the row')
    assert.equal(await held.isStillValid(), true)
    assert.equal(logger.at('debug').filter((m) => m.includes('ignored a notification')).length, junk.length, 'every unreadable one was ignored')
    await held.release()
    const lock = await waiting
    assert.ok(lock.fence > held.fence && lock.fence !== 999_999_999n)
    assert.equal((await h.row(name))?.token, lock.token)
  })

  // A fresh insert's fence is drawn under the lock's advisory lock, held until the insert commits:
  // a statement held up between forming its row and inserting it (here by a trigger that sleeps)
  // keeps every other acquisition of that lock from drawing a fence meanwhile.
  it('draws a fresh insert\'s fence after every fence issued for that lock before the row exists', { timeout: 30_000 }, async () => {
    const slowInsert = `${h.tableName}_slow_insert`
    await h.knex.raw(`CREATE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
      IF NEW.instance_name = 'slow' THEN PERFORM pg_sleep(0.5); END IF; RETURN NEW; END $$`, [slowInsert])
    await h.knex.raw('CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW EXECUTE FUNCTION ??()', [slowInsert, h.tableName, slowInsert])
    try {
      const name = h.lockName('slow-insert')
      const slow = h.store({ instanceName: 'slow' }, h.connection())
      const fast = h.store()
      const slowLock = slow.tryAcquireLock(name)
      await until(async () => {
        const { rows } = await h.knex.raw("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND strpos(query, ?) > 0",
          [`INSERT INTO "${h.tableName}"`]) as { rows: unknown[] }
        return rows
      }, 1, 'the slow insert is under way')
      // The other store's attempt waits for the slow insert to commit, then finds the lock held.
      const fastLock = fast.tryAcquireLock(name)
      const late = await slowLock
      assert.ok(late, 'the slow insert found the lock free')
      assert.equal(await fastLock, null)
      await late.release()
      const after = await fast.tryAcquireLock(name)
      assert.ok(after && after.fence > late.fence, `fence ${after?.fence} after ${late.fence}`)
    } finally {
      await h.knex.raw('DROP TRIGGER IF EXISTS ?? ON ??', [slowInsert, h.tableName])
      await h.knex.raw('DROP FUNCTION IF EXISTS ??()', [slowInsert])
    }
  })

  // Migration 6's routine: one round trip with the native strategy (the emulated one keeps the transaction of statements).
  it(`takes a read/write lock ${h.target.strategy === 'native' ? 'in one statement, the routine' : 'in a transaction of statements'}, refusing and undoing all parts alike`, async () => {
    const [a, b] = [h.lockName('rw-1'), h.lockName('rw-2')] // parts are taken in this order
    const store = h.store()
    await store.init()
    const taken = await statementsDuring(h.knex, () => store.tryAcquireReadWriteLock(b, '', { write: true }))
    assert.ok(taken.result)
    if (h.target.strategy === 'native') assert.deepEqual(taken.kinds, ['rw-acquire'])
    else assert.ok(taken.kinds.includes('rw-key') && !taken.kinds.includes('rw-acquire'), taken.kinds.join(', '))
    // A multi-lock whose first part is free and second held: refused, and the first part undone.
    const other = h.store()
    const rowsOf = async (table: string): Promise<number> => Number((await h.knex(table).where({ lock_name: a }).count({ n: '*' }).first())?.n)
    assert.equal(await other.tryAcquireMultiLock([{ name: a, write: true }, { name: b, write: false }]), null)
    assert.equal(await rowsOf(`${h.tableName}_rw_holders`), 0, 'no holder row of the refused multi-lock stays')
    assert.equal(await rowsOf(`${h.tableName}_rw_keys`), 0, 'nor the key row it made')
    await taken.result.release()
    const multi = await other.tryAcquireMultiLock([{ name: a, write: true }, { name: b, write: false }])
    assert.ok(multi)
    assert.deepEqual(multi.locks.map((l) => l.mode), ['write', 'read'])
    await multi.release()
  })

  // The routine belongs to whoever migrated; the application may run as another role, and default
  // privileges may keep new functions from PUBLIC. The migration grants it to every role: the
  // tables' own privileges still decide.
  if (h.target.strategy === 'native') {
    it('lets the application\'s role call the routine that another role migrated, where default privileges keep functions from PUBLIC', { timeout: 30_000 }, async () => {
      const [migrator, app] = [uniqueName('wl_migrator'), uniqueName('wl_app')]
      const tableName = uniqueName('wl_roles')
      const as = (role: string): Knex => connect('postgres', { postgresUrl: withUser(POSTGRES_URL, role), poolMax: 1 })
      await h.knex.raw('CREATE ROLE ?? LOGIN', [migrator])
      await h.knex.raw('CREATE ROLE ?? LOGIN', [app])
      const [asMigrator, asApp] = [as(migrator), as(app)]
      try {
        await h.knex.raw('GRANT CREATE ON SCHEMA public TO ??', [migrator])
        await h.knex.raw('ALTER DEFAULT PRIVILEGES FOR ROLE ?? REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC', [migrator])
        await createLockTable(asMigrator, { tableName })
        for (const table of [tableName, `${tableName}_rw_keys`, `${tableName}_rw_holders`, `${tableName}_fence_epoch`, `${tableName}_waiters`]) {
          await asMigrator.raw('GRANT SELECT, INSERT, UPDATE, DELETE ON ?? TO ??', [table, app])
        }
        await asMigrator.raw('GRANT USAGE, UPDATE ON SEQUENCE ?? TO ??', [`${tableName}_fence_seq`, app])
        const store = new LockStore(asApp, { tableName, strategy: 'native' })
        await store.init()
        const taken = await statementsDuring(asApp, () => store.tryAcquireReadWriteLock('roles', '', { write: true }))
        assert.deepEqual(taken.kinds, ['rw-acquire'])
        assert.ok(taken.result, 'taken through the routine')
        await taken.result.release()
        await store.close()
      } finally {
        await asMigrator.destroy()
        await asApp.destroy()
        await dropLockTable(h.knex, { tableName })
        for (const role of [migrator, app]) await h.knex.raw('DROP OWNED BY ??', [role])
        await h.knex.raw('REVOKE CREATE ON SCHEMA public FROM ??', [migrator])
        for (const role of [migrator, app]) await h.knex.raw('DROP ROLE ??', [role])
      }
    })
  }

}, ['postgres'])
