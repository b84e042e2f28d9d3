export { LockStore, type LockInfo, type TryWithLockResult } from './lock-store.js'
export type { LockedFunction } from './with-lock.js'
export type { LockEventMap, LockEventName, LockEventListener } from './events.js'
export { Lock, type LockMode } from './lock.js'
export { MultiLock } from './multi-lock.js'
export type { MultiLockPart, MultiLockWaitOptions, ReadWriteOptions, ReadWriteWaitOptions } from './read-write-options.js'
export type { ReleaseOptions, TryWithLockOptions, WithLockOptions } from './keeping.js'
export { ManualClock, systemClock, type Clock, type TimerHandle } from './clock.js'
export {
  LockError, InvalidLockNameError, UnsupportedDatabaseError, LockStoreClosedError, LockDatabaseError, LockLostError, LockTimeoutError, LockTableError,
  type LockErrorCode, type LockLossReason,
} from './errors.js'
export type { Logger, LogLevel } from './logger.js'
export { MAX_NAME_LENGTH, type LockStoreOptions, type ClockOption, type StrategyOption, type WaitOptions, type LockFilter } from './validate.js'
export type { BackoffOptions } from './backoff.js'
export {
  createLockTable, dropLockTable, migrationsDirectory, workerLocksMigrationSource,
  type LockTableOptions, type WorkerLocksMigration, type WorkerLocksMigrationSourceOptions,
} from './schema.js'
export type { DialectName, Strategy } from '../dialects/index.js'
export { releaseOnSignals, type ReleaseOnSignalsOptions } from './shutdown.js'
