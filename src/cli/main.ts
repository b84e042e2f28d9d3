#!/usr/bin/env node
// The worker-locks command. It uses the public API like any other program.
import type { Knex } from 'knex'
import { LockStore, createLockTable, type LockInfo } from '../index.js'
import { parseCommandLine, text, UsageError, type CommandLine } from './args.js'
import { chooseDatabase, DEFAULT_DATABASE, openDatabase } from './database.js'
import { describeFailure, printable, quoted, say } from './failure.js'
import { help } from './help.js'
import { runCommand } from './run.js'

export { describeFailure }

type Handler = (knex: Knex, tableName: string | undefined, args: CommandLine, database: string) => Promise<number>

// Each command's own options, how many words it takes (min, max), whether `-- COMMAND…` follows, what it does.
const COMMANDS: Readonly<Record<string, { options: string[], words: [number, number], command?: true, handler: Handler }>> = {
  migrate: { options: [], words: [0, 0], handler: migrate },
  status: { options: ['json'], words: [0, 0], handler: status },
  release: { options: [], words: [1, 2], handler: release },
  run: { options: ['key', 'wait', 'lock-timeout', 'on-lost', 'grace', 'min-hold'], words: [1, 1], command: true, handler: runCommand },
}

/** Runs the CLI with `argv` (without node and the script); resolves the exit code. */
export async function main([name, ...argv]: readonly string[]): Promise<number> {
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(help.main)
    return name === undefined ? 2 : 0
  }
  if (name === '--version' || name === '-v' || name === 'version') {
    // dist/src/cli/main.js is three folders below package.json.
    console.log(String((require('../../../package.json') as { version?: unknown }).version))
    return 0
  }
  let database: string | undefined
  let knex: Knex | undefined
  try {
    const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined
    if (!command) throw new UsageError(`unknown command ${JSON.stringify(name)}; run "worker-locks --help"`)
    const args = parseCommandLine(argv, ['db', 'table', 'help', ...command.options])
    if (args.values.help) {
      console.log(help[name])
      return 0
    }
    const [min, max] = command.words
    if (args.positionals.length < min || args.positionals.length > max || (args.rest !== undefined) !== (command.command ?? false)) {
      throw new UsageError(`usage: ${help[name]?.split('\n')[0]?.replace('Usage: ', '')}`)
    }
    const choice = chooseDatabase(text(args, 'db'), process.env.DATABASE_URL)
    // A file in the current directory is a lock on this host alone: under cron on several hosts,
    // no lock at all. Said every time, so that nobody relies on it unknowingly.
    if (choice.implicit) say(`no --db or DATABASE_URL: using the SQLite file ${DEFAULT_DATABASE} on this host only`)
    database = choice.display
    knex = openDatabase(choice)
    return await command.handler(knex, text(args, 'table'), args, database)
  } catch (error) {
    say(describeFailure(error, database))
    return error instanceof UsageError ? 2 : 1
  } finally {
    await knex?.destroy()
  }
}

async function migrate(knex: Knex, tableName: string | undefined, _args: CommandLine, database: string): Promise<number> {
  await createLockTable(knex, tableName === undefined ? {} : { tableName })
  console.log(`worker-locks: table ${tableName ?? 'worker_locks'} in ${database} is up to date`)
  return 0
}

function age(ms: number): string {
  if (ms < 1_000) return `${Math.max(0, Math.round(ms))}ms`
  return ms < 120_000 ? `${(ms / 1_000).toFixed(1)}s` : `${Math.round(ms / 60_000)}m`
}

/** Who holds a lock, as status and release print it: a lock kept after its release has no holder. */
function holderOf(lock: LockInfo): string {
  return lock.instanceName === '' ? '(kept)' : printable(lock.instanceName)
}

async function status(knex: Knex, tableName: string | undefined, args: CommandLine, database: string): Promise<number> {
  // First, so that whoever reads the table knows which database it came from; with --json on
  // stderr, so that stdout stays one JSON document.
  if (args.values.json) console.error(`database: ${database}`)
  else console.log(`database: ${database}`)
  // Staleness is judged by the lease each holder wrote in its row, so no timeout is needed here.
  const locks = await new LockStore(knex, { tableName }).listLocks()
  if (args.values.json) {
    console.log(JSON.stringify(locks.map((l) => ({ ...l, fence: String(l.fence), lastRenewedAt: l.lastRenewedAt.toISOString() })), null, 2))
  } else if (locks.length === 0) {
    console.log('no locks')
  } else {
    // Names come from anyone who can write the table: a control character in one must not forge
    // a line of the table or reach the terminal as an escape sequence.
    const rows = [['NAME', 'KEY', 'HOLDER', 'FENCE', 'AGE', 'STATE', 'MODE'],
      ...locks.map((l) => [printable(l.name), printable(l.key), holderOf(l), String(l.fence), age(l.ageMs), l.stale ? 'stale' : 'held', l.mode])]
    const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
    for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd())
  }
  return 0
}

async function release(knex: Knex, tableName: string | undefined, args: CommandLine): Promise<number> {
  const [name = '', key = ''] = args.positionals
  const store = new LockStore(knex, { tableName })
  const listed = await store.listLocks({ name, key })
  const lock = `${quoted(name)} (key ${quoted(key)})`
  if (!(await store.forceRelease(name, key))) {
    console.log(`worker-locks: no lock ${lock} to release`)
    return 1
  }
  const [only] = listed
  const holder = listed.length > 1 ? `, held by ${listed.length} holders (${listed.map((l) => `${holderOf(l)}: ${l.mode}`).join(', ')})`
    : only ? `, held by ${holderOf(only)} (fence ${only.fence}, renewed ${age(only.ageMs)} ago)` : ''
  console.log(`worker-locks: released ${lock}${holder}`)
  return 0
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (error: unknown) => {
    say(describeFailure(error))
    process.exitCode = 1
  })
}
