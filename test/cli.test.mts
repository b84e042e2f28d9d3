// The worker-locks command end to end, as child processes, on every database.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { after, it } from 'node:test'
import { forEachDatabase } from './matrix.mjs'
import { connect, MYSQL_URL, POSTGRES_URL, sqliteFile, uniqueName, type Database } from './targets.mjs'

const main = join(import.meta.dirname, '..', 'src', 'cli', 'main.js')

interface Run {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>
  printed(text: string): Promise<void>
  kill(signal: NodeJS.Signals): void
}

function cli(args: readonly string[], env: Record<string, string> = {}): Run {
  const child = spawn(process.execPath, [main, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const waiters: Array<{ text: string; resolve: () => void }> = []
  const check = (): void => {
    for (const w of [...waiters]) if (stdout.includes(w.text)) { waiters.splice(waiters.indexOf(w), 1); w.resolve() }
  }
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); check() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })))
  return {
    exited,
    printed: (text) => Promise.race([
      new Promise<void>((resolve) => { waiters.push({ text, resolve }); check() }),
      exited.then((e) => { throw new Error(`exited before printing ${JSON.stringify(text)}: ${JSON.stringify(e)}`) }),
    ]),
    kill: (signal) => child.kill(signal),
  }
}

// A command that says it started and then runs until stopped.
// Says "started" only once its SIGTERM handler is in place (on a busy machine the test can read
// the line and signal before the next statement runs), and exits once its reply is written.
const longRunning = [process.execPath, '-e', "process.on('SIGTERM', () => { process.stdout.write('child got SIGTERM\\n', () => process.exit(143)) }); setInterval(() => {}, 1000); console.log('started')"]

const urls: Record<Database, string> = { sqlite: `sqlite:${sqliteFile}`, postgres: POSTGRES_URL, mysql: MYSQL_URL }

forEachDatabase('worker-locks command', (database) => {
  const table = uniqueName('wl_cli')
  const db = ['--db', urls[database], '--table', table]
  after(async () => {
    const knex = connect(database)
    try {
      const { dropLockTable } = await import('../src/index.js')
      await dropLockTable(knex, { tableName: table })
    } finally {
      await knex.destroy()
    }
  })

  it('migrates, twice without complaint', async () => {
    for (let i = 0; i < 2; i++) {
      const run = await cli(['migrate', ...db]).exited
      assert.equal(run.code, 0, run.stderr)
      assert.match(run.stdout, /up to date/)
    }
  })

  it('runs one of two concurrent commands; the other exits 75 with one line', async () => {
    const first = cli(['run', 'nightly', ...db, '--', ...longRunning])
    await first.printed('started')
    const second = await cli(['run', 'nightly', ...db, '--', process.execPath, '-e', "console.log('must not run')"]).exited
    assert.equal(second.code, 75)
    assert.doesNotMatch(second.stdout, /must not run/)
    assert.equal(second.stderr.trim().split('\n').length, 1)
    assert.match(second.stderr, /lock "nightly" is held by .*; not running/)
    first.kill('SIGTERM')
    await first.exited
  })

  it('passes the command exit code through, and --wait runs it once the lock is free', async () => {
    const holder = cli(['run', 'waited', ...db, '--', ...longRunning])
    await holder.printed('started')
    const waiter = cli(['run', 'waited', '--wait', ...db, '--', process.execPath, '-e', "console.log('ran'); process.exit(7)"])
    holder.kill('SIGTERM')
    const held = await holder.exited
    assert.equal(held.code, 143, 'the holder exits as its command did (128 + SIGTERM)')
    assert.match(held.stdout, /child got SIGTERM/, 'SIGTERM was passed on to the command')
    const waited = await waiter.exited
    assert.equal(waited.code, 7, waited.stderr)
    assert.match(waited.stdout, /ran/)
    const timedOut = cli(['run', 'waited', ...db, '--', ...longRunning])
    await timedOut.printed('started')
    const gaveUp = await cli(['run', 'waited', '--wait', '0.2', ...db, '--', 'true']).exited
    assert.equal(gaveUp.code, 75)
    assert.match(gaveUp.stderr, /still busy after 0.2 s/)
    timedOut.kill('SIGTERM')
    await timedOut.exited
  })

  it('frees the lock for another process as soon as SIGTERM has stopped the command', async () => {
    const holder = cli(['run', 'sigterm', '--lock-timeout', '600', ...db, '--', ...longRunning])
    await holder.printed('started')
    holder.kill('SIGTERM')
    await holder.exited
    const next = await cli(['run', 'sigterm', ...db, '--', 'true']).exited
    assert.equal(next.code, 0, 'not 75: the lock was released, not left to time out after 10 minutes')
  })

  it('stops the command when the lock is forced out while it runs', async () => {
    const holder = cli(['run', 'forced', '--lock-timeout', '1', '--grace', '5', ...db, '--', ...longRunning])
    await holder.printed('started')
    const released = await cli(['release', 'forced', ...db]).exited
    assert.equal(released.code, 0)
    assert.match(released.stdout, /released "forced" \(key ""\), held by /)
    const exit = await holder.exited
    assert.equal(exit.code, 70)
    assert.match(exit.stdout, /child got SIGTERM/)
    assert.match(exit.stderr, /was lost; stopping/)
  })

  it('shows the locks as JSON that parses', async () => {
    const holder = cli(['run', 'shown', '--key', 'k 1', ...db, '--', ...longRunning])
    await holder.printed('started')
    const status = await cli(['status', '--json', ...db]).exited
    assert.equal(status.code, 0)
    const rows = JSON.parse(status.stdout) as Array<{ name: string; key: string; fence: string; stale: boolean }>
    const row = rows.find((r) => r.name === 'shown')
    assert.ok(row)
    assert.equal(row.key, 'k 1')
    assert.match(row.fence, /^\d+$/)
    assert.equal(row.stale, false)
    const table = await cli(['status', ...db]).exited
    assert.match(table.stdout, /^NAME\s+KEY\s+HOLDER\s+FENCE\s+AGE\s+STATE/m)
    holder.kill('SIGTERM')
    await holder.exited
  })

  it('answers bad input with one line and a non-zero exit', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['status', '--db', 'redis://localhost'], /unsupported database URL scheme/],
      [['status', ...db, '--colour'], /unknown option --colour/],
      [['run', 'x', ...db], /usage: worker-locks run NAME/],
      [['release', ...db], /usage: worker-locks release NAME/],
      [['status', '--db', urls[database], '--table', uniqueName('wl_none')], /run "worker-locks migrate" first/],
      [['run', '', ...db, '--', 'true'], /Lock name must not be empty/],
      [['run', 'x', ...db, '--', 'definitely-not-a-command-here'], /command not found/],
    ]
    for (const [args, expected] of cases) {
      const run = await cli(args).exited
      assert.notEqual(run.code, 0, args.join(' '))
      assert.match(run.stderr, expected, args.join(' '))
      assert.equal(run.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${run.stderr}`)
    }
  })
})

it('prints help for every command', async () => {
  for (const command of ['--help', 'migrate --help', 'status --help', 'release --help', 'run --help']) {
    const run = await cli(command.split(' ')).exited
    assert.equal(run.code, 0)
    assert.match(run.stdout, /Usage: worker-locks/)
  }
})

