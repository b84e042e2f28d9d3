// Registers a suite once per reachable (database × strategy) pair; reports missing databases
// loudly, and under CI as failures.
import { describe, it } from 'node:test'
import { inCI, resolveMatrix, type Database, type Target } from './targets.mjs'

const matrix = await resolveMatrix()

/** Calls `register` inside a describe block for each pair, and accounts for missing databases. */
export function forEachTarget(title: string, register: (target: Target) => void, only?: Database): void {
  for (const { database, reason } of matrix.missing) {
    if (only && database !== only) continue
    if (inCI) {
      it(`${database}: database is reachable (CI=true)`, () => {
        throw new Error(`${database} could not be reached and CI=true forbids skipping it: ${reason}`)
      })
    } else {
      console.warn(`\n*** SKIPPED ${database} (${title}): not reachable: ${reason}\n*** Set DIALECTS to choose databases; CI=true makes this a failure.\n`)
      it(`${database}: skipped, database not reachable`, { skip: reason }, () => undefined)
    }
  }
  for (const target of matrix.targets) {
    if (only && target.database !== only) continue
    describe(`${target.id} ${title}`, () => register(target))
  }
}
