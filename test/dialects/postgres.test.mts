// What only PostgreSQL does: LISTEN/NOTIFY wakes a waiter when another process releases, and
// the listening connection comes back after it was killed. MySQL and SQLite waiters poll.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, it } from 'node:test'
import { ManualClock, createLockTable, dropLockTable, type LockStoreOptions } from '../../src/index.js'
import { Harness, RecordingLogger, statementsDuring } from '../harness.mjs'
import { forEachTarget } from '../matrix.mjs'
import { uniqueName } from '../targets.mjs'
import { killChildren, startWaiter, startWorker, type ChildWorker } from '../worker-process.mjs'

const LISTENING = 'listening for releases in table'

/** How the listening connection's last query (its LISTEN) begins. */
const listenQuery = (h: Harness, table = h.tableName): string => `LISTEN "${table}_released";`

/** The server process ids of the connections listening on the harness's table (or `table`). */
async function listeningPids(h: Harness, table = h.tableName): Promise<number[]> {
  const { rows } = await h.knex.raw('SELECT pid FROM pg_stat_activity WHERE starts_with(query, ?) ORDER BY pid',
    [listenQuery(h, table)]) as { rows: Array<{ pid: number }> }
  return rows.map((r) => r.pid)
}

/** The names of the stores in the waiting line for `name`, first in line first. */
async function line(h: Harness, name: string, table = h.tableName): Promise<string[]> {
  const { rows } = await h.knex.raw('SELECT waiter FROM ?? WHERE lock_name = ? ORDER BY since_ts, waiter',
    [`${table}_waiters`, name]) as { rows: Array<{ waiter: string }> }
  return rows.map((r) => r.waiter)
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

/**
 * Freezes a waiter process (it neither sends nor reads anything) until the returned function
 * thaws it: what the database shows meanwhile was done by others.
 */
async function freeze(waiter: ChildWorker & { send(command: string): void }): Promise<() => void> {
  const dir = mkdtempSync(join(tmpdir(), 'wl-freeze-'))
  const fifo = join(dir, 'fifo')
  execFileSync('mkfifo', [fifo])
  const frozen = (): Promise<string[]> => Promise.resolve(waiter.lines().filter((l) => l === 'frozen'))
  const before = (await frozen()).length
  waiter.send(`freeze ${fifo}`)
  await until(frozen, before + 1, 'the waiter froze')
  return () => {
    writeFileSync(fifo, 'thaw') // opening the FIFO for writing blocks until the reader has it open
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Options of a store that never polls: only a release can end its waits. */
function patient(): LockStoreOptions {
  return { clock: new ManualClock(), lockTimeoutMs: 600_000, renewalIntervalMs: 60_000, backoff: { initialDelayMs: 3_600_000, maxDelayMs: 3_600_000 } }
}

/**
 * A lock `label` held by a store of this process on `table`, and a waiter process (with `env`)
 * in line for it.
 */
async function heldWithWaiterInLine(h: Harness, label: string, env: Record<string, string> = {}, table = h.tableName) {
  const name = h.lockName(label)
  const holder = h.store({ tableName: table })
  const held = await holder.tryAcquireLock(name)
  assert.ok(held)
  const waiter = await startWaiter(h, { ...env, WL_TABLE: table })
  waiter.send(`wait ${name}`)
  await until(() => line(h, name, table), 1, 'the waiter is in line')
  return { name, holder, held, waiter }
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
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE starts_with(query, ?)',
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
  it('serves only the store of another process that is first in line, then the next', { timeout: 60_000 }, async () => {
    const name = h.lockName('line')
    const held = await h.store().tryAcquireLock(name)
    assert.ok(held)
    const first = await startWaiter(h)
    first.send(`wait ${name}`)
    await until(() => line(h, name), 1, 'the first waiter is in line')
    const second = await startWaiter(h)
    second.send(`wait ${name}`)
    // A store joins the line only once it listens, so both now hear what is addressed to them.
    await until(() => line(h, name), 2, 'the second waiter is in line behind it')

    await held.release()
    await first.printed(`acquired ${name}`)
    first.send(`release ${name}`)
    await second.printed(`acquired ${name}`)
    // Had the first release woken the second process too, it would have tried and been refused
    // (or won, and the first would never have got the lock).
    assert.deepEqual(refusals(second), [`refused ${name}`], 'the second waiter tried only once before its turn')
    await until(() => line(h, name), 0, 'both left the line')
    await finish(first, second)
  })

  it('wakes the store of another process first in line; the release deletes the row and the woken store asks for it', { timeout: 60_000 }, async () => {
    const { name, holder, held, waiter } = await heldWithWaiterInLine(h, 'wake')
    const thaw = await freeze(waiter)
    await held.release()
    // The waiter's process is frozen: nothing was handed to it, the lock is simply free.
    assert.deepEqual(await holder.listLocks({ name }), [], 'the release deleted the row')
    thaw()
    await waiter.printed(`acquired ${name}`)
    assert.ok(printedFence(waiter, name) > held.fence)
    assert.deepEqual(refusals(waiter), [`refused ${name}`], 'woken once, it won with its own attempt')
    await until(() => line(h, name), 0, 'the waiter left the line')
    await finish(waiter)
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
    const [waiterName] = await until(() => line(h, name), 1, 'the waiter is in line, listening')
    const released = `${h.tableName}_released`
    const own = `wl_waiter_${waiterName}`
    const notify = (channel: string, payload: string) => h.knex.raw('SELECT pg_notify(?, ?)', [channel, payload])
    const junk = ['', 'not json', '{"name":"x"}', '[1, 2, 3]', '[null, "", "tag"]', '[""]', 'x'.repeat(7_990)]
    for (const channel of [released, own]) {
      for (const payload of junk) await notify(channel, payload)
      // Readable, but of locks nobody here waits for (one with names far too long to be a lock).
      await notify(channel, JSON.stringify(['x'.repeat(3_000), 'y'.repeat(3_000), 'z']))
      await notify(channel, JSON.stringify([h.lockName('other'), '', 'z']))
    }
    // A hand-over forged as the old releases sent them (a made-up token and fence), and a replay
    // of a real release's payload, on each channel. Notifications arrive in order on one
    // connection: once the waiter has looked at the row again after each, all before were read.
    const forged = JSON.stringify([name, '', 'another-process', 'forged-token', '999999999', String(Date.now())])
    const replayed = JSON.stringify([name, '', 'replayed'])
    for (const [channel, payload] of [[own, forged], [released, forged], [own, replayed], [released, replayed]] as const) {
      const before = refused
      await notify(channel, payload)
      await until(async () => (refused > before ? [true] : []), 1, `the waiter looked at the row again after ${payload} on ${channel}`)
    }
    assert.equal(acquired, undefined, 'the waiter holds nothing')
    assert.equal((await h.row(name))?.token, held.token, 'the holder still holds the row')
    assert.equal(await held.isStillValid(), true)
    assert.equal(logger.at('debug').filter((m) => m.includes('ignored a notification')).length, 2 * junk.length, 'every unreadable one was ignored')
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

  it('skips places that lapsed or whose listener is gone', { timeout: 60_000 }, async () => {
    const holder = h.store()
    const name = h.lockName('skip')
    const held = await holder.tryAcquireLock(name)
    assert.ok(held)
    const waiter = await startWaiter(h)
    waiter.send(`wait ${name}`)
    const [waiterName] = await until(() => line(h, name), 1, 'the waiter is in line')
    // Ahead of it: a place that lapsed (of a store that still listens, as far as the line can
    // tell: its advisory lock is held), and one of a store that no longer listens (a process that
    // died).
    const lapsed = 'aaaaaaaaaaaaaaaa'
    const died = 'deadbeefdeadbeef'
    const stillListening = h.connection({ poolMax: 1 }) // one connection: its session holds the lock
    await stillListening.raw("SELECT pg_advisory_lock(('x' || ?)::bit(64)::bigint)", [lapsed])
    await h.knex(`${h.tableName}_waiters`).insert([
      { lock_name: name, lock_key: '', waiter: lapsed, process_tag: 'gone', since_ts: 0, expires_ts: 1 },
      { lock_name: name, lock_key: '', waiter: died, process_tag: 'gone', since_ts: 1, expires_ts: Number.MAX_SAFE_INTEGER },
    ])
    // The release wakes the waiter (the other places do not count); it never polls, so only
    // that can end its wait.
    await held.release()
    await waiter.printed(`acquired ${name}`)
    assert.ok(printedFence(waiter, name) > held.fence)
    // The places nobody listens for are cleared by the winning attempt (native) or by the next
    // join (emulated); the waiter's own place is gone.
    await until(async () => (await line(h, name)).filter((w) => w === waiterName), 0, 'the waiter left')
    await finish(waiter)
  })

  it('sends nothing for a wake addressed to it for a lock it was not in line for (a forged turn)', { timeout: 30_000 }, async () => {
    const name = h.lockName('turn')
    const never = h.lockName('never-waited')
    const held = await h.store().tryAcquireLock(name)
    assert.ok(held)
    const own = h.connection()
    const waiter = h.store(patient(), own)
    let refused = 0
    waiter.on('refused', () => refused++)
    const waiting = waiter.acquireLock(name)
    const [waiterName] = await until(() => line(h, name), 1, 'the waiter is in line, listening')
    const notify = (lock: string) => h.knex.raw('SELECT pg_notify(?, ?)', [`wl_waiter_${waiterName}`, JSON.stringify([lock, '', 'forger'])])
    const { sql, kinds } = await statementsDuring(own, async () => {
      for (let i = 0; i < 5; i++) await notify(never)
      // Notifications arrive in order: once the wake for the lock it waits for has made it look
      // at the row again, the five before it were read.
      const before = refused
      await notify(name)
      await until(async () => (refused > before ? [true] : []), 1, 'the real wake was heard')
    })
    assert.deepEqual(sql.filter((text) => /pg_notify/.test(text)), [], 'no turn passed on')
    assert.deepEqual(kinds.filter((k) => k === 'line-leave'), [], 'no leave for a lock it was never in line for')
    await held.release()
    assert.ok((await waiting).fence > held.fence)
  })

  it('passes a turn that reached a store no longer waiting on to the next store of the same process', { timeout: 60_000 }, async () => {
    const name = h.lockName('sibling')
    const holder = await startWorker(h, name)
    const first = h.store(patient())
    const second = h.store(patient())
    const giveUp = new AbortController()
    const gaveUp = first.acquireLock(name, '', { signal: giveUp.signal })
    const [firstName] = await until(() => line(h, name), 1, 'the first store is in line')
    const waiting = second.acquireLock(name)
    await until(() => line(h, name), 2, 'the second store is in line behind it')
    giveUp.abort()
    await assert.rejects(gaveUp)
    await until(() => line(h, name), 1, 'the first store left')
    // As if its leave had failed: the first store is first in line again, but does not wait.
    await h.knex(`${h.tableName}_waiters`).insert({
      lock_name: name, lock_key: '', waiter: firstName, process_tag: 'elsewhere', since_ts: 0, expires_ts: Number.MAX_SAFE_INTEGER,
    })
    await holder.release()
    // Neither store polls: only the first store's passing the wake on ends the second's wait.
    const lock = await waiting
    assert.equal(await lock.isStillValid(), true)
    await until(() => line(h, name), 0, 'neither store is in line') // a woken first store leaves in the background
    holder.child.stdin?.end()
    await holder.exited
  })

  it('releases and wakes waiting processes also on a table without a waiting line (or whose line was dropped)', { timeout: 60_000 }, async () => {
    const tableName = uniqueName('wl_noline')
    await createLockTable(h.knex, { tableName })
    try {
      // A store that saw the line, which is then dropped (the migration rolled back): its
      // releases still work, now notifying everyone.
      const early = h.store({ tableName })
      const other = h.store({ tableName })
      await other.init()
      const before = await early.tryAcquireLock('early')
      const beforeToo = await early.tryAcquireLock('early-too')
      assert.ok(before && beforeToo)
      await h.knex.schema.dropTable(`${tableName}_waiters`)
      // Waiters of stores that saw the line (their attempts would keep their place in it) still
      // get their locks; releases still work.
      const waiting = other.acquireLock('early-too')
      await new Promise<void>((resolve) => { const off = other.on('refused', () => { off(); resolve() }) })
      await before.release()
      await beforeToo.release()
      await (await waiting).release()
      assert.deepEqual(await early.listLocks(), [])

      const name = h.lockName('no-line')
      const holder = h.store({ tableName })
      const held = await holder.tryAcquireLock(name)
      assert.ok(held)
      const waiter = await startWaiter(h, { WL_TABLE: tableName })
      waiter.send(`wait ${name}`)
      await waiter.printed(`refused ${name}`)
      await until(() => listeningPids(h, tableName), 1, 'the waiter listens') // a new table: no other listener
      await held.release()
      await waiter.printed(`acquired ${name}`)
      await finish(waiter)
      await holder.close()
    } finally {
      await dropLockTable(h.knex, { tableName })
    }
  })
}, ['postgres'])
