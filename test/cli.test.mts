// The worker-locks command end to end, as child processes, on every database.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, it } from 'node:test'
import type { Knex } from 'knex'
import { forEachDatabase } from './matrix.mjs'
import { connect, MYSQL_URL, POSTGRES_URL, sqliteFile, uniqueName, type Database } from './targets.mjs'

const main = join(import.meta.dirname, '..', 'src', 'cli', 'main.js')

interface Run {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>
  printed(text: string): Promise<void>
  kill(signal: NodeJS.Signals): void
}

/** The CLI as a child process; `env` adds to ours (undefined removes a variable), `cwd` is where it runs. */
function cli(args: readonly string[], env: Record<string, string | undefined> = {}, cwd?: string): Run {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env }
  for (const [name, value] of Object.entries(env)) if (value === undefined) delete childEnv[name]
  const child = spawn(process.execPath, [main, ...args], { env: childEnv, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
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

// A shell that starts a grandchild (its pid written to the file named by $0, its output away
// from our pipes), says "started" and waits for it.
const shellWithGrandchild = (pidFile: string, then = 'echo started; wait'): string[] =>
  ['sh', '-c', `sleep 1000 >/dev/null 2>&1 & echo $! > "$0"; ${then}`, pidFile]

/** Whether `pid` is a live process: an exited one nobody has reaped yet still answers signal 0. */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  if (!existsSync('/proc/self/stat')) return true
  try {
    return !/^\d+ \(.*\) Z /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/** Waits, a bounded number of times, for `pid` to be gone; resolves whether it is. */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 400 && running(pid); i++) await sleep(25)
  return !running(pid)
}

/** Reads the pid written to `file`, runs `check` with it, and kills the process if it survived. */
async function withGrandchild(file: string, check: (pid: number) => Promise<void>): Promise<void> {
  const pid = Number(readFileSync(file, 'utf8').trim())
  assert.ok(Number.isInteger(pid) && pid > 0, `a pid in ${file}`)
  try {
    await check(pid)
  } finally {
    if (running(pid)) process.kill(pid, 'SIGKILL')
    rmSync(file, { force: true })
  }
}

/** Has `knex`'s one connection hold the whole lock `table` until the returned function runs. */
async function blockTable(knex: Knex, database: Database, table: string): Promise<() => Promise<void>> {
  switch (database) {
    case 'postgres': {
      const trx = await knex.transaction()
      await trx.raw('LOCK TABLE ?? IN ACCESS EXCLUSIVE MODE', [table])
      return async () => { await trx.commit() }
    }
    case 'mysql':
      await knex.raw('LOCK TABLES ?? WRITE', [table])
      return async () => { await knex.raw('UNLOCK TABLES') }
    case 'sqlite':
      await knex.raw('BEGIN IMMEDIATE') // the database's write lock
      return async () => { await knex.raw('COMMIT') }
  }
}

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
    try {
      await timedOut.printed('started')
      const gaveUp = await cli(['run', 'waited', '--wait', '0.2', ...db, '--', 'true']).exited
      assert.equal(gaveUp.code, 75, gaveUp.stderr)
      assert.match(gaveUp.stderr, /still busy after 0.2 s/)
    } finally {
      timedOut.kill('SIGTERM') // the tests after this one list the table's locks
      await timedOut.exited
    }
  })

  it('--wait on a lock table another session blocks exits 75 at its deadline, saying the database did not answer', async () => {
    assert.equal((await cli(['migrate', ...db]).exited).code, 0)
    const blocker = connect(database, { poolMax: 1 }) // one connection: its session holds the table
    try {
      const release = await blockTable(blocker, database, table)
      try {
        const run = await cli(['run', 'blocked', '--wait', '1', ...db, '--', process.execPath, '-e', "console.log('ran')"]).exited
        assert.equal(run.code, 75, run.stderr)
        assert.doesNotMatch(run.stdout, /ran/)
        assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr)
        assert.match(run.stderr, /lock "blocked" is still busy after 1 s \(the last attempt had no answer in time: .*\); not running /)
      } finally {
        await release()
      }
      assert.equal((await cli(['run', 'blocked', ...db, '--', 'true']).exited).code, 0, 'free once the table is')
    } finally {
      await blocker.destroy()
    }
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

  it('stops what the command started too when the lock is forced out', async () => {
    const pidFile = join(tmpdir(), `${uniqueName('cli-grandchild')}.pid`)
    const holder = cli(['run', 'forced-group', '--lock-timeout', '1', '--grace', '1', ...db, '--', ...shellWithGrandchild(pidFile)])
    await holder.printed('started')
    await withGrandchild(pidFile, async (pid) => {
      assert.ok(running(pid), 'the grandchild runs while the lock is held')
      const released = await cli(['release', 'forced-group', ...db]).exited
      assert.equal(released.code, 0, released.stderr)
      const exit = await holder.exited
      assert.equal(exit.code, 70, exit.stderr)
      assert.ok(await gone(pid), 'the shell\'s child was stopped with the shell, not left running without the lock')
    })
  })

  it('stops what the command left running when it exits, before releasing the lock', async () => {
    const pidFile = join(tmpdir(), `${uniqueName('cli-leftover')}.pid`)
    const exit = await cli(['run', 'leftover', '--grace', '1', ...db, '--', ...shellWithGrandchild(pidFile, 'exit 3')]).exited
    await withGrandchild(pidFile, async (pid) => {
      assert.equal(exit.code, 3, exit.stderr)
      assert.match(exit.stderr, /exited; stopping what it left running/)
      assert.ok(await gone(pid), 'the background process did not outlive the lock')
    })
  })

  it('exits 126 for a command that is not executable and 127 for one that does not exist', async () => {
    const script = join(tmpdir(), `${uniqueName('cli-not-executable')}.sh`)
    writeFileSync(script, 'echo must not run\n', { mode: 0o644 })
    try {
      const notExecutable = await cli(['run', 'exec', ...db, '--', script]).exited
      assert.equal(notExecutable.code, 126, notExecutable.stderr)
      assert.match(notExecutable.stderr, /cannot execute .*permission denied/)
      assert.doesNotMatch(notExecutable.stdout, /must not run/)
    } finally {
      rmSync(script, { force: true })
    }
    const missing = await cli(['run', 'exec', ...db, '--', join(tmpdir(), uniqueName('cli-no-such-command'))]).exited
    assert.equal(missing.code, 127, missing.stderr)
    assert.match(missing.stderr, /command not found/)
    const next = await cli(['run', 'exec', ...db, '--', 'true']).exited
    assert.equal(next.code, 0, 'the lock was released after the failed start')
  })

  it('--min-hold keeps the lock after a quick command, so the next run of the slot skips; an operator can free it', async () => {
    const printOnce = (text: string) => [process.execPath, '-e', `console.log(${JSON.stringify(text)})`]
    const first = await cli(['run', 'slot', ...db, '--min-hold', '60', '--', ...printOnce('first run')]).exited
    assert.equal(first.code, 0, first.stderr)
    assert.equal(first.stdout, 'first run\n')
    const second = await cli(['run', 'slot', ...db, '--', ...printOnce('must not run')]).exited
    assert.equal(second.code, 75, second.stderr)
    assert.equal(second.stdout, '')
    assert.match(second.stderr, /^worker-locks: lock "slot" is kept by an earlier run's --min-hold for (\d+\.\d) s more; not running \S+\n$/)
    const left = Number(/for (\d+\.\d) s more/.exec(second.stderr)?.[1])
    assert.ok(left > 0 && left <= 60, `${left} s left of 60`)
    const status = await cli(['status', ...db]).exited
    assert.match(status.stdout, /^slot +\(kept\) +\d+ +\S+ +held +exclusive$/m)
    const json = await cli(['status', ...db, '--json']).exited
    const [kept] = (JSON.parse(json.stdout) as Array<{ name: string; instanceName: string; leaseMs: number }>).filter((l) => l.name === 'slot')
    assert.equal(kept?.instanceName, '')
    assert.ok(kept.leaseMs > 0 && kept.leaseMs <= 60_000, `lease ${kept.leaseMs}`)
    const freed = await cli(['release', 'slot', ...db]).exited
    assert.match(freed.stdout, /released "slot" \(key ""\), held by \(kept\)/)
    const third = await cli(['run', 'slot', ...db, '--min-hold', '0.001', '--', ...printOnce('third run')]).exited
    assert.equal(third.code, 0, third.stderr)
    // The command outlived its --min-hold (starting node alone takes longer): released as usual.
    assert.equal((await cli(['run', 'slot', ...db, '--', 'true']).exited).code, 0)
  })

  it('--min-hold keeps nothing when the command could not start', async () => {
    const missing = await cli(['run', 'unstarted', ...db, '--min-hold', '60', '--', join(tmpdir(), uniqueName('cli-no-such-command'))]).exited
    assert.equal(missing.code, 127, missing.stderr)
    const next = await cli(['run', 'unstarted', ...db, '--', 'true']).exited
    assert.equal(next.code, 0, next.stderr)
  })

  it('escapes control characters in the status table, not in its JSON', async () => {
    const name = 'a\nb\x1b[31m'
    const key = 'k\u2028\u009b\t'
    const holder = cli(['run', name, '--key', key, ...db, '--', ...longRunning])
    await holder.printed('started')
    try {
      const table = await cli(['status', ...db]).exited
      assert.equal(table.code, 0, table.stderr)
      assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029]/.test(table.stdout), `no control characters but newlines: ${JSON.stringify(table.stdout)}`)
      const lines = table.stdout.trimEnd().split('\n')
      assert.equal(lines.length, 3, `the database, a header and one row: ${JSON.stringify(table.stdout)}`)
      assert.match(lines[0] ?? '', /^database: /)
      assert.ok(lines[2]?.startsWith('a\\nb\\x1b[31m  k\\u2028\\x9b\\t  '), JSON.stringify(lines[1]))
      const json = await cli(['status', '--json', ...db]).exited
      const rows = JSON.parse(json.stdout) as Array<{ name: string; key: string }>
      assert.deepEqual(rows.map((r) => [r.name, r.key]), [[name, key]])
    } finally {
      holder.kill('SIGTERM')
      await holder.exited
    }
  })

  it('says first which database status reads, its password masked', async () => {
    const { maskPassword } = await import('../src/cli/database.js')
    const expected = database === 'sqlite' ? `sqlite:${sqliteFile}` : maskPassword(urls[database])
    const table = await cli(['status', ...db]).exited
    assert.equal(table.code, 0, table.stderr)
    assert.equal(table.stdout.split('\n')[0], `database: ${expected}`)
    assert.equal(table.stderr, '', 'no note about a default database when --db is given')
    const json = await cli(['status', '--json', ...db]).exited
    assert.equal(json.code, 0, json.stderr)
    assert.ok(Array.isArray(JSON.parse(json.stdout)), 'stdout stays one JSON document')
    assert.equal(json.stderr, `database: ${expected}\n`)
  })

  it('shows the locks as JSON that parses', async () => {
    const holder = cli(['run', 'shown', '--key', 'k 1', ...db, '--', ...longRunning])
    await holder.printed('started')
    try {
      const status = await cli(['status', '--json', ...db]).exited
      assert.equal(status.code, 0)
      const rows = JSON.parse(status.stdout) as Array<{ name: string; key: string; fence: string; stale: boolean; leaseMs: number }>
      const row = rows.find((r) => r.name === 'shown')
      assert.ok(row)
      assert.equal(row.key, 'k 1')
      assert.equal(row.leaseMs, 120_000, 'run holds the lock for the library\'s default timeout')
      assert.match(row.fence, /^\d+$/)
      assert.equal(row.stale, false)
      const table = await cli(['status', ...db]).exited
      assert.match(table.stdout, /^NAME\s+KEY\s+HOLDER\s+FENCE\s+AGE\s+STATE\s+MODE$/m)
    } finally {
      holder.kill('SIGTERM')
      await holder.exited
    }
  })

  it('shows each holder of a read/write lock with its mode, and release frees them all', async () => {
    const knex = connect(database)
    const { LockStore } = await import('../src/index.js')
    const readers = [new LockStore(knex, { tableName: table, instanceName: 'reader-1' }), new LockStore(knex, { tableName: table, instanceName: 'reader-2' })]
    try {
      const held = await Promise.all(readers.map((s) => s.tryAcquireReadWriteLock('shared', 'doc', { write: false })))
      assert.ok(held.every(Boolean))
      const status = await cli(['status', ...db]).exited
      assert.match(status.stdout, /^shared +doc +reader-1 +\d+ +\S+ +held +read$/m)
      assert.match(status.stdout, /^shared +doc +reader-2 +\d+ +\S+ +held +read$/m)
      const json = JSON.parse((await cli(['status', '--json', ...db]).exited).stdout) as Array<{ name: string; mode: string; holders: number }>
      assert.deepEqual(json.filter((l) => l.name === 'shared').map((l) => [l.mode, l.holders]), [['read', 2], ['read', 2]])
      const freed = await cli(['release', 'shared', 'doc', ...db]).exited
      assert.equal(freed.code, 0, freed.stderr)
      assert.match(freed.stdout, /released "shared" \(key "doc"\), held by 2 holders \((reader-1: read, reader-2|reader-2: read, reader-1): read\)/)
      const writer = await readers[0]!.tryAcquireReadWriteLock('shared', 'doc', { write: true })
      assert.equal(writer?.mode, 'write')
    } finally {
      await Promise.all(readers.map((s) => s.close()))
      await knex.destroy()
    }
  })

  it('names the plain lock\'s holder when it is busy, not a read/write holder of the same name and key', async () => {
    const knex = connect(database)
    const { LockStore } = await import('../src/index.js')
    const [reader, plain] = [new LockStore(knex, { tableName: table, instanceName: 'rw-reader' }), new LockStore(knex, { tableName: table, instanceName: 'plain-holder' })]
    try {
      // Plain fences drawn past the read/write lock's, so that a list in fence order puts the reader first.
      for (let i = 0; i < 3; i++) await (await plain.tryAcquireLock('fence-bump'))?.release()
      assert.ok(await reader.tryAcquireReadWriteLock('both', '', { write: false }))
      const held = await plain.tryAcquireLock('both')
      assert.ok(held)
      const busy = await cli(['run', 'both', ...db, '--', 'true']).exited
      assert.equal(busy.code, 75, busy.stderr)
      assert.match(busy.stderr, /^worker-locks: lock "both" is held by plain-holder; not running true\n$/)
      await held.release({ keepForMs: 60_000 })
      const kept = await cli(['run', 'both', ...db, '--', 'true']).exited
      assert.equal(kept.code, 75, kept.stderr)
      assert.match(kept.stderr, /^worker-locks: lock "both" is kept by an earlier run's --min-hold for \d+\.\d s more; not running true\n$/)
    } finally {
      await Promise.all([reader.close(), plain.close()])
      await cli(['release', 'both', ...db]).exited
      await knex.destroy()
    }
  })

  it('lists a plain lock before the read/write holders of its name and key, each kind in fence order', async () => {
    const knex = connect(database)
    const { LockStore } = await import('../src/index.js')
    const store = (instanceName: string) => new LockStore(knex, { tableName: table, instanceName })
    const [a, b, plain] = [store('reader-a'), store('reader-b'), store('plain')]
    try {
      // The two counters apart: the plain lock's fence above the readers', whose order is theirs.
      for (let i = 0; i < 3; i++) await (await plain.tryAcquireLock('fence-bump'))?.release()
      assert.ok(await a.tryAcquireReadWriteLock('mixed', 'k', { write: false }))
      assert.ok(await plain.tryAcquireLock('mixed', 'k'))
      assert.ok(await b.tryAcquireReadWriteLock('mixed', 'k', { write: false }))
      const status = await cli(['status', ...db]).exited
      assert.equal(status.code, 0, status.stderr)
      const rows = status.stdout.split('\n').filter((line) => line.startsWith('mixed ')).map((line) => line.split(/ +/))
      assert.deepEqual(rows.map((r) => [r[2], r[6]]), [['plain', 'exclusive'], ['reader-a', 'read'], ['reader-b', 'read']], status.stdout)
      assert.ok(BigInt(rows[1]![3]!) < BigInt(rows[2]![3]!), 'the readers in fence order')
      const json = JSON.parse((await cli(['status', '--json', ...db]).exited).stdout) as Array<{ name: string; instanceName: string }>
      assert.deepEqual(json.filter((l) => l.name === 'mixed').map((l) => l.instanceName), ['plain', 'reader-a', 'reader-b'])
    } finally {
      await Promise.all([a, b, plain].map((s) => s.close()))
      await knex.destroy()
    }
  })

  it('prints the server\'s whole reason in one line, never our SQL', async () => {
    const own = uniqueName('wl_reason')
    const ownDb = ['--db', urls[database], '--table', own]
    const knex = connect(database)
    const { dropLockTable } = await import('../src/index.js')
    let view = false
    const runCli = async (args: string[], text: string): Promise<void> => {
      const run = await cli(args).exited
      assert.equal(run.code, 1, run.stderr)
      assert.equal(run.stdout, '')
      assert.equal(run.stderr.trim().split('\n').length, 1, `one line: ${run.stderr}`)
      assert.ok(run.stderr.includes(text), `${JSON.stringify(text)} in ${run.stderr}`)
      assert.doesNotMatch(run.stderr, /\b(insert|update|select|alter table|create)\b/i, `none of our SQL: ${run.stderr}`)
    }
    const frozen = (text: string): Promise<void> => runCli(['run', 'frozen', ...ownDb, '--', process.execPath, '-e', "console.log('ran')"], text)
    try {
      // A statement of a migration: a view where the table should be.
      await knex.raw('CREATE VIEW ?? AS SELECT 1 AS x', [own])
      view = true
      await runCli(['migrate', ...ownDb], {
        postgres: `ALTER action ADD COLUMN cannot be performed on relation "${own}"; DETAIL: This operation is not supported for views.`,
        mysql: 'is not of type \'BASE TABLE\'',
        sqlite: `view \`${own}\` already exists`,
      }[database])
      await knex.raw('DROP VIEW ??', [own])
      view = false
      assert.equal((await cli(['migrate', ...ownDb]).exited).code, 0)
      // A statement of the library's: a trigger refuses every new lock, in two lines.
      if (database === 'postgres') {
        await knex.raw(`CREATE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          RAISE EXCEPTION E'locks are frozen\\nfor maintenance' USING DETAIL = 'until 06:00', HINT = 'ask the operators'; END $$`, [own])
        await knex.raw('CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW EXECUTE FUNCTION ??()', [own, own, own])
        await frozen('(locks are frozen for maintenance; DETAIL: until 06:00; HINT: ask the operators); not running')
        // The server's own hint.
        await knex.raw('CREATE OR REPLACE FUNCTION ??() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM wl_no_such_function(1); RETURN NEW; END $$', [own])
        await frozen('function wl_no_such_function(integer) does not exist; HINT: No function matches the given name and argument types.')
      } else {
        await knex.raw(database === 'mysql'
          ? "CREATE TRIGGER ?? BEFORE INSERT ON ?? FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'locks are frozen\\nfor maintenance'"
          : "CREATE TRIGGER ?? BEFORE INSERT ON ?? BEGIN SELECT RAISE(ABORT, 'locks are frozen' || char(10) || 'for maintenance'); END", [`${own}_frozen`, own])
        await frozen('(locks are frozen for maintenance); not running')
      }
    } finally {
      if (view) await knex.raw('DROP VIEW ??', [own])
      await dropLockTable(knex, { tableName: own })
      if (database === 'postgres') await knex.raw('DROP FUNCTION IF EXISTS ??()', [own])
      await knex.destroy()
    }
  })

  it('answers bad input with one line and a non-zero exit', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['status', '--db', 'redis://localhost'], /unsupported database URL scheme/],
      [['status', ...db, '--colour'], /unknown option --colour/],
      [['status', ...db, '--lock-timeout', '5'], /unknown option --lock-timeout/],
      [['status', ...db, '--toString=1'], /unknown option --toString/],
      [['run', 'x', ...db], /usage: worker-locks run NAME/],
      [['run', 'x', ...db, '--min-hold', '5m', '--', 'true'], /option --min-hold takes a number of seconds, got "5m"/],
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

forEachDatabase('worker-locks migrate on a read-only server', () => {
  // A session whose transactions are read-only unless they say otherwise, as on a hot standby.
  const readOnly = `${POSTGRES_URL}${POSTGRES_URL.includes('?') ? '&' : '?'}options=-c%20default_transaction_read_only%3Don`
  const table = uniqueName('wl_read_only')
  after(async () => {
    const knex = connect('postgres')
    try {
      const { dropLockTable } = await import('../src/index.js')
      await dropLockTable(knex, { tableName: table })
    } finally {
      await knex.destroy()
    }
  })

  it('exits non-zero in one line saying read-only and naming the database, whether the table exists or not', async () => {
    const { maskPassword, openDatabase, chooseDatabase } = await import('../src/cli/database.js')
    const knex = openDatabase(chooseDatabase(readOnly, undefined))
    try {
      const { rows } = await knex.raw('SHOW default_transaction_read_only') as { rows: Array<{ default_transaction_read_only: string }> }
      assert.equal(rows[0]?.default_transaction_read_only, 'on', 'the URL\'s options reach the session')
    } finally {
      await knex.destroy()
    }
    for (const existing of [false, true]) {
      if (existing) assert.equal((await cli(['migrate', '--db', POSTGRES_URL, '--table', table]).exited).code, 0)
      const run = await cli(['migrate', '--db', readOnly, '--table', table]).exited
      const label = existing ? 'an existing table' : 'no table yet'
      assert.notEqual(run.code, 0, `${label}: ${run.stdout}`)
      assert.equal(run.stderr.trim().split('\n').length, 1, `${label}, one line: ${run.stderr}`)
      assert.ok(run.stderr.includes(maskPassword(readOnly)), `${label}, names the database: ${run.stderr}`)
      assert.match(run.stderr, /read-only/, `${label}: ${run.stderr}`)
    }
  })
}, 'postgres')

it('prints a LockError by its message, naming the database, and the fix for a MySQL trigger that binary logging refuses', async () => {
  const { describeFailure } = await import('../src/cli/main.js')
  const { LockDatabaseError, LockError } = await import('../src/index.js')
  // A kind of LockError the CLI does not know by name (a read-only server, say).
  const readOnly = new (class extends LockError {})('DATABASE_READ_ONLY' as never, 'The database is a standby (read-only); connect to the primary.')
  assert.equal(describeFailure(readOnly, 'postgres://db/app'), 'postgres://db/app: The database is a standby (read-only); connect to the primary.')
  // mysql2's error for a trigger a migration creates, as knex throws it: our statement in front.
  const text = 'You do not have the SUPER privilege and binary logging is enabled (you *might* want to use the less safe log_bin_trust_function_creators variable)'
  const statement = 'CREATE TRIGGER `wl_fence_insert` BEFORE INSERT ON `wl` FOR EACH ROW BEGIN\n  UPDATE `wl_counter` SET value = value + 1 WHERE id = 1;\nEND'
  const mysql2 = (errno: number, code: string, message: string): Error =>
    Object.assign(new Error(`${statement} - ${message}`), { errno, code, sqlState: 'HY000', sqlMessage: message })
  const fix = 'to fix: set log_bin_trust_function_creators = 1 on the server (on every node of a cluster), or run "worker-locks migrate" as a user with SUPER'
  assert.equal(describeFailure(mysql2(1419, 'ER_BINLOG_UNSAFE_ROUTINE', text), 'mysql://db/app'), `mysql://db/app: ${text}; ${fix}`)
  const denied = 'Access denied; you need (at least one of) the SUPER privilege(s) for this operation'
  assert.equal(describeFailure(mysql2(1227, 'ER_SPECIFIC_ACCESS_DENIED_ERROR', denied), 'mysql://db/app'), `mysql://db/app: ${denied}; ${fix}`)
  // Wrapped by the library, the server's reason still replaces our statement.
  const wrapped = new LockDatabaseError('worker-locks could not create table "wl"', mysql2(1419, 'ER_BINLOG_UNSAFE_ROUTINE', text))
  assert.equal(describeFailure(wrapped, 'mysql://db/app'), `mysql://db/app: could not create table "wl": ${text}; ${fix}`)
  // Access denied for anything but a trigger is not this case.
  const other = Object.assign(new Error(denied), { errno: 1227, code: 'ER_SPECIFIC_ACCESS_DENIED_ERROR', sqlMessage: denied })
  assert.equal(describeFailure(other, 'mysql://db/app'), `mysql://db/app: ${denied}`)
})

it('does not run the command when the database cannot be reached, waiting or not', async () => {
  const unreachable = 'postgres://postgres@127.0.0.1:1/test'
  for (const wait of [['--wait', '5'], []]) {
    const run = await cli(['run', 'job', ...wait, '--db', unreachable, '--', process.execPath, '-e', "console.log('ran')"]).exited
    const label = `run ${wait.join(' ')}`
    assert.equal(run.code, 1, `${label}: ${run.stderr}`)
    assert.doesNotMatch(run.stdout, /ran/, label)
    assert.equal(run.stderr.trim().split('\n').length, 1, `${label}, one line: ${run.stderr}`)
    assert.match(run.stderr, /could not reach the database postgres:\/\/postgres@127\.0\.0\.1:1\/test (within 5 s )?\(.*ECONNREFUSED.*; not running /, label)
  }
  const secret = 'postgres://postgres:s3cret@127.0.0.1:1/test'
  const status = await cli(['status', '--db', secret]).exited
  assert.equal(status.code, 1, status.stderr)
  assert.equal(status.stdout, 'database: postgres://postgres:***@127.0.0.1:1/test\n')
  assert.equal(status.stderr, 'worker-locks: could not reach the database postgres://postgres:***@127.0.0.1:1/test (connect ECONNREFUSED 127.0.0.1:1)\n')
  const run = await cli(['run', 'job', '--db', secret, '--', 'true']).exited
  assert.equal(run.code, 1, run.stderr)
  assert.match(run.stderr, /could not reach the database postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/test /)
  assert.doesNotMatch(status.stdout + status.stderr + run.stderr, /s3cret/)
})

it('says to migrate when the lock table is missing, waiting or not', async () => {
  const file = join(tmpdir(), `${uniqueName('cli-missing-table')}.sqlite`)
  try {
    for (const wait of [['--wait', '5'], []]) {
      const run = await cli(['run', 'job', ...wait, '--table', uniqueName('wl_missing'), '--db', file, '--', process.execPath, '-e', "console.log('ran')"]).exited
      const label = `run ${wait.join(' ')}`
      assert.equal(run.code, 1, `${label}: ${run.stderr}`)
      assert.doesNotMatch(run.stdout, /ran/, label)
      assert.equal(run.stderr.trim().split('\n').length, 1, `${label}, one line: ${run.stderr}`)
      assert.match(run.stderr, /\(run "worker-locks migrate" first\)$/m, label)
      assert.ok(run.stderr.includes(` in sqlite:${file} is missing or not migrated `), `${label} names the database: ${run.stderr}`)
    }
  } finally {
    for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true })
  }
})

