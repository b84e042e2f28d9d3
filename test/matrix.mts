// Registers suites once per reachable (database × strategy) pair, or once per database; reports
// missing databases loudly, and under CI as failures.
import { describe, it } from 'node:test'
import { inCI, resolveMatrix, type Database, type Target } from './targets.mjs'

const matrix = await resolveMatrix()

function reportMissing(title: string, only?: Database): void {
  for (const { database, reason } of matrix.missing) {
    if (only && database !== only) continue
    if (inCI) {
      it(`${database} ${title}: database is reachable (CI=true)`, () => {
        throw new Error(`${database} could not be reached and CI=true forbids skipping it: ${reason}`)
      })
    } else {
      console.warn(`\n*** SKIPPED ${database} (${title}): not reachable: ${reason}\n*** Set DIALECTS to choose databases; CI=true makes this a failure.\n`)
      it(`${database} ${title}: skipped, database not reachable`, { skip: reason }, () => undefined)
    }
  }
}

/** Registers `register` in a describe block for each (database × strategy) pair, or those of the `only` databases. */
export function forEachTarget(title: string, register: (target: Target) => void, only?: readonly Database[]): void {
  for (const database of only ?? [undefined]) reportMissing(title, database)
  for (const target of matrix.targets) {
    if (!only || only.includes(target.database)) describe(`${target.id} ${title}`, () => register(target))
  }
}

/** Registers `register` once per reachable database (or only `only`), for what does not depend on the strategy. */
export function forEachDatabase(title: string, register: (database: Database) => void, only?: Database): void {
  reportMissing(title, only)
  const databases = new Set(matrix.targets.map((t) => t.database))
  for (const database of databases) {
    if (!only || database === only) describe(`${database} ${title}`, () => register(database))
  }
}
