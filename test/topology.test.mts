// The replicated servers the deployment tests of issue 25 run on are what they claim to be: a
// PostgreSQL primary with a synchronous streaming standby (.ci/pg-failover), and a 3-node MariaDB
// Galera cluster (.ci/galera). A smoke test only: nothing is killed or promoted here, and what it
// creates it drops.
//
// PG_PRIMARY_URL and PG_STANDBY_URL point at the PostgreSQL pair, GALERA_URLS (comma-separated)
// at the Galera nodes; .ci/run starts them and sets these. A topology that is not set or does not
// answer is a failure under CI=true, and otherwise a loud warning and a skipped test. (DIALECTS
// without postgres, or without mysql, skips the corresponding one as asked.)
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import knexFactory, { type Knex } from 'knex'
import { connect, inCI, uniqueName } from './targets.mjs'

/** A guard against a hang: each test takes well under a second. */
const TEST_TIMEOUT_MS = 60_000
/** How long a row written on the primary may take to be applied on the standby. */
const REPLAY_WAIT_MS = 10_000
const GALERA_NODES = 3

const describeError = (error: unknown): string => (error instanceof Error ? `${error.name}: ${error.message}` : String(error))
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

const wanted = (database: string): boolean =>
  !process.env.DIALECTS?.trim() || process.env.DIALECTS.split(',').map((s) => s.trim()).includes(database)

/** A knex instance on one connection to the MySQL/MariaDB server at `url` (session settings stick). */
function connectMysql(url: string): Knex {
  const parsed = new URL(url)
  return knexFactory({
    client: 'mysql2',
    connection: {
      host: parsed.hostname, port: Number(parsed.port || 3306), user: decodeURIComponent(parsed.username),
      password: decodeURIComponent(parsed.password), database: decodeURIComponent(parsed.pathname.slice(1)), connectTimeout: 3000,
    },
    pool: { min: 0, max: 1 },
  })
}

const connectPostgres = (url: string): Knex => connect('postgres', { postgresUrl: url, poolMax: 1 })

/** Why the server at `url` cannot be used, or undefined when it answers. */
async function unreachable(label: string, url: string, open: (url: string) => Knex): Promise<string | undefined> {
  const knex = open(url)
  try {
    await knex.raw('SELECT 1')
    return undefined
  } catch (error) {
    return `${label}=${url}: ${describeError(error)}`
  } finally {
    await knex.destroy()
  }
}

/** Declares the topology's tests, or, when a server is missing, a failure (CI=true) or a loud skip. */
function topology(title: string, setUp: string, reason: string | undefined, body: () => void): void {
  if (reason === undefined) {
    describe(title, body)
  } else if (inCI) {
    it(`${title}: servers are reachable (CI=true)`, () => {
      throw new Error(`${title} could not be used and CI=true forbids skipping it: ${reason}`)
    })
  } else {
    console.warn(`\n*** SKIPPED ${title}: ${reason}\n*** ${setUp}; CI=true makes this a failure.\n`)
    it(`${title}: skipped, not reachable`, { skip: reason }, () => undefined)
  }
}

// --- PostgreSQL: a primary and its synchronous streaming standby ----------------------------------

async function postgresReason(primaryUrl: string | undefined, standbyUrl: string | undefined): Promise<string | undefined> {
  if (!primaryUrl || !standbyUrl) {
    const unset = [!primaryUrl && 'PG_PRIMARY_URL', !standbyUrl && 'PG_STANDBY_URL'].filter(Boolean).join(' and ')
    return `${unset} not set (.ci/pg-failover start runs the pair; .ci/run sets them)`
  }
  return (await unreachable('PG_PRIMARY_URL', primaryUrl, connectPostgres)) ?? (await unreachable('PG_STANDBY_URL', standbyUrl, connectPostgres))
}

