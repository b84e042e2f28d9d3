// A real PostgreSQL hot standby: a store, createLockTable and `worker-locks migrate` there say
// "standby" with a ReadOnlyDatabaseError before any lock work, while its primary works.
//
// .ci/pg-failover starts a throwaway primary and its synchronous standby; PG_PRIMARY_URL and
// PG_STANDBY_URL point at them. A server that is not set or does not answer is a failure under
// CI=true, and otherwise a loud warning and a skipped test. (DIALECTS without postgres skips it.)
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import type { Knex } from 'knex'
import { LockStore, ReadOnlyDatabaseError, createLockTable, dropLockTable } from '../src/index.js'
import { statementsDuring } from './harness.mjs'
import { connect, inCI, uniqueName } from './targets.mjs'

const SERVERS = [
  { role: 'primary', variable: 'PG_PRIMARY_URL' },
  { role: 'standby', variable: 'PG_STANDBY_URL' },
] as const

const main = join(import.meta.dirname, '..', 'src', 'cli', 'main.js')

/** Why the server in `variable` cannot be used, or undefined when it answers. */
async function unreachable(variable: string, url: string | undefined): Promise<string | undefined> {
  if (!url) return `${variable} is not set (.ci/pg-failover start runs the servers; .ci/run sets it)`
  const knex = connect('postgres', { postgresUrl: url, poolMax: 1 })
  try {
    await knex.raw('SELECT 1')
    return undefined
  } catch (error) {
    return `${variable}=${url}: ${error instanceof Error ? error.message : String(error)}`
  } finally {
    await knex.destroy()
  }
}

/** An assert.rejects check: the standby's ReadOnlyDatabaseError, in one line. */
function standbyRefusal(error: unknown): boolean {
  assert.ok(error instanceof ReadOnlyDatabaseError, String(error))
  assert.equal(error.code, 'DATABASE_READ_ONLY')
  assert.equal(error.standby, true)
  assert.match(error.message, /^worker-locks cannot write to PostgreSQL [^\n]*: it is a standby [^\n]*$/)
  return true
}

function standbySuite(primaryUrl: string, standbyUrl: string): void {
  const tableName = uniqueName('wl_standby')
  let primary: Knex
  let standby: Knex
  before(async () => {
    primary = connect('postgres', { postgresUrl: primaryUrl })
    standby = connect('postgres', { postgresUrl: standbyUrl })
    await createLockTable(primary, { tableName })
    // Until the standby has replayed the table, what it would answer without the check differs.
    for (let tries = 0; tries < 600; tries++) {
      const { rows } = await standby.raw('SELECT to_regclass(?) IS NOT NULL AS replayed', [tableName]) as { rows: Array<{ replayed: boolean }> }
      if (rows[0]?.replayed) return
      await sleep(50)
    }
    throw new Error(`the standby did not replay table ${tableName}`)
  })
  after(async () => {
    await standby?.destroy()
    if (primary) {
      await dropLockTable(primary, { tableName })
      await primary.destroy()
    }
  })

  it('takes and releases locks on the primary', async () => {
    const store = new LockStore(primary, { tableName })
    try {
      await store.init()
      const lock = await store.tryAcquireLock('on-the-primary')
      assert.ok(lock)
      await lock.release()
    } finally {
      await store.close()
    }
  })

  it('refuses the standby at init(), at the first acquire and in createLockTable, saying "standby", before any lock work', async () => {
    const store = new LockStore(standby, { tableName })
    try {
      const { sql } = await statementsDuring(standby, async () => {
        await assert.rejects(store.init(), standbyRefusal)
        await assert.rejects(store.tryAcquireLock('on-the-standby'), standbyRefusal)
        await assert.rejects(store.tryAcquireReadWriteLock('on-the-standby', '', { write: false }), standbyRefusal)
        await assert.rejects(createLockTable(standby, { tableName }), standbyRefusal)
      })
      assert.deepEqual(sql.filter((text) => !/^\s*select current_setting\('server_version_num'\)/i.test(text)), [], 'only the server\'s facts were asked')
    } finally {
      await store.close()
    }
  })

  it('worker-locks migrate on the standby exits non-zero with one line saying "standby"', async () => {
    const failed = await promisify(execFile)(process.execPath, [main, 'migrate', '--db', standbyUrl, '--table', tableName])
      .then(() => undefined, (error: unknown) => error as { code?: unknown; stdout: string; stderr: string })
    assert.ok(failed, 'migrate failed')
    assert.equal(failed.code, 1)
    assert.equal(failed.stdout, '')
    assert.match(failed.stderr, /^worker-locks: [^\n]*\bstandby\b[^\n]*\n$/)
  })
}

const postgresWanted = !process.env.DIALECTS?.trim() || process.env.DIALECTS.split(',').map((s) => s.trim()).includes('postgres')
if (!postgresWanted) {
  it('PostgreSQL standby: skipped, DIALECTS leaves out postgres', { skip: 'DIALECTS leaves out postgres' }, () => undefined)
} else {
  const urls = SERVERS.map(({ variable }) => process.env[variable])
  const reasons = (await Promise.all(SERVERS.map(({ variable }, i) => unreachable(variable, urls[i])))).filter((r) => r !== undefined)
  const [primaryUrl, standbyUrl] = urls
  if (reasons.length > 0 || primaryUrl === undefined || standbyUrl === undefined) {
    const reason = reasons.join('; ')
    if (inCI) {
      it('PostgreSQL standby: primary and standby are reachable (CI=true)', () => {
        throw new Error(`the standby test could not run and CI=true forbids skipping it: ${reason}`)
      })
    } else {
      console.warn(`\n*** SKIPPED PostgreSQL standby: ${reason}\n*** Run .ci/pg-failover start and set PG_PRIMARY_URL, PG_STANDBY_URL; CI=true makes this a failure.\n`)
      it('PostgreSQL standby: skipped, servers not reachable', { skip: reason }, () => undefined)
    }
  } else {
    describe('a PostgreSQL hot standby and its primary', () => standbySuite(primaryUrl, standbyUrl))
  }
}
