// Asking the server, once per store, what it can run: the acquire strategy, and whether the lock
// table is there with every migrated column (a missing table is said once, clearly, and not
// retried by waiters).
import type { Knex } from 'knex'
import type { Dialect, ServerFacts, Strategy } from '../dialects/index.js'
import { UnsupportedDatabaseError } from './errors.js'
import type { LockTable } from './lock-table.js'
import { databaseCall, type ServerPlan } from './store-context.js'
import type { StrategyOption } from './validate.js'

/** The plan for a store on `table`, asked of the server. */
export async function askServer(knex: Knex, dialect: Dialect, table: LockTable, tableName: string, option: StrategyOption): Promise<ServerPlan> {
  const on = { tableName, dialect }
  const facts = await databaseCall(on, 'ask the database for its version', () => dialect.detect(knex))
  if (facts.unsupported) throw new UnsupportedDatabaseError(`worker-locks cannot run on ${facts.server}: ${facts.unsupported}.`)
  const strategy = strategyFor(facts, option)
  // A table that is missing or not migrated is said here, once (a LockTableError), before any lock work.
  await databaseCall(on, 'look at the lock table', () => table.checkColumns())
  return { strategy, facts }
}

function strategyFor(facts: ServerFacts, option: StrategyOption): Strategy {
  if (option === 'emulated') return 'emulated'
  if (facts.native) return 'native'
  if (option === 'native') {
    throw new UnsupportedDatabaseError(`strategy 'native' cannot run on ${facts.server}: ${facts.reason}. Use strategy 'auto' or 'emulated'.`)
  }
  return 'emulated'
}
