import type { Knex } from 'knex'
import type { AcquireRequest, Dialect, ServerFacts } from './dialect.js'
import { acquireEmulated } from './emulated.js'

/** The two ways of taking a lock; see `Dialect.acquireNative` and `acquireEmulated`. */
export type Strategy = 'native' | 'emulated'

// A loser of a deadlock or serialization failure retries at once: the winner has committed by
// then, so the retry sees its row and is refused cleanly (or takes a lock freed meanwhile).
const CONFLICT_ATTEMPTS = 3

/**
 * One acquisition attempt with the chosen strategy. Resolves the new fence if our row was
 * written, else `null`. Losing a race is `null`, never an error, even where the server reports
 * it as a deadlock or a serialization failure (a session at SERIALIZABLE, say); other errors reject.
 */
export async function acquire(
  knex: Knex, dialect: Dialect, facts: ServerFacts, strategy: Strategy, request: AcquireRequest,
): Promise<bigint | null> {
  for (let attempt = 1; ; attempt++) {
    try {
      return strategy === 'native'
        ? await dialect.acquireNative(knex, request)
        : await acquireEmulated(knex, dialect, facts, request)
    } catch (error) {
      if (!dialect.isTransientConflict(error)) throw error
      if (attempt >= CONFLICT_ATTEMPTS) return null
    }
  }
}
