// Locks on a 3-node MariaDB Galera cluster (.ci/galera), where every node takes writes: stores
// on all nodes contend for the same locks, and then one node is killed mid-run. Galera settles
// concurrent writes to the same rows at commit (certification: the transaction certified later
// fails with error 1213), so these tests check that such conflicts become refusals or retries,
// never errors, and that the lock table's guarantees hold across nodes: no two holders at once,
// fences strictly increasing per lock, every call settled by its deadline. Each test runs with
// both strategies.
//
// GALERA_URLS (comma-separated) points at the nodes; .ci/run starts the cluster and sets it. The
// node-kill test runs .ci/galera kill-node 3 and start-node 3, which find the cluster through a
// state file under ${TMPDIR:-/tmp}: run it with the TMPDIR (and GALERA_PORT) of `.ci/galera start`.
// A cluster that is not set or does not answer is a failure under CI=true, and otherwise a loud
// warning and a skipped test. (DIALECTS without mysql skips it.)
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import { after, before, describe, it } from 'node:test'
import type { Knex } from 'knex'
import { LockStore, createLockTable, dropLockTable, type Lock, type Strategy } from '../src/index.js'
import {
  conflictCounters, GALERA_NODES, galeraControlReason, galeraReason, galeraScript, galeraUrls, globalStatus, type ConflictCounters,
} from './galera-cluster.mjs'
import { bump, Contention, CountingLogger, HANG_MS, isServerTriggerFault, Referee, type ContentionOptions, type Member } from './galera-contention.mjs'
import { inCI, uniqueName } from './targets.mjs'
import { connectMysql, describeError, sleep, topology, wanted } from './topology-helpers.mjs'

/** A guard against a hang of the smoke tests, which take well under a second. */
const SMOKE_TIMEOUT_MS = 60_000
/** A guard against a hang of a multi-writer test (a node restart takes 10-20 s of it). */
const TEST_TIMEOUT_MS = 150_000
const STORES_PER_NODE = 2
const CONTENTION: ContentionOptions = {
  names: ['contended-0', 'contended-1', 'contended-2'], timeoutMs: 1_000, holdMs: 3, tryEvery: 4, statementTimeoutMs: 5_000,
}
/** How long the stores contend in the contention test. */
const CONTENTION_MS = 6_000
/** Every store's lockTimeoutMs: a killed node's locks lapse this long after their last renewal. */
const LEASE_MS = 2_000
/** How long the stores contend with every node up before node 3 is killed. */
const BEFORE_KILL_MS = 1_500
/** After the kill, the run goes on until each surviving node has had this many grants since the takeover… */
const GRANTS_AFTER_TAKEOVER = 10
/** …or this long after the kill at most (then the test fails). */
const AFTER_KILL_MAX_MS = 30_000
/** How long the store on node 1 waits for the killed node's lock. */
const TAKEOVER_TIMEOUT_MS = 30_000

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => { unhandled.push(reason) })

const perNode = (values: ArrayLike<number | string>): string => Array.from(values, (v, i) => `n${i + 1}=${v}`).join(' ')
const counts = (map: ReadonlyMap<string, number>): string => (map.size === 0 ? 'none' : [...map].map(([k, v]) => `${k}: ${v}`).join(', '))
const ms = (value: number | undefined): string => (value === undefined || !Number.isFinite(value) ? 'n/a' : `${Math.round(value)} ms`)

/** Stores on the cluster's nodes, each with a knex of its own; closed by `close()`. */
class Fleet {
  readonly members: Member[] = []
  readonly logger = new CountingLogger()
  readonly #knexes: Knex[] = []
  constructor(readonly urls: readonly string[], readonly table: string, readonly strategy: Strategy) {}

  add(node: number, label: string): Member {
    const knex = connectMysql(this.urls[node - 1]!, 3)
    this.#knexes.push(knex)
    const store = new LockStore(knex, {
      tableName: this.table, strategy: this.strategy, lockTimeoutMs: LEASE_MS, statementTimeoutMs: CONTENTION.statementTimeoutMs, logger: this.logger,
    })
    const member = { label, node, store }
    this.members.push(member)
    return member
  }

  /** `STORES_PER_NODE` contending stores on every node. */
  contenders(): Member[] {
    const made: Member[] = []
    for (let node = 1; node <= GALERA_NODES; node++) {
      for (let i = 1; i <= STORES_PER_NODE; i++) made.push(this.add(node, `store ${node}.${i}`))
    }
    return made
  }

