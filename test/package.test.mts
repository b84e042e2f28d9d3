// The package as users get it: both module systems, what `npm pack` ships, the knex CLI loading
// the shipped migrations, and every TypeScript and JavaScript block of the README type-checked
// against the package's types.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { uniqueName } from './targets.mjs'

/** The anchors GitHub gives a markdown file's headings: lower case, punctuation dropped, spaces as hyphens. */
const headingAnchors = (markdown: string): Set<string> =>
  new Set([...markdown.matchAll(/^#+ (.+)$/gm)].map((m) => m[1]!.toLowerCase().replace(/[^\w\- ]/g, '').replaceAll(' ', '-')))

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

  it('names its repository, and every README link works from the package page', async () => {
    const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { repository?: { url?: string }; homepage?: string; bugs?: { url?: string } }
    const repository = /^git\+(https:\/\/github\.com\/[\w.-]+\/[\w.-]+)\.git$/.exec(manifest.repository?.url ?? '')?.[1]
    assert.ok(repository, `a GitHub repository URL: ${manifest.repository?.url}`)
    assert.equal(manifest.homepage, `${repository}#readme`)
    assert.equal(manifest.bugs?.url, `${repository}/issues`)
    const readme = readFileSync(join(root, 'README.md'), 'utf8')
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root })
    const shipped = new Set((JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0]?.files.map((f) => f.path))
    const anchors = headingAnchors(readme)
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!)
    assert.ok(links.length > 5)
    for (const link of links) {
      if (link.startsWith('#')) assert.ok(anchors.has(link.slice(1)), `${link} is a heading of the README`)
      else if (link.startsWith(`${repository}/blob/main/`)) {
        const [file, anchor] = link.slice(`${repository}/blob/main/`.length).split('#') as [string, string | undefined]
        assert.ok(existsSync(join(root, file)), `${link} names a file of the repository`)
        if (anchor !== undefined) assert.ok(headingAnchors(readFileSync(join(root, file), 'utf8')).has(anchor), `${link}: a heading of ${file}`)
      }
      else if (!link.startsWith('https://')) assert.ok(shipped.has(link), `${link}: a relative link must name a shipped file (the package page has no others)`)
    }
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

    it('the installed worker-locks command, as cron runs it: which database and why, usage errors, drivers, --min-hold', async () => {
      // The app installs pg but not mysql2. Its knex is a copy, not a link: a linked knex would
      // find the repository's mysql2 next to itself.
      const { dir } = await app('command', readmeKnexfile())
      const modules = join(dir, 'node_modules')
      rmSync(join(modules, 'knex'))
      cpSync(join(root, 'node_modules', 'knex'), join(modules, 'knex'), { recursive: true })
      const knexManifest = JSON.parse(readFileSync(join(modules, 'knex', 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
      for (const dep of [...Object.keys(knexManifest.dependencies), 'pg']) {
        if (!existsSync(join(modules, dep))) symlinkSync(join(root, 'node_modules', dep), join(modules, dep), 'dir')
      }
      const env: NodeJS.ProcessEnv = { ...process.env }
      delete env.DATABASE_URL
      const command = async (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => {
        try {
          const { stdout, stderr } = await run('npx', ['--no-install', 'worker-locks', ...args], { cwd: dir, env: { ...env, ...extraEnv } })
          return { code: 0, stdout, stderr }
        } catch (error) {
          const e = error as { code: number; stdout: string; stderr: string }
          return { code: e.code, stdout: e.stdout, stderr: e.stderr }
        }
      }
      const files = () => readdirSync(dir).filter((f) => /sqlite|^postgres$|not a url/.test(f))
      const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version
      assert.deepEqual(await command(['--version']), { code: 0, stdout: `${version}\n`, stderr: '' })

      // Mistakes are usage errors in one line, and never files.
      for (const [args, extraEnv, said] of [
        [['status'], { DATABASE_URL: 'postgres' }, /^worker-locks: DATABASE_URL "postgres" is not a database URL; use postgres:\/\/…/],
        [['status', '--db', 'not a url'], {}, /^worker-locks: --db "not a url" is not a database URL/],
        [['status', '--db', 'postgres://app@/app'], {}, /^worker-locks: --db "postgres:\/\/app@\/app" is not a valid URL\n$/],
        [['status', '--db', 'postgres:///app'], {}, /^worker-locks: --db "postgres:\/\/\/app" names no host\n$/],
      ] as Array<[string[], NodeJS.ProcessEnv, RegExp]>) {
        const result = await command(args, extraEnv)
        assert.equal(result.code, 2, args.join(' '))
        assert.match(result.stderr, said)
        assert.equal(result.stderr.split('\n').length, 2, result.stderr)
      }
      assert.deepEqual(files(), [], 'no SQLite file made by a mistake')

      // A database that does not exist is not a missing table; a missing driver names its package.
      const noDatabase = await command(['status', '--db', 'postgres://postgres@127.0.0.1:5432/wl_no_such_database'])
      assert.equal(noDatabase.code, 1)
      assert.match(noDatabase.stderr, /database "wl_no_such_database" does not exist/)
      assert.doesNotMatch(noDatabase.stderr, /migrate/)
      const noDriver = await command(['status', '--db', 'mysql://root@127.0.0.1:3306/test'])
      assert.deepEqual([noDriver.code, noDriver.stderr], [1, 'worker-locks: the mysql2 package is not installed; npm install mysql2\n'])

      // Without --db or DATABASE_URL: this host's file, said on stderr; status names it on stdout.
      const implicit = 'worker-locks: no --db or DATABASE_URL: using the SQLite file ./worker-locks.sqlite on this host only\n'
      const missing = await command(['status'])
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, new RegExp(`^${implicit}worker-locks: .*run "worker-locks migrate" first`))
      assert.equal((await command(['migrate'])).code, 0)
      const status = await command(['status'])
      assert.deepEqual([status.stdout, status.stderr], [`database: sqlite:${join(dir, 'worker-locks.sqlite')}\nno locks\n`, implicit])

      // --min-hold: the next run of the slot skips, whichever host it is on.
      assert.equal((await command(['migrate', '--db', './app.sqlite'])).code, 0)
      const first = await command(['run', 'hourly', '--db', './app.sqlite', '--min-hold', '3600', '--', 'echo', 'report'])
      assert.deepEqual([first.code, first.stdout, first.stderr], [0, 'report\n', ''])
      const second = await command(['run', 'hourly', '--db', './app.sqlite', '--', 'echo', 'again'])
      assert.equal(second.code, 75)
      assert.match(second.stderr, /^worker-locks: lock "hourly" is kept by an earlier run's --min-hold for \d+\.\d s more; not running echo\n$/)
    })

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
        'declare const backoff: BackoffOptions, slowWaitWarningMs: number, durableReleases: boolean, preparedStatements: boolean, statementTimeoutMs: number\n'
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
