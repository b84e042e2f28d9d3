// Asking the server, once per store, what it can run: the acquire strategy, and whether the lock
// table is there with every migrated column (a missing table is said once, clearly, and not
// retried by waiters).
import type { Knex } from 'knex'
import type { Dialect, ServerFacts, Strategy } from '../dialects/index.js'
import { LockTableError, UnsupportedDatabaseError } from './errors.js'
import type { LockTable } from './lock-table.js'
import { databaseCall, type ServerPlan } from './store-context.js'
import type { StrategyOption } from './validate.js'

/** The plan for a store on `table`, asked of the server. */
export async function askServer(knex: Knex, dialect: Dialect, table: LockTable, tableName: string, option: StrategyOption): Promise<ServerPlan> {
  const facts = await databaseCall(tableName, 'ask the database for its version', () => dialect.detect(knex))
  if (facts.unsupported) throw new UnsupportedDatabaseError(`worker-locks cannot run on ${facts.server}: ${facts.unsupported}.`)
  const strategy = strategyFor(facts, option)
  await table.checkColumns().catch((error: unknown) => {
    if (dialect.isMissingSchema(error)) throw new LockTableError(tableName, error)
    return databaseCall(tableName, 'look at the lock table', () => Promise.reject(error))
  })
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
