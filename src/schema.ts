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

/**
 * Creates or upgrades the lock table by running every shipped migration's `up` (each is a no-op
 * when its change is already there), for those who write their own migration or create the
 * table at start-up. Safe to run from several processes at once. Pass a transaction to make it
 * part of one.
 */
export async function createLockTable(knex: Knex, options: LockTableOptions = {}): Promise<void> {
  const tableName = validateTableName(options.tableName ?? DEFAULT_TABLE_NAME, 'createLockTable option tableName')
  for (const file of migrationFiles()) await load(file).upTable(knex, tableName)
}

/** Drops the lock table (every shipped migration's `down`, newest first). Held locks are lost. */
export async function dropLockTable(knex: Knex, options: LockTableOptions = {}): Promise<void> {
  const tableName = validateTableName(options.tableName ?? DEFAULT_TABLE_NAME, 'dropLockTable option tableName')
  for (const file of migrationFiles().reverse()) await load(file).downTable(knex, tableName)
}
