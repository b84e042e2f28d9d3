import type { Knex } from 'knex'
import type { AcquireRequest, Dialect, ServerFacts } from './dialect.js'
import { acquireEmulated } from './emulated.js'

/** The two ways of taking a lock; see `Dialect.acquireNative` and `acquireEmulated`. */
export type Strategy = 'native' | 'emulated'

// A loser of a deadlock or serialization failure retries at once: the winner has committed by
// then, so the retry sees its row and is refused cleanly (or takes a lock freed meanwhile).
const CONFLICT_ATTEMPTS = 3

/**
 * Runs `run`, running it again (up to `attempts` times in all) while the database reports that
 * it lost a race: a deadlock or a serialization failure. When the attempts are used up,
 * `exhausted` decides the outcome. Every other error rejects at once.
 */
export function retryingConflicts<T>(
  dialect: Dialect, attempts: number, run: () => Promise<T>, exhausted: (error: unknown) => T,
): Promise<T> {
  // Chained rather than an async loop: the common first attempt adds no promise of its own.
  const attempt = (n: number): Promise<T> => run().catch((error: unknown) => {
    if (!dialect.isTransientConflict(error)) throw error
    return n >= attempts ? exhausted(error) : attempt(n + 1)
  })
  return attempt(1)
}

/**
 * One acquisition attempt with the chosen strategy. Resolves the new fence if our row was
 * written, else `null`. Losing a race is `null`, never an error, even where the server reports
 * it as a deadlock or a serialization failure (a session at SERIALIZABLE, say); other errors reject.
 */
export function acquire(
  knex: Knex, dialect: Dialect, facts: ServerFacts, strategy: Strategy, request: AcquireRequest,
): Promise<bigint | null> {
  return retryingConflicts(dialect, CONFLICT_ATTEMPTS, () => strategy === 'native'
    ? dialect.acquireNative(knex, request, facts)
    : acquireEmulated(knex, dialect, facts, request), () => null)
}
