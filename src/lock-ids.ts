// The ids of locks among a store's waits, wake-ups and held locks: one string per lock.

/** A plain lock's id among waits and wake-ups (names never contain NUL, so this join is unambiguous). */
export const lockId = (name: string, key: string): string => `${name}\0${key}`

/** A read/write key's id: never a plain lock's, which has no leading NUL. */
export const readWriteId = (name: string, key: string): string => `\0rw\0${name}\0${key}`

/** The lock an id names: the inverse of {@link lockId} and {@link readWriteId}. */
export function lockOfId(id: string): { readonly readWrite: boolean; readonly name: string; readonly key: string } {
  const readWrite = isReadWriteId(id)
  const rest = readWrite ? id.slice(4) : id
  const split = rest.indexOf('\0')
  return { readWrite, name: rest.slice(0, split), key: rest.slice(split + 1) }
}

/** Whether `id` is a read/write key's. */
export const isReadWriteId = (id: string): boolean => id.startsWith('\0rw\0')
