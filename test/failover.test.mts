// Locks and fences across a PostgreSQL failover, on pairs of servers of this file's own
// (.ci/pg-failover on ports 5443-5446, not the pair other tests use):
// - a synchronous pair: stores hold and take locks while the primary is killed and the standby
//   promoted; no two holders overlap, fences per lock keep growing, and no durable release
//   acknowledged before the kill comes back as a held row;
// - an asynchronous pair whose standby lags (its replication runs through a proxy the test
//   freezes): the promoted standby has lost fences, yet every fence it draws is larger than every
//   fence drawn before; a table without the fence epoch's triggers, in the same run, goes back;
// - on the shared server, as an application role that is no superuser: the migration, and fences
//   that move to a larger epoch when the timeline changes, also when it goes down.
import assert from 'node:assert/strict'
import { describe, it, type TestContext } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { LockStore, createLockTable, type Lock } from '../src/index.js'
import { FailoverPair, following, on, type Target } from './failover-pair.mjs'
import { TcpProxy } from './tcp-proxy.mjs'
import { POSTGRES_URL, connect, uniqueName } from './targets.mjs'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const EPOCH_BITS = 48n
const epochOf = (fence: bigint): bigint => fence >> EPOCH_BITS
const max = (values: readonly bigint[]): bigint => values.reduce((a, b) => (b > a ? b : a))
const min = (values: readonly bigint[]): bigint => values.reduce((a, b) => (b < a ? b : a))
const rows = async <T,>(knex: Knex, sql: string, bindings: readonly unknown[] = []): Promise<T[]> =>
  ((await knex.raw(sql, bindings as Knex.RawBinding[])) as { rows: T[] }).rows
const one = async <T,>(knex: Knex, sql: string, bindings: readonly unknown[] = []): Promise<T> => {
  const [row] = await rows<T>(knex, sql, bindings)
  assert.ok(row, `a row from ${sql}`)
  return row
}

const wanted = !process.env.DIALECTS?.trim() || process.env.DIALECTS.split(',').map((s) => s.trim()).includes('postgres')
/** A guard against a hang only: each test takes 10 to 25 s here. */
const TIMEOUT_MS = 120_000

/** What one group of stores saw while taking locks across the failover. */
interface Run {
  readonly table: string
  readonly durable: boolean
  readonly holding: Set<string>
  readonly lastFence: Map<string, bigint>
  readonly grants: Array<{ at: number; fence: bigint }>
  readonly acknowledged: Array<{ token: string; at: number }>
  overlaps: number
  backward: string[]
  errors: number
}

const LOCKS = ['a', 'b', 'c', 'd']

/** Takes random locks of `run` and holds each a few ms until `stopped()`, recording what it saw. */
async function work(store: LockStore, run: Run, stopped: () => boolean): Promise<void> {
  while (!stopped()) {
    const name = LOCKS[Math.floor(Math.random() * LOCKS.length)]!
    let lock: Lock | null
    try {
      lock = await store.tryAcquireLock(name)
    } catch {
      run.errors++
      await sleep(20)
      continue
    }
    if (!lock) {
      await sleep(2)
      continue
    }
    if (run.holding.has(name)) run.overlaps++
    run.holding.add(name)
    const last = run.lastFence.get(name)
    if (last !== undefined && lock.fence <= last) run.backward.push(`${name}: ${last} then ${lock.fence}`)
    run.lastFence.set(name, lock.fence)
    run.grants.push({ at: Date.now(), fence: lock.fence })
    await sleep(1 + Math.random() * 5)
    run.holding.delete(name)
    try {
      await lock.release()
      run.acknowledged.push({ token: lock.token, at: Date.now() })
    } catch {
      run.errors++
    }
  }
}

/** Reports the longest time without a grant, and where it fell against the failover's steps (ms from the kill command). */
function describeStall(t: TestContext, run: Run, steps: { kill: number; killed: number; promoted: number }): void {
  let gap = { ms: 0, from: 0 }
  for (let i = 1; i < run.grants.length; i++) {
    const ms = run.grants[i]!.at - run.grants[i - 1]!.at
    if (ms > gap.ms) gap = { ms, from: run.grants[i - 1]!.at }
  }
  const grantsBefore = run.grants.filter((g) => g.at < steps.kill).length
  t.diagnostic(`durableReleases ${run.durable}: ${grantsBefore} grants before the kill, ${run.grants.length - grantsBefore} after; ` +
    `longest time without a grant ${gap.ms} ms, from ${gap.from - steps.kill} ms (kill command returned at ${steps.killed - steps.kill} ms, ` +
    `promote command returned at ${steps.promoted - steps.kill} ms); ${run.errors} calls failed`)
}