it('never suggests migrating for a database or role that does not exist', async () => {
  const { describeFailure } = await import('../src/cli/main.js')
  const { LockDatabaseError, LockTableError } = await import('../src/index.js')
  const wrapped = (message: string): Error => new LockDatabaseError('worker-locks could not list locks in table "worker_locks"', new Error(message))
  assert.doesNotMatch(describeFailure(wrapped('database "nodb" does not exist')), /migrate/)
  assert.doesNotMatch(describeFailure(wrapped('role "nobody" does not exist')), /migrate/)
  // The library reports a missing table as a LockTableError (the status case above); only that gets the hint.
  assert.doesNotMatch(describeFailure(wrapped('select * from "wl" - relation "wl" does not exist')), /migrate/)
  assert.match(describeFailure(new LockTableError('wl', new Error('no such table: wl'))), /\(run "worker-locks migrate" first\)$/)
})

it('prints help for every command', async () => {
  for (const command of ['--help', 'migrate --help', 'status --help', 'release --help', 'run --help']) {
    const run = await cli(command.split(' ')).exited
    assert.equal(run.code, 0)
    assert.match(run.stdout, /Usage: worker-locks/)
  }
  const run = (await cli(['run', '--help']).exited).stdout
  assert.match(run, /COMMAND runs in a process group of its own/)
  assert.match(run, /--lock-timeout S .*\(default: 120\)/)
  assert.match(run, /126 command not\s+executable; 127 command not found/)
  assert.doesNotMatch((await cli(['status', '--help']).exited).stdout, /--lock-timeout/)
})


