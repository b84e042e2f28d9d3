export { LockStore, type LockInfo, type TryWithLockResult } from './lock-store.js'
export type { LockedFunction, TryWithLockOptions, WithLockOptions } from './with-lock.js'
export type { LockEventMap, LockEventName, LockEventListener } from './events.js'
export { Lock, type LockMode, type ReleaseOptions } from './lock.js'
export { MultiLock } from './multi-lock.js'
export { ManualClock, systemClock, type Clock, type TimerHandle } from './clock.js'
export {
  LockError, InvalidLockNameError, UnsupportedDatabaseError, LockStoreClosedError, LockDatabaseError, LockLostError, LockTimeoutError, LockTableError,
  ReadOnlyDatabaseError,
  type LockErrorCode, type LockLossReason,
} from './errors.js'
export type { Logger, LogLevel } from './logger.js'
export type { BackoffOptions } from './backoff.js'
export {
  MAX_NAME_LENGTH, type LockStoreOptions, type ClockOption, type StrategyOption, type WaitOptions, type LockFilter,
  type MultiLockPart, type MultiLockWaitOptions, type ReadWriteOptions, type ReadWriteWaitOptions,
} from './validate.js'
export {
  createLockTable, dropLockTable, migrationsDirectory, workerLocksMigrationSource,
  type LockTableOptions, type WorkerLocksMigration, type WorkerLocksMigrationSourceOptions,
} from './schema.js'
export type { DialectName, Strategy } from '../dialects/index.js'
export { releaseOnSignals, type ReleaseOnSignalsOptions } from './shutdown.js'