function postgresPair(primaryUrl: string, standbyUrl: string): void {
  const options = { timeout: TEST_TIMEOUT_MS }
  const table = uniqueName('wl_topology')
  let primary: Knex
  let standby: Knex
  before(() => {
    primary = connectPostgres(primaryUrl)
    standby = connectPostgres(standbyUrl)
  })
  after(async () => {
    await primary.schema.dropTableIfExists(table)
    await Promise.all([primary.destroy(), standby.destroy()])
  })

  it('the standby is in recovery, the primary is not', options, async () => {
    const inRecovery = async (knex: Knex): Promise<boolean> =>
      ((await knex.raw('SELECT pg_is_in_recovery() AS r')) as { rows: Array<{ r: boolean }> }).rows[0]!.r
    assert.equal(await inRecovery(primary), false, 'the primary is not in recovery')
    assert.equal(await inRecovery(standby), true, 'the standby is in recovery')
  })

  it('the primary reports the standby streaming, as a synchronous standby', options, async () => {
    const { rows } = (await primary.raw(`SELECT application_name, state, sync_state FROM pg_stat_replication`)) as
      { rows: Array<{ application_name: string; state: string; sync_state: string }> }
    assert.ok(rows.some((r) => r.state === 'streaming' && r.sync_state === 'sync'), `pg_stat_replication: ${JSON.stringify(rows)}`)
    // And the standby receives from this primary.
    const { rows: receiver } = (await standby.raw(`SELECT status, sender_port FROM pg_stat_wal_receiver`)) as
      { rows: Array<{ status: string; sender_port: number }> }
    assert.deepEqual(receiver.map((r) => [r.status, r.sender_port]), [['streaming', Number(new URL(primaryUrl).port || 5432)]],
      'the standby streams from the primary')
  })

  it('a row written on the primary is visible on the standby', options, async () => {
    await primary.schema.createTable(table, (t) => {
      t.integer('id').primary()
      t.text('note').notNullable()
    })
    const note = `written on the primary at ${new Date().toISOString()}`
    await primary(table).insert({ id: 1, note })
    // Synchronous commit waits until the standby has flushed the row, not until it has applied
    // it: the standby may show it a moment later.
    const deadline = Date.now() + REPLAY_WAIT_MS
    let seen: Array<{ id: number; note: string }> = []
    let lastError: unknown
    while (Date.now() < deadline) {
      try {
        seen = await standby(table).select('id', 'note')
        if (seen.length > 0) break
      } catch (error) {
        lastError = error // the table itself may not be replayed yet
      }
      await sleep(50)
    }
    assert.deepEqual(seen, [{ id: 1, note }], `the standby shows the row within ${REPLAY_WAIT_MS} ms${lastError ? ` (last error: ${describeError(lastError)})` : ''}`)
    await assert.rejects(standby(table).insert({ id: 2, note: 'x' }), /read-only transaction/, 'the standby refuses writes')
  })
}

// --- MariaDB Galera: 3 nodes ------------------------------------------------------------------------

const galeraUrls = (process.env.GALERA_URLS ?? '').split(',').map((s) => s.trim()).filter(Boolean)

async function galeraReason(urls: readonly string[]): Promise<string | undefined> {
  if (urls.length === 0) return 'GALERA_URLS is not set (.ci/galera start runs the cluster; .ci/run sets it)'
  if (urls.length !== GALERA_NODES) return `GALERA_URLS names ${urls.length} node(s), not ${GALERA_NODES}: ${urls.join(',')}`
  for (const [index, url] of urls.entries()) {
    const reason = await unreachable(`GALERA_URLS node ${index + 1}`, url, connectMysql)
    if (reason !== undefined) return reason
  }
  return undefined
}

function galeraCluster(urls: readonly string[]): void {
  const options = { timeout: TEST_TIMEOUT_MS }
  const table = uniqueName('wl_topology')
  let nodes: Knex[] = []
  before(() => { nodes = urls.map(connectMysql) })
  after(async () => {
    await nodes[0]?.schema.dropTableIfExists(table)
    await Promise.all(nodes.map((knex) => knex.destroy()))
  })

  async function wsrepStatus(knex: Knex): Promise<Record<string, string>> {
    const [rows] = (await knex.raw(`SHOW GLOBAL STATUS WHERE Variable_name IN
      ('wsrep_cluster_size', 'wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_cluster_state_uuid')`)) as
      [Array<{ Variable_name: string; Value: string }>]
    return Object.fromEntries(rows.map((r) => [r.Variable_name, r.Value]))
  }

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

// --- Which run ------------------------------------------------------------------------------------------

if (!wanted('postgres')) {
  it('PostgreSQL primary and standby: skipped, DIALECTS leaves out postgres', { skip: 'DIALECTS leaves out postgres' }, () => undefined)
} else {
  const primaryUrl = process.env.PG_PRIMARY_URL
  const standbyUrl = process.env.PG_STANDBY_URL
  topology('PostgreSQL primary with a synchronous streaming standby',
    'Run .ci/pg-failover start and set PG_PRIMARY_URL and PG_STANDBY_URL',
    await postgresReason(primaryUrl, standbyUrl),
    () => postgresPair(primaryUrl!, standbyUrl!))
}

if (!wanted('mysql')) {
  it('MariaDB Galera cluster: skipped, DIALECTS leaves out mysql', { skip: 'DIALECTS leaves out mysql' }, () => undefined)
} else {
  topology(`MariaDB Galera cluster of ${GALERA_NODES} nodes`,
    'Run .ci/galera start and set GALERA_URLS',
    await galeraReason(galeraUrls),
    () => galeraCluster(galeraUrls))
}
