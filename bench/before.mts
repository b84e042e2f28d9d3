// An earlier build to measure against in the same run: `npm run bench -- --before=DIR`, DIR a
// checkout of an earlier version with `dist/` built (bench/main.mts puts it in WL_BENCH_BEFORE).
// Sections 1, 2, 2b and 7 then run that build's LockStore, on a table its own createLockTable made
// (its schema, its statements), as "worker-locks before", in this build's harness.
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

/** The directory of the earlier build, if one was given (read when asked: a caller may set it after importing this). */
export const beforeDir = (): string | undefined => process.env.WL_BENCH_BEFORE || undefined

/** The earlier build's library entry point, for a worker that loads it instead of this build's (WL_LIBRARY). */
export const beforeLibrary = (): string => join(beforeDir() ?? '', 'dist', 'src', 'index.js')

/** The earlier build's library, if one was given. */
export async function beforeBuild(): Promise<typeof import('../src/index.js') | undefined> {
  return beforeDir() ? await import(pathToFileURL(beforeLibrary()).href) as typeof import('../src/index.js') : undefined
}
