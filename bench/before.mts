// An earlier build to measure against in the same run: `npm run bench -- --before=DIR`, DIR a
// checkout of an earlier version with `dist/` built (bench/main.mts puts it in WL_BENCH_BEFORE).
// Sections 1 and 7 then run that build's LockStore, on a table its own createLockTable made (its
// schema, its statements), as "worker-locks before".
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

/** The directory of the earlier build, if one was given. */
export const beforeDir: string | undefined = process.env.WL_BENCH_BEFORE || undefined

/** The earlier build's library (its `dist/src/index.js`), if one was given. */
export async function beforeBuild(): Promise<typeof import('../src/index.js') | undefined> {
  return beforeDir ? await import(pathToFileURL(join(beforeDir, 'dist', 'src', 'index.js')).href) as typeof import('../src/index.js') : undefined
}

/** The earlier build's many-keys worker process. */
export const beforeWorker = (): string => join(beforeDir ?? '', 'dist', 'bench', 'process-worker.mjs')
