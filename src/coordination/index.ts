import type { Knex } from 'knex'
import type { Dialect } from '../../dialects/index.js'
import type { Clock } from '../clock.js'
import type { LogLevel } from '../logger.js'
import type { Coordination } from './coordination.js'
import { LocalCoordination } from './local.js'
import { PostgresCoordination } from './postgres.js'

export type { Coordination } from './coordination.js'

/** The coordination a store on `dialect` uses: across processes where the database announces releases, else in this process. */
export function coordinationFor(o: {
  knex: Knex; dialect: Dialect; tableName: string; timers: Clock; monotonicNow: () => number; maxBackoffMs: number
  log: (level: LogLevel, details: object, message: string) => void; wake: (id: string) => boolean
}): Coordination {
  const notifications = o.dialect.notifications
  return notifications ? new PostgresCoordination({ ...o, notifications }) : new LocalCoordination(o.tableName, o.wake)
}