describe('PostgreSQL failover', { skip: !wanted && 'DIALECTS without postgres' }, () => {
  it('synchronous standby promoted while stores work: no overlap, fences grow, no durable release comes back', { timeout: TIMEOUT_MS }, async (t) => {
    const pair = await FailoverPair.startOrSkip(t, { primaryPort: 5443, standbyPort: 5444, async: false })
    if (!pair) return
    const target: Target = { port: pair.primaryPort }
    const knexes: Knex[] = []
    const stores: LockStore[] = []
    try {
      const admin = following(target, 1)
      knexes.push(admin)
      const runs: Run[] = [true, false].map((durable) => ({
        table: uniqueName(durable ? 'wl_fo_durable' : 'wl_fo_quick'), durable,
        holding: new Set(), lastFence: new Map(), grants: [], acknowledged: [], overlaps: 0, backward: [], errors: 0,
      }))
      for (const run of runs) await createLockTable(admin, { tableName: run.table })
      let stop = false
      const loops: Array<Promise<void>> = []
      for (const run of runs) {
        for (let i = 0; i < 4; i++) {
          const knex = following(target, 2)
          knexes.push(knex)
          // A short lease: a lock whose release the failover cut off is free again within the test.
          const store = new LockStore(knex, { tableName: run.table, durableReleases: run.durable, lockTimeoutMs: 3_000, statementTimeoutMs: 5_000 })
          stores.push(store)
          loops.push(work(store, run, () => stop))
        }
      }
      await sleep(2_000)
      const killedAt = Date.now()
      await pair.run('kill-primary')
      const deadAt = Date.now()
      // As a virtual IP moves: new connections reach the standby, which takes writes once promoted.
      target.port = pair.standbyPort
      await pair.run('promote')
      const promotedAt = Date.now()
      await sleep(5_000)
      stop = true
      await Promise.all(loops)

      for (const run of runs) {
        describeStall(t, run, { kill: killedAt, killed: deadAt, promoted: promotedAt })
        assert.equal(run.overlaps, 0, 'no two holders of one lock at once')
        assert.deepEqual(run.backward, [], 'fences per lock grow strictly in grant order')
        assert.ok(run.grants.some((g) => g.at < killedAt) && run.grants.some((g) => g.at > promotedAt), 'locks were granted before the kill and after the promotion')
        assert.ok(run.grants.filter((g) => g.at > promotedAt).every((g) => epochOf(g.fence) >= 1n), 'fences on the new timeline carry a larger epoch')
        // Acknowledged before the kill command started: surely before the crash.
        const released = run.acknowledged.filter((r) => r.at < killedAt).map((r) => r.token)
        const back = await rows<{ token: string }>(admin, 'SELECT token FROM ?? WHERE token = ANY(?)', [run.table, released])
        t.diagnostic(`durableReleases ${run.durable}: ${back.length} of ${released.length} releases acknowledged before the kill came back as held rows`)
        if (run.durable) assert.equal(back.length, 0, 'no durable release acknowledged before the kill is undone')
      }
    } finally {
      await Promise.allSettled(stores.map((s) => s.close()))
      await Promise.allSettled(knexes.map((k) => k.destroy()))
      await pair.stop()
    }
  })

  it('asynchronous standby that lags, promoted: every fence it draws is larger than every fence drawn before', { timeout: TIMEOUT_MS }, async (t) => {
    const pair = await FailoverPair.startOrSkip(t, { primaryPort: 5445, standbyPort: 5446, async: true })
    if (!pair) return
    const knexes: Knex[] = []
    const stores: LockStore[] = []
    let proxy: TcpProxy | undefined
    try {
      // The standby's replication connection runs through a proxy the test can freeze.
      proxy = await TcpProxy.start(pair.primaryPort)
      const standby = on(pair.standbyPort, 1)
      knexes.push(standby)
      await standby.raw(`ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=${proxy.port} user=postgres application_name=wl_standby'`)
      await standby.raw('SELECT pg_reload_conf()')
      const streamingThroughProxy = async (): Promise<boolean> =>
        (await rows<{ port: number }>(standby, "SELECT sender_port AS port FROM pg_stat_wal_receiver WHERE status = 'streaming'"))[0]?.port === proxy!.port
      for (let deadline = Date.now() + 30_000; !(await streamingThroughProxy());) {
        assert.ok(Date.now() < deadline, 'the standby streams through the proxy within 30 s')
        await sleep(100)
      }

      const target: Target = { port: pair.primaryPort }
      const primary = following(target, 1)
      knexes.push(primary)
      const fenced = uniqueName('wl_fo_epoch')
      const unfenced = uniqueName('wl_fo_noepoch')
      const storeOf = (tableName: string): LockStore => {
        const knex = following(target, 2)
        knexes.push(knex)
        const store = new LockStore(knex, { tableName, lockTimeoutMs: 2_000, statementTimeoutMs: 5_000 })
        stores.push(store)
        return store
      }
      await createLockTable(primary, { tableName: fenced })
      await createLockTable(primary, { tableName: unfenced })
      const withEpoch = storeOf(fenced)
      const withoutEpoch = storeOf(unfenced)
      // The negative control: a store that saw the table migrated, then the triggers gone (as a
      // table that never had them would behave).
      await withoutEpoch.init()
      for (const table of [unfenced, `${unfenced}_rw_keys`]) await primary.raw('DROP TRIGGER ?? ON ??', [`${unfenced}_fence_epoch`, table])

      /** Takes and releases each plain lock and each read/write key `rounds` times, retrying through the failover; the fences. */
      const draw = async (store: LockStore, rounds: number): Promise<bigint[]> => {
        const fences: bigint[] = []
        const once = async (take: () => Promise<Lock | null>): Promise<void> => {
          for (const deadline = Date.now() + 20_000; ;) {
            assert.ok(Date.now() < deadline, 'a lock is granted within 20 s')
            const lock = await take().catch(() => null)
            if (lock) {
              fences.push(lock.fence)
              await lock.release()
              return
            }
            await sleep(100)
          }
        }
        for (let i = 0; i < rounds; i++) {
          for (const name of ['a', 'b', 'c']) await once(() => store.tryAcquireLock(name))
          for (const key of ['x', 'y']) await once(() => store.tryAcquireReadWriteLock('rw', key, { write: i % 2 === 0 }))
        }
        return fences
      }
      const caughtUp = async (): Promise<void> => {
        const { lsn } = await one<{ lsn: string }>(primary, 'SELECT pg_current_wal_lsn()::text AS lsn')
        for (let deadline = Date.now() + 30_000; ;) {
          const { done } = await one<{ done: boolean }>(standby, 'SELECT pg_last_wal_replay_lsn() >= ?::pg_lsn AS done', [lsn])
          if (done) return
          assert.ok(Date.now() < deadline, 'the standby replays within 30 s')
          await sleep(50)
        }
      }

      const before = { fenced: await draw(withEpoch, 10), unfenced: await draw(withoutEpoch, 10) }
      await caughtUp()
      proxy.freeze()
      before.fenced.push(...await draw(withEpoch, 20))
      before.unfenced.push(...await draw(withoutEpoch, 20))
      await pair.run('kill-primary')
      await proxy.close()
      await pair.run('promote')
      target.port = pair.standbyPort

      // The new primary really lost fences: its sequence is behind the last fence handed out.
      const { last } = await one<{ last: string }>(primary, 'SELECT last_value::text AS last FROM ??', [`${fenced}_fence_seq`])
      t.diagnostic(`before the kill: highest fence ${max(before.fenced)}; the promoted standby's sequence is at ${last}`)
      assert.ok(BigInt(last) < max(before.fenced), 'the promoted standby lost fences (its sequence is behind)')

      const after = { fenced: await draw(withEpoch, 3), unfenced: await draw(withoutEpoch, 3) }
      t.diagnostic(`with the epoch: ${min(after.fenced)}..${max(after.fenced)} after, up to ${max(before.fenced)} before`)
      t.diagnostic(`without it: ${min(after.unfenced)}..${max(after.unfenced)} after, up to ${max(before.unfenced)} before`)
      assert.ok(min(after.fenced) > max(before.fenced), 'every fence on the new primary is larger than every fence before')
      assert.ok(min(after.unfenced) <= max(before.unfenced), 'without the triggers, fences go back (the failure the epoch prevents)')
    } finally {
      await Promise.allSettled(stores.map((s) => s.close()))
      await proxy?.close().catch(() => undefined)
      await Promise.allSettled(knexes.map((k) => k.destroy()))
      await pair.stop()
    }
  })

  it('migrates and fences as an application role; fences move to a larger epoch when the timeline changes, down too', { timeout: TIMEOUT_MS }, async () => {
    const admin = connect('postgres', { poolMax: 1 })
    const role = uniqueName('wl_app')
    const tableName = uniqueName('wl_fo_role')
    const epochTable = `${tableName}_fence_epoch`
    let app: Knex | undefined
    try {
      await admin.raw('CREATE ROLE ?? LOGIN', [role])
      await admin.raw('CREATE SCHEMA ?? AUTHORIZATION ??', [role, role])
      const url = new URL(POSTGRES_URL)
      url.username = role
      app = knexFactory({ client: 'pg', connection: { connectionString: url.toString() }, searchPath: [role], pool: { min: 0, max: 2 } })
      const { rolsuper } = await one<{ rolsuper: boolean }>(app, 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')
      assert.equal(rolsuper, false)
      await createLockTable(app, { tableName })
      const { tl } = await one<{ tl: string }>(app, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint AS tl")
      const timeline = BigInt(tl)
      const epochRow = async (): Promise<{ timeline: bigint; epoch: bigint }> => {
        const [row] = await rows<{ timeline: string; epoch: string }>(app!, 'SELECT timeline, epoch FROM ?? WHERE id = 1', [epochTable])
        return { timeline: BigInt(row!.timeline), epoch: BigInt(row!.epoch) }
      }
      assert.deepEqual(await epochRow(), { timeline, epoch: 0n }, 'the migration starts at epoch 0 on the server\'s timeline')

      const store = new LockStore(app, { tableName })
      const plain = async (): Promise<bigint> => {
        const lock = await store.tryAcquireLock('p')
        assert.ok(lock)
        await lock.release()
        return lock.fence
      }
      const readWrite = async (): Promise<bigint> => {
        const lock = await store.tryAcquireReadWriteLock('rw', 'k', { write: true })
        assert.ok(lock)
        await lock.release()
        return lock.fence
      }
      const first = [await plain(), await readWrite()]
      assert.ok(first.every((f) => epochOf(f) === 0n), `fences of epoch 0: ${first}`)

      // As after a promotion: the stored timeline is behind the server's.
      await app.raw('UPDATE ?? SET timeline = ?', [epochTable, String(timeline - 1n)])
      const promoted = [await plain(), await readWrite()]
      assert.deepEqual(await epochRow(), { timeline, epoch: 1n })
      assert.ok(promoted.every((f) => epochOf(f) === 1n), `fences of epoch 1: ${promoted}`)
      assert.ok(promoted[0]! > first[0]! && promoted[1]! > first[1]!)

      // As after a restore into a new cluster: the stored timeline is ahead of the server's.
      await app.raw('UPDATE ?? SET timeline = ?', [epochTable, String(timeline + 5n)])
      const restored = [await plain(), await readWrite()]
      assert.deepEqual(await epochRow(), { timeline, epoch: 2n })
      assert.ok(restored.every((f) => epochOf(f) === 2n), `fences of epoch 2: ${restored}`)
      assert.ok(restored[0]! > promoted[0]! && restored[1]! > promoted[1]!)
      // And within one timeline, fences keep coming from the sequence and the key rows.
      assert.equal(await plain(), restored[0]! + 1n)

      // Fences beyond 2^53 (a JavaScript number's exact integers) stay exact everywhere.
      await app.raw('UPDATE ?? SET timeline = ?, epoch = 100', [epochTable, String(timeline - 1n)])
      const plainLock = await store.tryAcquireLock('p')
      const rwLock = await store.tryAcquireReadWriteLock('rw', 'k', { write: true })
      assert.ok(plainLock && rwLock)
      assert.ok(plainLock.fence > 2n ** 53n && epochOf(plainLock.fence) === 101n, `${plainLock.fence}`)
      const inRows = await rows<{ fence: string }>(app, 'SELECT fence::text AS fence FROM ?? UNION ALL SELECT fence::text FROM ??', [tableName, `${tableName}_rw_holders`])
      assert.deepEqual(inRows.map((r) => BigInt(r.fence)).sort(), [plainLock.fence, rwLock.fence].sort())
      assert.deepEqual((await store.listLocks({})).map((l) => l.fence).sort(), [plainLock.fence, rwLock.fence].sort())
      await plainLock.release()
      await rwLock.release()
      assert.equal(await plain(), plainLock.fence + 1n)
      assert.equal(await readWrite(), rwLock.fence + 1n)
      await store.close()
    } finally {
      await app?.destroy()
      await admin.raw('DROP SCHEMA IF EXISTS ?? CASCADE', [role])
      await admin.raw('DROP ROLE IF EXISTS ??', [role])
      await admin.destroy()
    }
  })
})
