import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Knex } from 'knex'
import { DEFAULT_TABLE_NAME, validateTableName } from './validate.js'

/**
 * The absolute path of the shipped knex migrations. Point the knex CLI at it, next to your own:
 * `migrations: { directory: ['./migrations', migrationsDirectory] }`.
 */
// Compiled to dist/src/schema.js; the migrations ship at the package root.
export const migrationsDirectory: string = join(__dirname, '..', '..', 'migrations')

// Each shipped migration exports, besides knex's up/down, the same steps taking the table name.
interface Migration {
  upTable(knex: Knex, tableName: string): Promise<void>
  downTable(knex: Knex, tableName: string): Promise<void>
}

/** The shipped migrations in the order knex applies them (by file name). */
function migrationFiles(): string[] {
  return readdirSync(migrationsDirectory).filter((file) => file.endsWith('.cjs')).sort()
}

function load(file: string): Migration {
  return require(join(migrationsDirectory, file)) as Migration
}

/** Options of {@link createLockTable}. */
export interface LockTableOptions {
  /** The lock table. @default 'worker_locks' */
  tableName?: string
}

/** Checks the options of `createLockTable`/`dropLockTable` (named by `fn`) and returns the table. */
function tableNameOption(options: unknown, fn: string): string {
  if (options === undefined) return DEFAULT_TABLE_NAME
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new TypeError(`${fn} options must be an object such as { tableName: 'worker_locks' }, got ${options === null ? 'null' : typeof options}.`)
  }
  for (const name of Object.keys(options)) {
    if (name !== 'tableName') throw new TypeError(`Unknown ${fn} option ${JSON.stringify(name)}; the only option is tableName.`)
  }
  const { tableName } = options as LockTableOptions
  // Only a missing tableName means the default: a null that slipped through must not make
  // dropLockTable drop the default table.
  return tableName === undefined ? DEFAULT_TABLE_NAME : validateTableName(tableName, `${fn} option tableName`)
}

/**
 * Creates or upgrades the lock table by running every shipped migration's `up` (each is a no-op
 * when its change is already there), for those who write their own migration or create the
 * table at start-up. Safe to run from several processes at once. Pass a transaction to make it
 * part of one.
 * @throws TypeError for options that are not an object, unknown options, or a bad `tableName`
 *   (null included), before any SQL runs
 */
export async function createLockTable(knex: Knex, options?: LockTableOptions): Promise<void> {
  const tableName = tableNameOption(options, 'createLockTable')
  for (const file of migrationFiles()) await load(file).upTable(knex, tableName)
}

/**
 * Drops the lock table (every shipped migration's `down`, newest first). Held locks are lost.
 * @throws TypeError for options that are not an object, unknown options, or a bad `tableName`
 *   (null included), before any SQL runs
 */
export async function dropLockTable(knex: Knex, options?: LockTableOptions): Promise<void> {
  const tableName = tableNameOption(options, 'dropLockTable')
  for (const file of migrationFiles().reverse()) await load(file).downTable(knex, tableName)
}
