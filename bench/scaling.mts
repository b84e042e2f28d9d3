// How contention across processes scales with the number of processes waiting for one lock:
// every waiting process hears every release (LISTEN/NOTIFY on PostgreSQL) and tries once, so on
// a machine with few cores the hand-off slows as processes are added.
//
// Run: npm run build && node dist/bench/scaling.mjs [DATABASE] [SECONDS]
import { acrossProcesses } from './processes.mjs'
import { median, p99 } from './stats.mjs'
import type { Database } from '../test/targets.mjs'

const database = (process.argv[2] ?? 'postgres') as Database
const seconds = Number(process.argv[3] ?? 3)
console.log(`worker-locks, processes taking one lock in turn on ${database} (Node ${process.version}, ${seconds} s each)\n`)
console.log('| processes | critical sections / s | hand-off p50 ms | hand-off p99 ms | taken back by the releasing process | workers\' CPU ms per section |')
console.log('| --- | --- | --- | --- | --- | --- |')
for (const n of [2, 4, 8]) {
  const r = await acrossProcesses(database, 'worker-locks', seconds, n)
  console.log(`| ${n} | ${r.perSecond.toFixed(0)} | ${median(r.handoff).toFixed(2)} | ${p99(r.handoff).toFixed(2)} | ${(r.sameProcess * 100).toFixed(0)} % | ${r.cpuMsPerSection.toFixed(2)} |`)
}