/** A directory of its own to run the CLI in, removed after `body`. */
async function inEmptyDirectory(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'wl-cli-cwd-'))
  try {
    await body(dir)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

it('uses ./worker-locks.sqlite only without --db and DATABASE_URL, and says so on stderr in one line', async () => {
  await inEmptyDirectory(async (dir) => {
    const note = 'worker-locks: no --db or DATABASE_URL: using the SQLite file ./worker-locks.sqlite on this host only\n'
    const noUrl = { DATABASE_URL: undefined }
    // The README's quick start.
    const migrated = await cli(['migrate'], noUrl, dir).exited
    assert.equal(migrated.code, 0, migrated.stderr)
    assert.equal(migrated.stderr, note)
    const ran = await cli(['run', 'hello', '--', process.execPath, '-e', "console.log('one of me at a time')"], noUrl, dir).exited
    assert.equal(ran.code, 0, ran.stderr)
    assert.equal(ran.stdout, 'one of me at a time\n')
    assert.equal(ran.stderr, note)
    assert.ok(existsSync(join(dir, 'worker-locks.sqlite')))
    const status = await cli(['status'], noUrl, dir).exited
    assert.equal(status.stderr, note)
    assert.equal(status.stdout, `database: sqlite:${join(dir, 'worker-locks.sqlite')}\nno locks\n`)
    const released = await cli(['release', 'hello'], noUrl, dir).exited
    assert.equal(released.code, 1)
    assert.equal(released.stderr, note)
    // DATABASE_URL alone is enough to leave the default, and to say nothing about it.
    const named = await cli(['status'], { DATABASE_URL: 'sqlite:other.sqlite' }, dir).exited
    assert.equal(named.stderr.includes('no --db or DATABASE_URL'), false, named.stderr)
    assert.match(named.stdout, /^database: sqlite:.*other\.sqlite\n/)
  })
})

it('takes nothing but a database URL or an explicit SQLite path as a database, exiting 2 in one line', async () => {
  await inEmptyDirectory(async (dir) => {
    const cases: Array<[string[], Record<string, string | undefined>, RegExp]> = [
      [['status'], { DATABASE_URL: 'postgres' }, /^worker-locks: DATABASE_URL "postgres" is not a database URL; use postgres:\/\//],
      [['run', 'job', '--db', 'not a url', '--', 'true'], {}, /^worker-locks: --db "not a url" is not a database URL; /],
      [['migrate', '--db', 'locks'], {}, /--db "locks" is not a database URL/],
      [['status', '--db', ''], {}, /--db is empty/],
      [['status'], { DATABASE_URL: '' }, /DATABASE_URL is empty/],
      [['status', '--db', 'postgres://:@/'], {}, /--db "postgres:\/\/:@\/" is not a valid URL/],
      [['status', '--db', 'postgres://app:pw@db:99999/app'], {}, /--db "postgres:\/\/app:\*\*\*@db:99999\/app" is not a valid URL/],
      [['status', '--db', 'mysql:///test'], {}, /--db "mysql:\/\/\/test" names no host/],
      [['status', '--db', 'redis://localhost'], {}, /unsupported database URL scheme "redis:"/],
    ]
    for (const [args, env, expected] of cases) {
      const label = `${JSON.stringify(env)} ${args.join(' ')}`
      const run = await cli(args, { DATABASE_URL: undefined, ...env }, dir).exited
      assert.equal(run.code, 2, `${label}: ${run.stderr}`)
      assert.match(run.stderr, expected, label)
      assert.equal(run.stderr.trim().split('\n').length, 1, `one line for ${label}: ${run.stderr}`)
      assert.doesNotMatch(run.stderr, /:pw@/, label)
      assert.equal(run.stdout, '', label)
    }
    assert.ok(!existsSync(join(dir, 'postgres')) && !existsSync(join(dir, 'not a url')), 'no SQLite file named after the mistake')
    assert.deepEqual(readdirSync(dir), [], 'no file at all')
    // The explicit SQLite forms are files.
    for (const form of ['sqlite:a', 'file:b', './c', 'd.db', 'e.sqlite']) {
      const run = await cli(['migrate', '--db', form], { DATABASE_URL: undefined }, dir).exited
      assert.equal(run.code, 0, `${form}: ${run.stderr}`)
    }
    assert.deepEqual(readdirSync(dir).filter((f) => !/-(wal|shm)$/.test(f)).sort(), ['a', 'b', 'c', 'd.db', 'e.sqlite'])
  })
})

it('names the package to install when a database driver is missing', async () => {
  const { driverTrouble } = await import('../src/cli/failure.js')
  // knex's Client#initializeDriver: `Knex: run\n$ npm install ${packageName} --save\n${e.message}`.
  const knexError = (reason: string): Error => new Error(`Knex: run\n$ npm install mysql2 --save\n${reason}`)
  assert.equal(driverTrouble(knexError("Cannot find module 'mysql2'\nRequire stack:\n- /app/node_modules/knex/lib/dialects/mysql2/index.js")),
    'the mysql2 package is not installed; npm install mysql2')
  assert.equal(driverTrouble(knexError('The module was compiled against a different Node.js version\nmore')),
    'the mysql2 package could not be loaded (The module was compiled against a different Node.js version)')
  assert.equal(driverTrouble(new Error('connect ECONNREFUSED')), undefined)
  // End to end: the CLI with a require hook that hides mysql2, as if it were not installed.
  const hook = join(tmpdir(), `${uniqueName('cli-no-mysql2')}.cjs`)
  writeFileSync(hook, `const Module = require('node:module')
const resolve = Module._resolveFilename
Module._resolveFilename = function (request, ...rest) {
  if (request === 'mysql2') throw Object.assign(new Error("Cannot find module 'mysql2'"), { code: 'MODULE_NOT_FOUND' })
  return resolve.call(this, request, ...rest)
}
`)
  try {
    const run = await cli(['status', '--db', 'mysql://root@127.0.0.1:3306/test'], { NODE_OPTIONS: `--require ${hook}` }).exited
    assert.equal(run.code, 1, run.stderr)
    assert.equal(run.stderr, 'worker-locks: the mysql2 package is not installed; npm install mysql2\n')
  } finally {
    rmSync(hook, { force: true })
  }
})

it('prints the package version with --version and -v', async () => {
  const { version } = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }
  for (const flag of ['--version', '-v']) {
    const run = await cli([flag]).exited
    assert.equal(run.code, 0, run.stderr)
    assert.equal(run.stdout, `${version}\n`)
  }
})
