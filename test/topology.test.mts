// The replicated PostgreSQL servers the deployment tests run on are what they claim to be: a
// primary with a synchronous streaming standby (.ci/pg-failover). A smoke test only: nothing is
// promoted here, and what it creates it drops. (The Galera cluster's is in galera.test.mts.)
//
// PG_PRIMARY_URL and PG_STANDBY_URL point at the pair; .ci/run starts it and sets these. A pair
// that is not set or does not answer is a failure under CI=true, and otherwise a loud warning and
// a skipped test. (DIALECTS without postgres skips it.)
import assert from 'node:assert/strict'
import { after, before, it } from 'node:test'
import type { Knex } from 'knex'
import { uniqueName } from './targets.mjs'
import { connectPostgres, describeError, sleep, topology, unreachable, wanted } from './topology-helpers.mjs'

/** A guard against a hang: each test takes well under a second. */
const TEST_TIMEOUT_MS = 60_000
/** How long a row written on the primary may take to be applied on the standby. */
const REPLAY_WAIT_MS = 10_000

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
