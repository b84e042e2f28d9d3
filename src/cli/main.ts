#!/usr/bin/env node
// The worker-locks command. It uses the public API like any other program.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Knex } from 'knex'
import { LockStore, createLockTable, type LockInfo } from '../index.js'
import { parseArgs, UsageError, type OptionKind, type ParsedArgs } from './args.js'
import { chooseDatabase, DEFAULT_DATABASE, openDatabase } from './database.js'
import { describeFailure } from './failure.js'
import { help } from './help.js'
import { printable, quoted } from './printable.js'
import { runCommand } from './run.js'

export { describeFailure }

const databaseOptions: Record<string, OptionKind> = { db: 'value', table: 'value', help: 'flag' }
const commandOptions: Record<string, Record<string, OptionKind>> = {
  migrate: databaseOptions,
  status: { ...databaseOptions, json: 'flag' },
  release: databaseOptions,
  run: { ...databaseOptions, key: 'value', wait: 'optional-number', 'lock-timeout': 'value', 'on-lost': 'value', grace: 'value', 'min-hold': 'value' },
}

/** Runs the CLI with `argv` (without node and the script); resolves the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv
  const answered = answerWithoutDatabase(command)
  if (answered !== undefined || command === undefined) return answered ?? 2
  const known = commandOptions[command]
  if (!known) throw new UsageError(`unknown command ${JSON.stringify(command)}; run "worker-locks --help"`)
  const args = parseArgs(rest, known)
  if (args.options.has('help')) {
    console.log(help[command])
    return 0
  }
  const database = chooseDatabase(stringOption(args, 'db'), process.env.DATABASE_URL)
  // A file in the current directory is a lock on this host alone: under cron on several hosts,
  // no lock at all. Said every time, so that nobody relies on it unknowingly.
  if (database.implicit) console.error(`worker-locks: no --db or DATABASE_URL: using the SQLite file ${DEFAULT_DATABASE} on this host only`)
  const tableName = stringOption(args, 'table')
  const knex = openDatabase(database)
  try {
    return await dispatch(command, knex, tableName, args, database.display)
  } catch (error) {
    if (error instanceof UsageError) throw error
    console.error(`worker-locks: ${describeFailure(error, database.display)}`)
    return 1
  } finally {
    await knex.destroy()
  }
}

/** Help and the version, which need no database: the exit code, or undefined for any other command. */
function answerWithoutDatabase(command: string | undefined): number | undefined {
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(help.main)
    return command === undefined ? 2 : 0
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    console.log(version())
    return 0
  }
  return undefined
}

/** Runs `command`, one of `commandOptions`, against the database; resolves the exit code. */
function dispatch(command: string, knex: Knex, tableName: string | undefined, args: ParsedArgs, database: string): Promise<number> {
  switch (command) {
    case 'migrate': return migrate(knex, tableName, args, database)
    case 'status': return status(knex, tableName, args, database)
    case 'release': return release(knex, tableName, args)
    default: return runCommand(knex, tableName, args, database)
  }
}

/** The version in the package's package.json (dist/src/cli/main.js is three folders below it). */
function version(): string {
  const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version?: unknown }
  return String(manifest.version)
}

function stringOption(args: ParsedArgs, name: string): string | undefined {
  const value = args.options.get(name)
  return value === true ? undefined : value
}

function expectPositionals(args: ParsedArgs, min: number, max: number, usage: string): void {
  if (args.positionals.length < min || args.positionals.length > max) throw new UsageError(`usage: ${usage}`)
  if (args.rest !== undefined) throw new UsageError('this command takes no "--" part')
}

async function migrate(knex: Knex, tableName: string | undefined, args: ParsedArgs, database: string): Promise<number> {
  expectPositionals(args, 0, 0, 'worker-locks migrate [--db URL] [--table NAME]')
  await createLockTable(knex, tableName === undefined ? {} : { tableName })
  console.log(`worker-locks: table ${tableName ?? 'worker_locks'} in ${database} is up to date`)
  return 0
}

function age(ms: number): string {
  if (ms < 1_000) return `${Math.max(0, Math.round(ms))}ms`
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)}s`
  return `${Math.round(ms / 60_000)}m`
}

async function status(knex: Knex, tableName: string | undefined, args: ParsedArgs, database: string): Promise<number> {
  expectPositionals(args, 0, 0, 'worker-locks status [--json]')
  // First, so that whoever reads the table knows which database it came from; with --json on
  // stderr, so that stdout stays one JSON document.
  if (args.options.has('json')) console.error(`database: ${database}`)
  else console.log(`database: ${database}`)
  // Staleness is judged by the lease each holder wrote in its row, so no timeout is needed here.
  const store = new LockStore(knex, { tableName })
  const locks = await store.listLocks()
  if (args.options.has('json')) {
    console.log(JSON.stringify(locks.map((l: LockInfo) => ({ ...l, fence: String(l.fence), lastRenewedAt: l.lastRenewedAt.toISOString() })), null, 2))
    return 0
  }
  if (locks.length === 0) {
    console.log('no locks')
    return 0
  }
  // Names come from anyone who can write the table: a control character in one must not forge
  // a line of the table or reach the terminal as an escape sequence.
  const rows = [['NAME', 'KEY', 'HOLDER', 'FENCE', 'AGE', 'STATE', 'MODE'],
    ...locks.map((l) => [printable(l.name), printable(l.key), holderOf(l), String(l.fence), age(l.ageMs), l.stale ? 'stale' : 'held', l.mode])]
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd())
  return 0
}

/** Who holds a lock, as status and release print it: a lock kept after its release has no holder. */
function holderOf(lock: LockInfo): string {
  return lock.instanceName === '' ? '(kept)' : printable(lock.instanceName)
}

async function release(knex: Knex, tableName: string | undefined, args: ParsedArgs): Promise<number> {
  expectPositionals(args, 1, 2, 'worker-locks release NAME [KEY]')
  const [name = '', key = ''] = args.positionals
  const store = new LockStore(knex, { tableName })
  const listed = await store.listLocks({ name, key })
  const before = listed.length === 1 ? listed[0] : undefined
  if (!(await store.forceRelease(name, key))) {
    console.log(`worker-locks: no lock ${quoted(name)} (key ${quoted(key)}) to release`)
    return 1
  }
  const holder = before ? `, held by ${holderOf(before)} (fence ${before.fence}, renewed ${age(before.ageMs)} ago)`
    : listed.length > 1 ? `, held by ${listed.length} holders (${listed.map((l) => `${holderOf(l)}: ${l.mode}`).join(', ')})` : ''
  console.log(`worker-locks: released ${quoted(name)} (key ${quoted(key)})${holder}`)
  return 0
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code
  }, (error: unknown) => {
    console.error(`worker-locks: ${describeFailure(error)}`)
    process.exitCode = error instanceof UsageError ? 2 : 1
  })
}