  async close(): Promise<void> {
    // A store on a node that is down may take its statement timeout to give up a release.
    await Promise.race([Promise.allSettled(this.members.map((m) => m.store.close())), sleep(CONTENTION.statementTimeoutMs + HANG_MS)])
    await Promise.allSettled(this.#knexes.map((knex) => knex.destroy()))
  }
}

/** The conflict counters of every node, or undefined for a node that does not answer. */
const countersOf = (monitors: readonly Knex[]): Promise<Array<ConflictCounters | undefined>> =>
  Promise.all(monitors.map((knex) => conflictCounters(knex).catch(() => undefined)))

function deltas(before: ReadonlyArray<ConflictCounters | undefined>, after: ReadonlyArray<ConflictCounters | undefined>): { cert: string; bf: string } {
  const delta = (pick: (c: ConflictCounters) => number) => before.map((b, i) => {
    const a = after[i]
    return b && a ? `+${pick(a) - pick(b)}` : 'n/a'
  })
  return { cert: perNode(delta((c) => c.certFailures)), bf: perNode(delta((c) => c.bfAborts)) }
}

/** The assertions every run shares: the referee saw no overlap, fence fault, hang or unhandled rejection. */
function assertSound(referee: Referee): void {
  assert.deepEqual(referee.overlaps, [], 'no two holders of a lock at once')
  assert.deepEqual(referee.fenceFaults, [], 'fences strictly increase per lock in grant order')
  assert.deepEqual(referee.hangs, [], `every call settles within ${HANG_MS} ms of its deadline`)
  assert.deepEqual(referee.untyped, [], 'every error is one of the library\'s own (a LockError)')
  assert.deepEqual(unhandled.map(describeError), [], 'no unhandled rejection')
}

function smokeTests(urls: readonly string[]): void {
  const options = { timeout: SMOKE_TIMEOUT_MS }
  const table = uniqueName('wl_topology')
  let nodes: Knex[] = []
  before(() => { nodes = urls.map((url) => connectMysql(url)) })
  after(async () => {
    await nodes[0]?.schema.dropTableIfExists(table)
    await Promise.all(nodes.map((knex) => knex.destroy()))
  })

  const wsrepStatus = (knex: Knex): Promise<Record<string, string>> => globalStatus(knex,
    ['wsrep_cluster_size', 'wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_cluster_state_uuid'])

  it(`every node is ready and Synced in one primary cluster of ${GALERA_NODES}`, options, async () => {
    const statuses = await Promise.all(nodes.map(wsrepStatus))
    for (const [index, status] of statuses.entries()) {
      assert.deepEqual(
        [status.wsrep_cluster_size, status.wsrep_ready, status.wsrep_local_state_comment, status.wsrep_cluster_status],
        [String(GALERA_NODES), 'ON', 'Synced', 'Primary'],
        `node ${index + 1} (${urls[index]}): ${JSON.stringify(status)}`)
    }
    assert.equal(new Set(statuses.map((s) => s.wsrep_cluster_state_uuid)).size, 1, 'one cluster, not several')
  })

  it('a row written on node 1 is visible on nodes 2 and 3', options, async () => {
    const [first, ...others] = nodes
    assert.ok(first)
    // Galera certifies and replicates only InnoDB tables with a primary key.
    await first.schema.createTable(table, (t) => {
      t.engine('InnoDB')
      t.integer('id').primary()
      t.string('note', 100).notNullable()
    })
    const note = `written on node 1 at ${new Date().toISOString()}`
    await first(table).insert({ id: 1, note })
    for (const [index, knex] of others.entries()) {
      // A causal read: the node applies everything committed in the cluster before it answers.
      await knex.raw('SET SESSION wsrep_sync_wait = 1')
      assert.deepEqual(await knex(table).select('id', 'note'), [{ id: 1, note }], `node ${index + 2} shows the row`)
    }
  })
}

/** What one strategy's runs measured, printed as one line when they are done. */
interface Figures {
  contention?: string
  kill?: string
  /** What went wrong with renewals of locks held through a run, checked by the last test. */
  renewalFaults: string[]
  renewalRuns: number
}

function multiWriterTests(urls: readonly string[], strategy: Strategy, controlReason: string | undefined): void {
  const options = { timeout: TEST_TIMEOUT_MS }
  const figures: Figures = { renewalFaults: [], renewalRuns: 0 }
  let admin: Knex
  let monitors: Knex[] = []
  let table: string
  before(() => {
    admin = connectMysql(urls[0]!)
    monitors = urls.map((url) => connectMysql(url))
  })
  after(async () => {
    console.log(`galera/${strategy}: contention: ${figures.contention ?? 'did not run'} | node 3 killed: ${figures.kill ?? 'did not run'} | ` +
      `renewal faults: ${figures.renewalFaults.length === 0 ? 'none' : figures.renewalFaults.join('; ')}`)
    await Promise.allSettled([admin.destroy(), ...monitors.map((knex) => knex.destroy())])
  })

  /** A lock table of the test's own, made through node 1 (DDL runs on every node at once) and dropped after `body`. */
  async function withTable(body: (fleet: Fleet) => Promise<void>): Promise<void> {
    table = uniqueName('wl_galera')
    await createLockTable(admin, { tableName: table })
    // The other nodes apply the DDL in order but on their own time (a node just restarted may
    // lag): a causal read on each waits until it has applied everything node 1 committed.
    await Promise.all(monitors.map((knex) => knex.raw('SET STATEMENT wsrep_sync_wait = 1 FOR SELECT lease_ms, fence FROM ?? LIMIT 0', [table])))
    const fleet = new Fleet(urls, table, strategy)
    try {
      await body(fleet)
    } finally {
      await fleet.close()
      await dropLockTable(admin, { tableName: table })
    }
  }

  it(`stores on every node contend for ${CONTENTION.names.length} locks for ${CONTENTION_MS / 1000} s: no overlap, fences in order, no conflict surfaces as an error, every call on time`, options, () => withTable(async (fleet) => {
    const members = fleet.contenders()
    // A lock nobody else wants, held throughout: its renewals meet the others' grants.
    const steadyMember = fleet.add(3, 'steady holder on node 3')
    await Promise.all(fleet.members.map((m) => m.store.init()))
    const steady = await steadyMember.store.acquireLock('steady', { timeoutMs: 10_000 })
    let renewals = 0
    steadyMember.store.on('renewed', () => { renewals++ })
    const before = await countersOf(monitors)
    const referee = new Referee()
    const contention = new Contention(members, referee, CONTENTION)
    await sleep(CONTENTION_MS)
    await contention.stop()
    const { cert, bf } = deltas(before, await countersOf(monitors))
    // Node 3's triggers may break under the contention (a server defect, see isServerTriggerFault):
    // then the steady lock's calls fail there, counted apart like the contenders' calls.
    const triggerFault = (error: unknown): 'fault' => {
      if (!isServerTriggerFault(error)) throw error
      bump(referee.serverFaults, 'node 3 steady')
      return 'fault'
    }
    const steadyLost = steady.lost
    const steadyValid = await steady.isStillValid().catch(triggerFault)
    await steady.release().catch(triggerFault)
    const steadyNodeBroken = [...referee.serverFaults.keys()].some((where) => where.startsWith('node 3'))

    const grants = [1, 2, 3].map((node) => referee.grantsSince(-Infinity, node))
    figures.contention = `grants ${perNode(grants)}; refusals ${referee.refusals}; timeouts ${counts(referee.timeouts)}; errors ${counts(referee.errors)}; server trigger faults ${counts(referee.serverFaults)}; ` +
      `logged ${counts(fleet.logger.counts)}; overlaps ${referee.overlaps.length}; fence faults ${referee.fenceFaults.length}; ` +
      `max lateness ${ms(referee.maxLatenessMs)}; calls ${referee.calls}; cert failures ${cert}; BF aborts ${bf}; ` +
      `steady lock ${steadyLost ? 'LOST' : 'held'} (${renewals} renewals)`
    console.log(`galera/${strategy} contention: ${figures.contention}`)

    figures.renewalRuns++
    if (fleet.logger.renewalDeadlocks > 0) figures.renewalFaults.push(`contention: ${fleet.logger.renewalDeadlocks} renewal(s) failed with a conflict after their retries`)
    // Renewals on a node whose triggers broke fail as every statement there does: the server's fault, counted above.
    if ((steadyLost || steadyValid !== true) && !steadyNodeBroken) figures.renewalFaults.push(`contention: the lock held throughout was ${steadyLost ? 'lost' : 'no longer valid'}`)

    assertSound(referee)
    assert.deepEqual(Object.fromEntries(referee.errors), {}, 'no call rejects with anything but a timeout')
    assert.equal(fleet.logger.attemptDeadlocks, 0, 'no attempt of a wait failed with a conflict (error 1213)')
    for (const [node, count] of grants.entries()) assert.ok(count > 0, `stores on node ${node + 1} got grants (${perNode(grants)})`)
  }))

  const killTitle = 'node 3 is killed while every node contends and a store there holds a lock: the others go on, the lock is taken over after its lease with a larger fence, its holder learns it lost it'
  if (controlReason !== undefined) {
    if (inCI) {
      it(`${killTitle}: .ci/galera can restart nodes (CI=true)`, () => { throw new Error(`node 3 cannot be killed, and CI=true forbids skipping it: ${controlReason}`) })
    } else {
      console.warn(`\n*** SKIPPED galera/${strategy} node kill: ${controlReason}\n*** Run the test with the TMPDIR and GALERA_PORT of .ci/galera start; CI=true makes this a failure.\n`)
      it(`${killTitle}: skipped`, { skip: controlReason }, () => undefined)
    }
  } else it(killTitle, options, () => withTable(async (fleet) => {
    const members = fleet.contenders()
    const victimMember = fleet.add(3, 'victim holder on node 3')
    const takerMember = fleet.add(1, 'taker on node 1')
    // Takes over where node 1 cannot (its triggers broken by the server; see isServerTriggerFault).
    const spareTaker = fleet.add(2, 'spare taker on node 2')
    await Promise.all(fleet.members.map((m) => m.store.init()))
    const referee = new Referee()
    let victimLoss: { at: number; reason: string } | undefined
    victimMember.store.on('lost', (event) => { if (event.name === 'victim') victimLoss ??= { at: performance.now(), reason: event.reason } })

    const victim = await victimMember.store.acquireLock('victim', { timeoutMs: 10_000 })
    referee.granted(victimMember, victim)
    const before = await countersOf(monitors)
    const contention = new Contention(members, referee, CONTENTION)
    await sleep(BEFORE_KILL_MS)
    assert.ok(!victim.lost, 'the victim lock is held when node 3 is killed')

    const killStartedAt = performance.now()
    let killedAt = NaN
    let takeoverAt = NaN
    let took: Lock | undefined
    let restartMs = NaN
    let after: Array<ConflictCounters | undefined> = []
    try {
      await galeraScript('kill-node', '3')
      killedAt = performance.now()
      const started = performance.now()
      let taker = takerMember
      took = await referee.timed('taker acquireLock(victim)', started + TAKEOVER_TIMEOUT_MS,
        () => takerMember.store.acquireLock('victim', { timeoutMs: TAKEOVER_TIMEOUT_MS })).catch((error: unknown) => {
        if (!isServerTriggerFault(error)) throw error
        referee.failed(takerMember, 'takeover', error)
        taker = spareTaker
        return referee.timed('spare taker acquireLock(victim)', performance.now() + TAKEOVER_TIMEOUT_MS,
          () => spareTaker.store.acquireLock('victim', { timeoutMs: TAKEOVER_TIMEOUT_MS }))
      })
      takeoverAt = performance.now()
      referee.granted(taker, took)
      while (performance.now() - killedAt < AFTER_KILL_MAX_MS &&
        (referee.grantsSince(takeoverAt, 1) < GRANTS_AFTER_TAKEOVER || referee.grantsSince(takeoverAt, 2) < GRANTS_AFTER_TAKEOVER)) await sleep(50)
    } finally {
      await contention.stop()
      after = await countersOf(monitors)
      if (took) {
        referee.releasing(took)
        await took.release().catch((error: unknown) => referee.failed(takerMember, 'release', error))
      }
      const restarting = performance.now()
      await galeraScript('start-node', '3')
      restartMs = performance.now() - restarting
    }
    // The victim's own release, now that it knows: nothing to delete, nothing to throw.
    await referee.timed('victim release()', performance.now() + CONTENTION.statementTimeoutMs, () => victim.release())
      .catch((error: unknown) => referee.failed(victimMember, 'release', error))

    const grantTimes = referee.grants.map((g) => g.at)
    // The longest gap without any grant that ends after the kill (the one the kill causes).
    let stall = 0
    for (let i = 1; i < grantTimes.length; i++) {
      if (grantTimes[i]! > killStartedAt) stall = Math.max(stall, grantTimes[i]! - Math.max(grantTimes[i - 1]!, killStartedAt))
    }
    const beforeKill = [1, 2, 3].map((node) => referee.grants.filter((g) => g.node === node && g.at < killStartedAt).length)
    const afterKill = [1, 2, 3].map((node) => referee.grantsSince(killStartedAt, node))
    const { cert, bf } = deltas(before, after)
    const victimLostAfter = victimLoss === undefined ? undefined : victimLoss.at - killStartedAt
    figures.kill = `grants before kill ${perNode(beforeKill)}, after ${perNode(afterKill)}; refusals ${referee.refusals}; timeouts ${counts(referee.timeouts)}; ` +
      `errors ${counts(referee.errors)}; server trigger faults ${counts(referee.serverFaults)}; logged ${counts(fleet.logger.counts)}; overlaps ${referee.overlaps.length}; fence faults ${referee.fenceFaults.length}; ` +
      `max lateness ${ms(referee.maxLatenessMs)}; kill-node took ${ms(killedAt - killStartedAt)}; times from its start: stall ${ms(stall)}, ` +
      `victim lost after ${ms(victimLostAfter)} (${victimLoss?.reason ?? 'never'}), taken over after ${ms(takeoverAt - killStartedAt)} (fence ${victim.fence} → ${took?.fence ?? 'none'}); node 3 restart ${ms(restartMs)}; ` +
      `cert failures ${cert}; BF aborts ${bf} (node 3 until killed: not read)`
    console.log(`galera/${strategy} node 3 killed: ${figures.kill}`)

    figures.renewalRuns++
    if (fleet.logger.renewalDeadlocks > 0) figures.renewalFaults.push(`node kill: ${fleet.logger.renewalDeadlocks} renewal(s) failed with a conflict after their retries`)
    // Renewed every LEASE_MS / 4 while node 3 was up, the victim cannot expire sooner than this after the kill began.
    if (victimLoss && victimLoss.at < killStartedAt + LEASE_MS - victimMember.store.renewalIntervalMs) {
      figures.renewalFaults.push(`node kill: the victim lock expired ${ms(victimLoss.at - killStartedAt)} after the kill began: its renewals failed while node 3 was up`)
    }

    assertSound(referee)
    assert.ok(took, 'a store on node 1 (or, where its triggers broke, node 2) took the victim lock over')
    assert.ok(took.fence > victim.fence, `the takeover's fence ${took.fence} is larger than the victim's ${victim.fence}`)
    assert.equal(victim.lost, true, 'the holder on node 3 knows its lock is lost')
    assert.equal(victimLoss?.reason, 'expired', 'its store said so with a lost event: no renewal within the lease')
    for (const node of [1, 2]) {
      assert.ok(referee.grantsSince(takeoverAt, node) >= GRANTS_AFTER_TAKEOVER,
        `stores on node ${node} kept getting grants after the takeover (${referee.grantsSince(takeoverAt, node)} within ${AFTER_KILL_MAX_MS} ms of the kill)`)
    }
    // While the survivors wait to evict node 3 (evs.suspect_timeout, 5 s) they commit nothing: a
    // statement held up that long is cancelled at its bound, a typed error, not a conflict.
    for (const [what, count] of referee.errors) {
      assert.ok(what.startsWith('node 3 ') || /LockDatabaseError←StatementTimeoutError/.test(what),
        `stores on nodes 1 and 2 see no errors but timeouts and statements cut at their bound: ${what} (${count})`)
    }
    assert.equal(fleet.logger.attemptDeadlocks, 0, 'no attempt of a wait failed with a conflict (error 1213)')
  }))

  // Renewals must not lose to the grants of other locks on other nodes: a renewal joined to
  // JSON_TABLE did (with the native strategy, whose every attempt bumps the fence counter), and a
  // live holder's lock ended as 'expired'.
  it('locks held through those runs were renewed: no renewal lost a conflict for good, no lock was lost while its node was up',
    options, () => {
      assert.equal(figures.renewalRuns, controlReason === undefined ? 2 : 1, 'the runs above got as far as their checks')
      assert.deepEqual(figures.renewalFaults, [])
    })
}

if (!wanted('mysql')) {
  it('MariaDB Galera cluster: skipped, DIALECTS leaves out mysql', { skip: 'DIALECTS leaves out mysql' }, () => undefined)
} else {
  const reason = await galeraReason(galeraUrls)
  const controlReason = reason === undefined ? await galeraControlReason(galeraUrls) : undefined
  topology(`MariaDB Galera cluster of ${GALERA_NODES} nodes`, 'Run .ci/galera start and set GALERA_URLS', reason, () => {
    smokeTests(galeraUrls)
    for (const strategy of ['native', 'emulated'] as const) {
      describe(`galera/${strategy}: writers on every node`, () => multiWriterTests(galeraUrls, strategy, controlReason))
    }
  })
}
