// One of the worker processes of the across-process contention benchmark (bench/processes.mts).
// Connects, says "ready", and on "go END" takes the contended lock over and over until the wall
// clock passes END, then prints one JSON line: when it acquired and when it began releasing,
// on the wall clock (comparable across processes on one machine), and the CPU time it used.
//
// Environment: WL_DATABASE, WL_TABLE, WL_SQLITE_FILE, WL_CONTENDER (worker-locks | verrou).
import { createInterface } from 'node:readline'
import { Verrou } from '@verrou/core'
import { knexStore } from '@verrou/core/drivers/knex'
import { LockStore } from '../src/index.js'
import { connect, type Database } from '../test/targets.mjs'

const wallNow = (): number => performance.timeOrigin + performance.now()
const env = process.env
const knex = connect(env.WL_DATABASE as Database, { poolMax: 2 })
const table = env.WL_TABLE ?? ''
let session: () => Promise<() => Promise<void>>
let close: () => Promise<void>
if (env.WL_CONTENDER === 'verrou') {
  const verrou = new Verrou({ default: 'db', stores: { db: { driver: knexStore({ connection: knex, tableName: table, autoCreateTable: false }) } } })
  session = async () => {
    const lock = verrou.createLock('contended', '2m')
    await lock.acquire()
    return () => lock.release()
  }
  close = async () => undefined
} else {
  const store = new LockStore(knex, { tableName: table, lockTimeoutMs: 120_000, renewalIntervalMs: 30_000 })
  await store.init()
  session = async () => {
    const lock = await store.acquireLock('contended')
    return () => lock.release()
  }
  close = () => store.close()
}

const acquiredAt: number[] = []
const releasingAt: number[] = []
let cpuAtStart = process.cpuUsage()
const lines = createInterface({ input: process.stdin })
console.log('ready')
for await (const line of lines) {
  const end = Number(/^go ([\d.]+)$/.exec(line)?.[1])
  if (!Number.isFinite(end)) continue
  cpuAtStart = process.cpuUsage()
  while (wallNow() < end) {
    const release = await session()
    acquiredAt.push(wallNow())
    releasingAt.push(wallNow())
    await release()
  }
  break
}
lines.close()
const cpu = process.cpuUsage(cpuAtStart)
await close()
await knex.destroy()
console.log(JSON.stringify({ acquiredAt, releasingAt, cpuMs: (cpu.user + cpu.system) / 1000 }))
