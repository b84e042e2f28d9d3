// One of the worker processes of the across-process contention benchmark (bench/processes.mts).
// Connects, says "ready", and on "go END" takes the contended lock over and over until the wall
// clock passes END, then prints one JSON line: when it acquired and when it began releasing,
// on the wall clock (comparable across processes on one machine), and the CPU time it used.
//
// Environment: WL_DATABASE, WL_TABLE, WL_SQLITE_FILE, WL_CONTENDER (worker-locks | verrou | server
// | bare | raw), WL_KEYS, WL_WORK_MS (how long each section holds the lock: a timer awaited, as a
// job's I/O; default 0), WL_LIBRARY (another build's dist/src/index.js to take LockStore from).
// "server" is the floor: the database's own lock queue on a dedicated connection
// (pg_advisory_lock, MySQL's GET_LOCK), which wakes exactly the next waiter with no client
// round trip of its own; worker-locks' rows cannot beat it.
// With WL_KEYS (the many-keys benchmark, bench/many-keys.mts), each section takes a random one of
// that many keys without waiting: worker-locks' tryAcquireLock, "raw", worker-locks' statements on
// the bare driver, or "bare", the bare two-statement cycle on the bare-cycle table WL_TABLE (both
// in bench/raw.mts). A refused attempt is counted and the loop goes on with another key.
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { pathToFileURL } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { bareContender, newToken, rawContender } from './raw.mjs'
import { connect, MYSQL_URL, POSTGRES_URL, type Database } from '../test/targets.mjs'
import { waitForGo } from './child.mjs'

const wallNow = (): number => performance.timeOrigin + performance.now()
const env = process.env
const knex = connect(env.WL_DATABASE as Database, { poolMax: 2 })
const table = env.WL_TABLE ?? ''
const keys = env.WL_KEYS === undefined ? undefined : Number(env.WL_KEYS)
const workMs = Number(env.WL_WORK_MS ?? 0)
/** Takes the lock of `key` (waiting, unless WL_KEYS is set) and resolves with its release; null when refused. */
let session: (key: string) => Promise<(() => Promise<void>) | null>
let close: () => Promise<void>
if (env.WL_CONTENDER === 'bare' || env.WL_CONTENDER === 'raw') {
  const driver = await (env.WL_CONTENDER === 'bare' ? bareContender : rawContender)(env.WL_DATABASE as Database, table, 120_000)
  session = async (key) => {
    const t = newToken()
    if (!(await driver.acquire('many-keys', key, t))) return null
    return () => driver.release('many-keys', key, t)
  }
  close = () => driver.close()
} else if (env.WL_CONTENDER === 'verrou') {
  const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: table, autoCreateTable: false }) } } })
  session = async () => {
    const lock = verrou.createLock('contended', '2m')
    // verrou's knex store can lose a MySQL deadlock (1213) and throw; trying again is what a
    // user of it would have to do.
    for (;;) {
      try {
        await lock.acquire()
        break
      } catch (error) {
        if ((error as { errno?: number }).errno !== 1213) throw error
      }
    }
    return () => lock.release()
  }
  close = async () => undefined
} else if (env.WL_CONTENDER === 'server' && env.WL_DATABASE === 'postgres') {
  const client = new pg.Client({ connectionString: POSTGRES_URL })
  await client.connect()
  // A key derived from the table name, so runs sharing the server do not meet.
  const key = [...table].reduce((h, c) => (h * 31 + c.charCodeAt(0)) | 0, 7)
  session = async () => {
    await client.query({ name: 'lock', text: 'SELECT pg_advisory_lock($1)', values: [key] })
    return async () => { await client.query({ name: 'unlock', text: 'SELECT pg_advisory_unlock($1)', values: [key] }) }
  }
  close = () => client.end()
} else if (env.WL_CONTENDER === 'server' && env.WL_DATABASE === 'mysql') {
  const connection = await mysql.createConnection(MYSQL_URL)
  session = async () => {
    await connection.execute('SELECT GET_LOCK(?, -1)', [table])
    return async () => { await connection.execute('SELECT RELEASE_LOCK(?)', [table]) }
  }
  close = () => connection.end()
} else {
  const { LockStore } = await import(env.WL_LIBRARY ? pathToFileURL(env.WL_LIBRARY).href : '../src/index.js') as typeof import('../src/index.js')
  const store = new LockStore(knex, { tableName: table, lockTimeoutMs: 120_000, renewalIntervalMs: 30_000 })
  await store.init()
  session = async (key) => {
    const lock = keys === undefined ? await store.acquireLock('contended', key) : await store.tryAcquireLock('many-keys', key)
    return lock ? () => lock.release() : null
  }
  close = () => store.close()
}

const acquiredAt: number[] = []
const releasingAt: number[] = []
let refused = 0
const end = await waitForGo()
const cpuAtStart = process.cpuUsage()
while (wallNow() < end) {
  const release = await session(keys === undefined ? '' : `k${Math.floor(Math.random() * keys)}`)
  if (!release) { refused++; continue }
  acquiredAt.push(wallNow())
  if (workMs > 0) await sleep(workMs)
  releasingAt.push(wallNow())
  await release()
}
const cpu = process.cpuUsage(cpuAtStart)
await close()
await knex.destroy()
console.log(JSON.stringify({ acquiredAt, releasingAt, refused, cpuMs: (cpu.user + cpu.system) / 1000 }))
