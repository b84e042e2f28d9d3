// lock.fence: strictly larger than every earlier acquisition's fence of the same lock.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { LockStore, ManualClock, migrationsDirectory, type Lock } from '../../src/index.js'
import { uniqueName } from '../targets.mjs'
import type { Harness } from '../harness.mjs'

const TIMEOUT = 10_000 // clockedStore's lockTimeoutMs

// A small deterministic generator, so a failing sequence can be replayed.
function random(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state * 1_664_525 + 1_013_904_223) >>> 0
    return state / 2 ** 32
  }
}

export function fenceSuite(h: Harness): void {
  it('hands out a fence with every acquisition, larger after release, takeover and re-acquire', async () => {
    const clock = new ManualClock()
    const a = h.clockedStore(clock)
    const name = h.lockName()
    const first = await a.tryAcquireLock(name)
    assert.ok(first)
    assert.equal(typeof first.fence, 'bigint')
    assert.ok(first.fence > 0n)
    await first.release()
    const second = await a.tryAcquireLock(name)
    assert.ok(second && second.fence > first.fence)
    // A worker whose clock is past a's deadline sees a's row as stale and takes it over.
    const b = h.clockedStore(new ManualClock(clock.now() + TIMEOUT + 1))
    const third = await b.tryAcquireLock(name)
    assert.ok(third && third.fence > second.fence)
    await third.release()
    const fourth = await h.clockedStore(clock).tryAcquireLock(name)
    assert.ok(fourth && fourth.fence > third.fence)
  })

  it('keeps fences strictly increasing per lock over 1,000 mixed steps across stores', async () => {
    const clock = new ManualClock()
    // Two workers, and a restarted twin of the first (same instance name) that reclaims its locks.
    const stores: LockStore[] = [
      h.clockedStore(clock, { instanceName: 'fence-w1' }),
      h.clockedStore(clock, { instanceName: 'fence-w2' }),
      h.clockedStore(clock, { instanceName: 'fence-w1' }),
    ]
    const names = [h.lockName('f'), h.lockName('f'), h.lockName('f')]
    const highest = new Map<string, bigint>()
    const held = new Map<string, Lock>()
    const next = random(20261126)
    const counts = { acquired: 0, refused: 0, released: 0, deleted: 0, expired: 0 }
    for (let step = 0; step < 1000; step++) {
      const name = names[Math.floor(next() * names.length)] ?? ''
      const roll = next()
      const current = held.get(name)
      if (roll < 0.5) {
        const store = stores[Math.floor(next() * stores.length)]
        const lock = await store?.tryAcquireLock(name)
        if (!lock) { counts.refused++; continue }
        counts.acquired++
        const previous = highest.get(name) ?? 0n
        assert.ok(lock.fence > previous, `step ${step}: fence ${lock.fence} after ${previous}`)
        highest.set(name, lock.fence)
        held.set(name, lock)
      } else if (roll < 0.75 && current) {
        counts.released++
        await current.release()
        held.delete(name)
      } else if (roll < 0.85) {
        counts.deleted++ // an operator deletes the row
        await h.knex(h.tableName).where({ lock_name: name }).delete()
      } else if (roll < 0.9) {
        counts.expired++ // everything goes stale; the next acquire takes over
        await h.knex(h.tableName).whereIn('lock_name', names).update({ last_renewed_ts: 0 })
      }
    }
    assert.ok(counts.acquired > 100 && counts.refused > 10 && counts.released > 50, JSON.stringify(counts))
  })

  it('upgrades a table holding live locks in place: rows keep their holders, get the default lease, and fences grow', async () => {
    const tableName = uniqueName('wl_upgrade')
    const knex = h.knex.withUserParams({ workerLocksTableName: tableName })
    const config = { directory: migrationsDirectory, tableName: `${tableName}_migrations`, loadExtensions: ['.cjs'] }
    try {
      await knex.migrate.up(config) // migration 1 only: the table before rows carried their lease
      assert.equal(await h.knex.schema.hasColumn(tableName, 'lease_ms'), false)
      const now = Date.now()
      await h.knex(tableName).insert([
        { lock_name: 'live', lock_key: '', instance_name: 'old-version', token: 'old-live', last_renewed_ts: now - 30_000 },
        { lock_name: 'stale', lock_key: '', instance_name: 'old-version', token: 'old-stale', last_renewed_ts: 0 },
      ])
      const before = await h.knex(tableName).orderBy('lock_name').select('fence')
      await knex.migrate.latest(config)
      const rows = await h.knex(tableName).orderBy('lock_name').select('lock_name', 'token', 'fence', 'lease_ms')
      assert.deepEqual(rows.map((r) => String(r.token)), ['old-live', 'old-stale'], 'live rows survive the upgrade')
      assert.deepEqual(rows.map((r) => Number(r.lease_ms)), [120_000, 120_000], 'rows of older stores get the default lease')
      assert.deepEqual(rows.map((r) => String(r.fence)), before.map((r) => String(r.fence)))

      // A store with a 10 s timeout cannot take the live row (30 s old, 120 s lease).
      const store = new LockStore(h.knex, { tableName, strategy: h.target.strategy, lockTimeoutMs: 10_000 })
      assert.equal(await store.tryAcquireLock('live'), null, 'a lock held before the upgrade is still held')
      const taken = await store.tryAcquireLock('stale')
      assert.ok(taken)
      assert.ok(taken.fence > BigInt(rows[1]!.fence), 'a takeover exceeds the fence of the row it takes')
      await taken.release()
      const again = await store.tryAcquireLock('stale')
      assert.ok(again && again.fence > taken.fence, 'and the next acquisition exceeds the takeover')
      await store.close()

      await knex.migrate.rollback(config, true)
      assert.equal(await h.knex.schema.hasTable(tableName), false)
    } finally {
      await h.knex.schema.dropTableIfExists(`${tableName}_waiters`)
      await h.knex.schema.dropTableIfExists(tableName)
      await h.knex.schema.dropTableIfExists(`${tableName}_fence`)
      await h.knex.schema.dropTableIfExists(`${tableName}_migrations`)
      await h.knex.schema.dropTableIfExists(`${tableName}_migrations_lock`)
    }
  })

  it('draws above every earlier fence of a lock after its row was deleted, and after a row written by hand with a lower fence', async () => {
    const store = h.store({ lockTimeoutMs: 1_000 })
    const name = h.lockName()
    const fences: bigint[] = []
    for (let i = 0; i < 3; i++) {
      const lock = await store.tryAcquireLock(name)
      assert.ok(lock)
      fences.push(lock.fence)
      await lock.release() // the row is deleted: only what the schema keeps can raise the next draw
    }
    // An operator writes a stale row by hand with the column's lowest value.
    await h.knex(h.tableName).insert({ lock_name: name, lock_key: '', instance_name: 'by-hand', token: 'by-hand', last_renewed_ts: 0, lease_ms: 1, fence: 0 })
    const taken = await store.tryAcquireLock(name)
    assert.ok(taken)
    fences.push(taken.fence)
    for (let i = 1; i < fences.length; i++) assert.ok(fences[i]! > fences[i - 1]!, `fence ${i}: ${fences.join(' < ')}`)
    await store.close()
  })

  it('grows fences in the order the lock was granted while six stores on their own connections hammer two locks', async () => {
    // Real time and real connections: fences are drawn by the database under contention. The
    // holders of one lock exclude each other, so the order in which their acquisitions are seen
    // here is the order the database granted the lock.
    const stores = Array.from({ length: 6 }, () => h.store({}, h.connection({ poolMax: 2 })))
    const names = [h.lockName('order'), h.lockName('order')]
    const last = new Map<string, bigint>()
    const holding = new Set<string>()
    const problems: string[] = []
    let acquired = 0
    const until = performance.now() + 3_000
    const work = async (store: LockStore, i: number): Promise<void> => {
      for (let round = 0; performance.now() < until; round++) {
        const name = names[(i + round) % 2] ?? ''
        const lock = round % 3 === 0 ? await store.tryAcquireLock(name) : await store.acquireLock(name, '', { timeoutMs: 2_000 }).catch(() => null)
        if (!lock) continue
        acquired++
        if (holding.has(name)) problems.push(`${name} acquired while held`)
        holding.add(name)
        const previous = last.get(name)
        if (previous !== undefined && lock.fence <= previous) problems.push(`${name}: fence ${lock.fence} after ${previous}`)
        last.set(name, lock.fence)
        await new Promise((resolve) => setImmediate(resolve))
        holding.delete(name)
        await lock.release()
      }
    }
    await Promise.all(stores.map((store, i) => work(store, i)))
    assert.deepEqual(problems, [])
    assert.ok(acquired > 20, `only ${acquired} acquisitions`)
  })
}
