// The package as users get it: both module systems, what `npm pack` ships, the knex CLI loading
// the shipped migrations, and every TypeScript and JavaScript block of the README type-checked
// against the package's types.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { uniqueName } from './targets.mjs'

const run = promisify(execFile)
const root = join(import.meta.dirname, '..', '..')
const scratch = join(root, 'dist', 'scratch', uniqueName('package'))
mkdirSync(scratch, { recursive: true })
after(() => rmSync(scratch, { recursive: true, force: true }))

describe('package', () => {
  it('exposes the same API to import and require, without a second copy', async () => {
    const esm = await import('worker-locks')
    const cjs = createRequire(join(root, 'package.json'))('worker-locks') as typeof esm
    for (const name of ['LockStore', 'Lock', 'ManualClock', 'LockError', 'InvalidLockNameError', 'createLockTable', 'migrationsDirectory', 'workerLocksMigrationSource']) {
      assert.ok(name in esm, `import has ${name}`)
      assert.equal((esm as Record<string, unknown>)[name], (cjs as Record<string, unknown>)[name], `${name} is one object`)
    }
  })

  it('ships compiled code, types, migrations, README and LICENSE, and nothing else', async () => {
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root })
    const files = (JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0]?.files.map((f) => f.path) ?? []
    for (const required of ['package.json', 'README.md', 'LICENSE', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/dialects/mysql.js', 'migrations/20261126000000_worker_locks_create.cjs']) {
      assert.ok(files.includes(required), `ships ${required}`)
    }
    const unexpected = files.filter((f) => !/^(package\.json|README\.md|LICENSE|migrations\/[^/]+\.cjs|dist\/(src|src\/cli|src\/coordination|dialects)\/[^/]+\.(js|d\.ts|js\.map))$/.test(f))
    assert.deepEqual(unexpected, [])
  })

  it('ships source maps that carry their own sources (the .ts files are not shipped)', () => {
    const maps = readdirSync(join(root, 'dist', 'src')).filter((f) => f.endsWith('.js.map'))
    assert.ok(maps.length > 10)
    for (const file of maps) {
      const map = JSON.parse(readFileSync(join(root, 'dist', 'src', file), 'utf8')) as { sources: string[]; sourcesContent?: string[] }
      assert.equal(map.sourcesContent?.length, map.sources.length, `${file} carries its sources`)
      assert.ok((map.sourcesContent?.[0] ?? '').length > 0)
    }
  })

  it('migrates up (twice) and down through the knex CLI with the README knexfile', async () => {
    const project = join(scratch, 'cli')
    mkdirSync(join(project, 'migrations'), { recursive: true })
    const readme = readFileSync(join(root, 'README.md'), 'utf8')
    const knexfile = /```js\n(\/\/ knexfile\.cjs\n[\s\S]*?)```/.exec(readme)?.[1]
    assert.ok(knexfile, 'the README shows a knexfile')
    const database = join(project, 'app.sqlite')
    writeFileSync(join(project, 'knexfile.cjs'), knexfile
      .replace("client: 'pg'", "client: 'better-sqlite3', useNullAsDefault: true")
      .replace('process.env.DATABASE_URL', JSON.stringify({ filename: database })))
    const cli = join(root, 'node_modules', 'knex', 'bin', 'cli.js')
    const knexCli = (...args: string[]) => run(process.execPath, [cli, ...args, '--knexfile', 'knexfile.cjs'], { cwd: project })
    const shipped = readdirSync(join(root, 'migrations')).filter((f) => f.endsWith('.cjs')).length
    assert.match((await knexCli('migrate:latest')).stdout, new RegExp(`Batch 1 run: ${shipped} migrations`))
    assert.match((await knexCli('migrate:latest')).stdout, /Already up to date/)
    const sqlite = createRequire(join(root, 'package.json'))('better-sqlite3') as new (file: string) => {
      prepare(sql: string): { all(): Array<{ name: string }> }
      close(): void
    }
    const tables = () => {
      const db = new sqlite(database)
      try { return db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all().map((r) => r.name) } finally { db.close() }
    }
    assert.ok(tables().includes('worker_locks'))
    await knexCli('migrate:rollback', '--all')
    assert.ok(!tables().includes('worker_locks'))
  })

  describe('the packed tarball installed in an app, through the knex CLI', () => {
    // Outside the repository, so that require('worker-locks') finds the installed copy and not
    // the repository itself; knex and better-sqlite3 are the repository's, linked in.
    const apps = mkdtempSync(join(tmpdir(), 'worker-locks-app-'))
    after(() => rmSync(apps, { recursive: true, force: true }))
    let tarball = ''
    before(async () => {
      const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', apps], { cwd: root })
      tarball = join(apps, (JSON.parse(stdout) as Array<{ filename: string }>)[0]!.filename)
    })
    const readmeKnexfile = () => {
      const knexfile = /```js\n(\/\/ knexfile\.cjs\n[\s\S]*?)```/.exec(readFileSync(join(root, 'README.md'), 'utf8'))?.[1]
      assert.ok(knexfile, 'the README shows a knexfile')
      return knexfile
        .replace("client: 'pg'", "client: 'better-sqlite3', useNullAsDefault: true")
        .replace('process.env.DATABASE_URL', "{ filename: require('node:path').join(__dirname, 'app.sqlite') }")
    }
    /** A new app with the tarball installed, `knexfile` written and an empty ./migrations. */
    const app = async (name: string, knexfile: string) => {
      const dir = join(apps, name)
      mkdirSync(join(dir, 'migrations'), { recursive: true })
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, private: true }))
      await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--no-package-lock', '--legacy-peer-deps', '--ignore-scripts', tarball], { cwd: dir })
      for (const dep of ['knex', 'better-sqlite3']) symlinkSync(join(root, 'node_modules', dep), join(dir, 'node_modules', dep), 'dir')
      mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true })
      symlinkSync(join('..', 'knex', 'bin', 'cli.js'), join(dir, 'node_modules', '.bin', 'knex'))
      writeFileSync(join(dir, 'knexfile.cjs'), knexfile)
      const knexCli = async (...args: string[]) => (await run('npx', ['--no-install', 'knex', ...args, '--knexfile', 'knexfile.cjs'], { cwd: dir })).stdout
      const sqlite = createRequire(join(root, 'package.json'))('better-sqlite3') as new (file: string) => {
        prepare(sql: string): { all(): Array<{ name: string }> }
        close(): void
      }
      const tables = () => {
        const db = new sqlite(join(dir, 'app.sqlite'))
        try { return db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all().map((r) => r.name) } finally { db.close() }
      }
      return { dir, knexCli, tables, shippedDir: join(dir, 'node_modules', 'worker-locks', 'migrations') }
    }
    const shipped = readdirSync(join(root, 'migrations')).filter((f) => f.endsWith('.cjs')).sort()

    it('README knexfile: migrate:make writes into the app\'s ./migrations, not into node_modules', async () => {
      const { dir, knexCli, tables, shippedDir } = await app('make', readmeKnexfile())
      assert.deepEqual(readdirSync(shippedDir).sort(), shipped)
      await knexCli('migrate:make', 'add_user_name')
      const made = readdirSync(join(dir, 'migrations'))
      assert.equal(made.length, 1)
      assert.match(made[0]!, /^\d{14}_add_user_name\.c?js$/)
      assert.deepEqual(readdirSync(shippedDir).sort(), shipped, 'nothing new in node_modules/worker-locks/migrations')
      // Shipped and own migrations run together, in the order of their file names.
      assert.match(await knexCli('migrate:latest'), new RegExp(`Batch 1 run: ${shipped.length + 1} migrations`))
      assert.ok(tables().includes('worker_locks'))
      assert.match(await knexCli('migrate:list'), /No Pending Migration files Found/)
      await knexCli('migrate:rollback', '--all')
      assert.ok(!tables().includes('worker_locks'))
    })

    it('knex skips the shipped .cjs directory under loadExtensions without .cjs (what the migration source is for)', async () => {
      const { knexCli, tables } = await app('skipped', readmeKnexfile()
        .replace("directory: [migrationsDirectory, './migrations'] }", "directory: [migrationsDirectory, './migrations'], loadExtensions: ['.js'] }"))
      assert.match(await knexCli('migrate:latest'), /Already up to date/)
      assert.ok(!tables().includes('worker_locks'))
    })

    for (const extension of ['.js', '.ts']) {
      it(`workerLocksMigrationSource with loadExtensions ['${extension}'] creates and rolls back the lock table`, async () => {
        const knexfile = [
          // What ts-node does for a TypeScript app, for a .ts file that is plain JavaScript.
          ...(extension === '.ts' ? ["require.extensions['.ts'] = require.extensions['.js']"] : []),
          "const { workerLocksMigrationSource } = require('worker-locks')",
          'module.exports = {',
          "  client: 'better-sqlite3', useNullAsDefault: true,",
          "  connection: { filename: require('node:path').join(__dirname, 'app.sqlite') },",
          `  migrations: { migrationSource: workerLocksMigrationSource({ directory: './migrations', loadExtensions: ['${extension}'] }) },`,
          '}',
        ].join('\n')
        const { dir, knexCli, tables } = await app(`source${extension.replace('.', '-')}`, knexfile)
        const own = (table: string) => `exports.up = (knex) => knex.schema.createTable('${table}', (t) => t.increments())\nexports.down = (knex) => knex.schema.dropTable('${table}')\n`
        writeFileSync(join(dir, 'migrations', `20270101000000_app_things${extension}`), own('app_things'))
        // Another extension than the app's: not loaded.
        writeFileSync(join(dir, 'migrations', `20270101000001_other${extension === '.js' ? '.ts' : '.js'}`), own('other_things'))
        assert.match(await knexCli('migrate:latest'), new RegExp(`Batch 1 run: ${shipped.length + 1} migrations`))
        assert.match(await knexCli('migrate:latest'), /Already up to date/)
        assert.deepEqual(tables().filter((t) => ['worker_locks', 'app_things', 'other_things'].includes(t)).sort(), ['app_things', 'worker_locks'])
        assert.match(await knexCli('migrate:status'), /No Pending Migration files Found/)
        await knexCli('migrate:rollback', '--all')
        assert.ok(!tables().includes('worker_locks') && !tables().includes('app_things'))
      })
    }

    it('a database migrated with the README knexfile is up to date under workerLocksMigrationSource (same names)', async () => {
      const { dir, knexCli, tables } = await app('switch', readmeKnexfile())
      await knexCli('migrate:latest')
      writeFileSync(join(dir, 'knexfile.cjs'), readmeKnexfile()
        .replace('const { migrationsDirectory }', 'const { workerLocksMigrationSource }')
        .replace("directory: [migrationsDirectory, './migrations'] }", "migrationSource: workerLocksMigrationSource({ directory: './migrations' }) }"))
      assert.match(readFileSync(join(dir, 'knexfile.cjs'), 'utf8'), /migrationSource: workerLocksMigrationSource/)
      assert.match(await knexCli('migrate:latest'), /Already up to date/)
      await knexCli('migrate:rollback', '--all')
      assert.ok(!tables().includes('worker_locks'))
    })
  })

  it('runs the fencing example: the stalled worker\'s late write is refused', async () => {
    const { stdout } = await run(process.execPath, [join(root, 'dist', 'examples', 'fencing.mjs')], { cwd: root })
    assert.match(stdout, /worker B took over with fence (\d+)/)
    assert.match(stdout, /worker A's late write was refused: fence 1 is older than 2/)
    assert.match(stdout, /worker A's signal aborted: true/)
    assert.match(stdout, /document: final by B/)
  })

  it('runs the README quick start command line through npx', async () => {
    const project = join(scratch, 'quickstart')
    mkdirSync(project, { recursive: true })
    const readme = readFileSync(join(root, 'README.md'), 'utf8')
    const line = /^npx worker-locks migrate && .*$/m.exec(readme)?.[0]
    assert.ok(line, 'the README shows the command line')
    // The same words, run from the repository (where npx finds the package's own bin), on a scratch file.
    const env = { ...process.env, DATABASE_URL: `sqlite:${join(project, 'quickstart.sqlite')}` }
    const { stdout } = await run('sh', ['-c', line.replaceAll('npx worker-locks', 'npx --no-install worker-locks')], { cwd: root, env })
    assert.match(stdout, /up to date/)
    assert.match(stdout, /one of me at a time/)
  })

  it('type-checks every TypeScript and JavaScript block of the README', async () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8')
    // Every fenced block, with the README line its code starts on. A block must say its language,
    // and only these: ts and js are checked here, sh is not run.
    const blocks = [...readme.matchAll(/^```(.*)\n([\s\S]*?)^```$/gm)].map((m) => ({
      language: m[1] ?? '',
      code: m[2] ?? '',
      line: readme.slice(0, m.index).split('\n').length + 1,
    }))
    const unknown = blocks.filter((b) => !['ts', 'js', 'sh'].includes(b.language)).map((b) => `README.md:${b.line - 1} \`\`\`${b.language}`)
    assert.deepEqual(unknown, [], 'every block is ```ts, ```js or ```sh')
    const checked = blocks.filter((b) => b.language !== 'sh')
    assert.ok(checked.some((b) => b.language === 'js') && checked.filter((b) => b.language === 'ts').length >= 3)
    const dir = join(scratch, 'readme')
    mkdirSync(dir, { recursive: true })
    const files = checked.map(({ language, code, line }) => {
      // Named after the README line, so that tsc's complaints point at the block.
      if (language === 'js') {
        // The knexfile and any other CommonJS block: checked as JavaScript against the types.
        const file = `readme-line-${line}.${code.includes('require(') ? 'cjs' : 'mjs'}`
        writeFileSync(join(dir, file), code)
        return file
      }
      // A fragment that imports nothing (the options overview) uses names a reader would have.
      const prelude = code.includes("from 'worker-locks'") ? '' :
        "import type { Knex } from 'knex'\nimport { LockStore, type Logger, type Clock, type BackoffOptions } from 'worker-locks'\n" +
        'declare const knex: Knex, instanceName: string, tableName: string, lockTimeoutMs: number, renewalIntervalMs: number\n' +
        "declare const strategy: 'auto' | 'native' | 'emulated', clock: 'database' | 'local' | Clock, logger: Logger\n" +
        'declare const backoff: BackoffOptions, slowWaitWarningMs: number\n'
      const file = `readme-line-${line}.mts`
      // The prelude shares the block's first line, so that tsc's line k is the block's line k.
      writeFileSync(join(dir, file), `${prelude.replaceAll('\n', '; ')}${code}\nexport {}\n`)
      return file
    })
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      extends: join(root, 'tsconfig.json'),
      compilerOptions: { noEmit: true, rootDir: '.', noUnusedLocals: false, allowJs: true, checkJs: true },
      files,
      include: [],
    }))
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const result = await run(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: dir }).catch((e: { stdout: string }) => e)
    assert.equal(result.stdout, '', 'tsc reports no errors (readme-line-N.mts(k,…) is README line N + k - 1)')
  })
})
