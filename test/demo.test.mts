// The `npm start` demo, in its short CI mode: workers compete, one is killed, another takes its
// job over, and the coordinator's overlap check passes. And that check can fail.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { promisify } from 'node:util'
import { checkSections, type Section } from '../examples/demo/check.mjs'

const run = promisify(execFile)
const root = join(import.meta.dirname, '..', '..')

describe('demo', () => {
  it('runs in short mode: a killed worker\'s job is taken over and no job ever runs twice at once', async () => {
    const database = join(tmpdir(), `worker-locks-demo-${process.pid}-${randomBytes(4).toString('hex')}.sqlite`)
    const env: NodeJS.ProcessEnv = { ...process.env, DEMO_DB: database }
    delete env.DEMO_SECONDS // --short decides the length
    const { stdout } = await run(process.execPath, [join(root, 'dist', 'examples', 'demo', 'main.mjs'), '--short'], {
      cwd: root,
      env,
      timeout: 120_000,
    }).catch((error: { code?: unknown; stdout?: string; stderr?: string }) => {
      assert.fail(`demo exited with ${String(error.code)}:\n${error.stdout ?? ''}${error.stderr ?? ''}`)
    })
    assert.match(stdout, /^>>> killed worker-\d \(SIGKILL\) while it held [a-z-]+/m)
    assert.match(stdout, /^>>> worker-\d took over [a-z-]+ [\d.]+ s after the kill/m)
    const checked = /^no overlap: (\d+) critical sections checked across 3 jobs$/m.exec(stdout)
    assert.ok(checked, `no "no overlap" line in:\n${stdout}`)
    assert.ok(Number(checked[1]) > 5, `only ${checked[1]} sections checked`)
  })

  it('reports two workers in one job at the same time, and fences that go down', () => {
    const section = (worker: string, fence: bigint, start: number, end: number): Section => ({ job: 'nightly-report', worker, fence, start, end })
    const result = checkSections([
      section('worker-1', 1n, 0, 500),
      section('worker-2', 2n, 400, 900), // starts 100 ms before worker-1 ends
      section('worker-3', 3n, 900, 1_000), // touching is not overlapping
    ])
    assert.equal(result.ok, false)
    assert.equal(result.overlaps.length, 1)
    assert.equal(result.overlaps[0]?.earlier.worker, 'worker-1')
    assert.equal(result.overlaps[0]?.later.worker, 'worker-2')
    assert.equal(result.jobs[0]?.maxOverlapMs, 100)

    const regressed = checkSections([section('worker-1', 5n, 0, 100), section('worker-2', 4n, 200, 300)])
    assert.equal(regressed.overlaps.length, 0)
    assert.equal(regressed.fenceRegressions.length, 1)
    assert.equal(regressed.ok, false)

    assert.equal(checkSections([section('worker-1', 1n, 0, 100), section('worker-2', 2n, 100, 200)]).ok, true)
  })
})
