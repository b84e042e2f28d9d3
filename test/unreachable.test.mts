// A wait for a lock in a database that cannot be reached keeps its process alive, keeps trying
// until its timeout, and then rejects with the database error as the cause.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { promisify } from 'node:util'

const run = promisify(execFile)
const fixture = join(import.meta.dirname, 'fixtures', 'wait-unreachable.mjs')

describe('waiting on a database that cannot be reached', () => {
  for (const database of ['postgres', 'mysql', 'sqlite']) {
    it(`${database}: keeps trying until the timeout, keeps the process alive meanwhile, then rejects with the cause`, async () => {
      const { stdout } = await run(process.execPath, [fixture], { env: { ...process.env, WL_DATABASE: database, WL_WAIT_MS: '1500' } })
      // The process was still there to print when the wait ended (before, it exited after the
      // first failed attempt, printing nothing), and the wait ended by its timeout, not by the
      // first database error.
      assert.match(stdout, /^rejected LockTimeoutError cause LockDatabaseError timeout 1500 waited \d+$/m)
    })
  }
})
