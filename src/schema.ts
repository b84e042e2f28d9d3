import { readdirSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { extname, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Knex } from 'knex'
import { database, findDialect } from '../dialects/index.js'
import { readOnlyError } from './read-only.js'
import { DEFAULT_TABLE_NAME, optionsObject, validateTableName } from './validate.js'

/**
 * The absolute path of the shipped knex migrations (`.cjs` files). Point the knex CLI at it,
 * before your own: `migrations: { directory: [migrationsDirectory, './migrations'] }` (knex
 * writes `migrate:make` files into the last directory). A `loadExtensions` without `.cjs` skips
 * them: use {@link workerLocksMigrationSource} then.
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

/** The table the options of `createLockTable`/`dropLockTable` (`fn`) name, checked before any SQL. */
function tableNameOption(options: unknown, fn: string): string {
  const { tableName } = optionsObject(options, fn, ['tableName'])
  return tableName === undefined ? DEFAULT_TABLE_NAME : validateTableName(tableName, `${fn} option tableName`)
}

/**
 * Creates or upgrades the lock table by running every shipped migration's `up` (each is a no-op
 * when its change is already there), for those who write their own migration or create the
 * table at start-up. Safe to run from several processes at once. Pass a transaction to make it
 * part of one.
 * @throws TypeError for options that are not an object, unknown options, or a bad `tableName`
 *   (null included), before any SQL runs
 * @throws ReadOnlyDatabaseError on a standby or a read-only server, session or file, before any change
 */
export async function createLockTable(knex: Knex, options?: LockTableOptions): Promise<void> {
  const tableName = tableNameOption(options, 'createLockTable')
  // Asked first: on a standby whose primary has the table, every step would find its change there and succeed.
  const dialect = findDialect(knex)
  const facts = await dialect?.detect(database(knex, dialect.rowsOf, { preparedStatements: false, statementTimeoutMs: 30_000 }))
  if (facts?.readOnly) throw readOnlyError(facts)
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

/** One migration of {@link workerLocksMigrationSource}: a shipped one or one of yours. */
export interface WorkerLocksMigration {
  /** The file name, which knex records in its migrations table. */
  readonly file: string
  /** The file's absolute path. */
  readonly path: string
  /** Whether the file ships with worker-locks. */
  readonly shipped: boolean
}

/** Options of {@link workerLocksMigrationSource}. */
export interface WorkerLocksMigrationSourceOptions {
  /** Directories of your own migrations, relative to the working directory. @default none */
  directory?: string | readonly string[]
  /**
   * Extensions of your own migration files, such as `['.ts']`. The shipped `.cjs` files are
   * always included. @default the list knex passes (its default when no FS option is set)
   */
  loadExtensions?: readonly string[]
}

/**
 * A knex migration source of the shipped migrations, whatever the app's `loadExtensions`, and of
 * your own directories, all in one order by file name (as knex orders its directories). Use it as
 * `migrations: { migrationSource: workerLocksMigrationSource({ directory: './migrations',
 * loadExtensions: ['.ts'] }) }`: knex drops a `migrationSource` when `directory` or
 * `loadExtensions` is set next to it, so they go here. Names are the file names knex records with
 * `directory`, so a database migrated either way stays migrated.
 * @throws TypeError for options that are not an object or unknown options
 */
export function workerLocksMigrationSource(options?: WorkerLocksMigrationSourceOptions): Knex.MigrationSource<WorkerLocksMigration> {
  const { directories, ownExtensions } = sourceOptions(options)
  return {
    async getMigrations(knexExtensions) {
      const extensions = ownExtensions ?? knexExtensions
      const migrations: WorkerLocksMigration[] = migrationFiles().map((file) => ({ file, path: join(migrationsDirectory, file), shipped: true }))
      for (const dir of directories) {
        const absolute = resolve(process.cwd(), dir)
        for (const file of await readdir(absolute)) {
          if (extensions.includes(extname(file))) migrations.push({ file, path: join(absolute, file), shipped: false })
        }
      }
      // Stable: equal names keep the shipped one first, and knex then reports the duplicate.
      return migrations.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))
    },
    getMigrationName: (migration) => migration.file,
    async getMigration(migration) {
      if (migration.shipped) return load(migration.file) as unknown as Knex.Migration
      return importMigration(migration.path)
    },
  }
}

/** Checks the options of {@link workerLocksMigrationSource}; throws a TypeError naming the problem. */
function sourceOptions(options: unknown): { directories: readonly string[]; ownExtensions: readonly string[] | undefined } {
  const { directory, loadExtensions } = optionsObject(options, 'workerLocksMigrationSource', ['directory', 'loadExtensions'])
  const directories: unknown = directory === undefined ? [] : typeof directory === 'string' ? [directory] : directory
  const stringsOnly = (values: unknown): values is string[] => Array.isArray(values) && values.every((v) => typeof v === 'string')
  if (!stringsOnly(directories) || (loadExtensions !== undefined && !stringsOnly(loadExtensions))) {
    throw new TypeError('workerLocksMigrationSource: directory must be a string or an array of strings, loadExtensions an array of strings such as [\'.ts\'].')
  }
  return { directories, ownExtensions: loadExtensions as string[] | undefined }
}

// Your own files load as knex loads them: `.mjs` (and ESM that require refuses) through import(),
// the rest through require, which sees the TypeScript hooks the knex CLI registers.
async function importMigration(path: string): Promise<Knex.Migration> {
  let loaded: unknown
  if (path.endsWith('.mjs')) loaded = await import(pathToFileURL(path).href)
  else {
    try {
      loaded = require(path)
    } catch (error) {
      const code = (error as { code?: unknown }).code
      if (code !== 'ERR_REQUIRE_ESM' && code !== 'ERR_REQUIRE_ASYNC_MODULE') throw error
      loaded = await import(pathToFileURL(path).href)
    }
  }
  const module = loaded as Partial<Knex.Migration> & { default?: Knex.Migration }
  return typeof module.up === 'function' ? module as Knex.Migration : module.default ?? module as Knex.Migration
}
