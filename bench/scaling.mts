// How contention across processes scales with the number of processes waiting for one lock. On
// PostgreSQL every waiting process hears every release and tries once, so on a machine with few
// cores the hand-off slows as processes are added.
//
// Run: npm run build && node dist/bench/scaling.mjs [DATABASE] [SECONDS]
import { acrossProcesses, type ProcessContender } from './processes.mjs'
import { median, p99 } from './stats.mjs'
import type { Database } from '../test/targets.mjs'

const database = (process.argv[2] ?? 'postgres') as Database
const seconds = Number(process.argv[3] ?? 3)
const contenders: ProcessContender[] = ['worker-locks']
console.log(`Processes taking one lock in turn on ${database} (Node ${process.version}, ${seconds} s each)\n`)
console.log('| processes | contender | critical sections / s | hand-off p50 ms | hand-off p99 ms | taken back by the releasing process | to another process p50 ms | round trip under this load ms | workers\' CPU ms per section |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const n of [2, 4, 8]) {
  for (const contender of contenders) {
    const r = await acrossProcesses(database, contender, seconds, n)
    console.log(`| ${n} | ${contender} | ${r.perSecond.toFixed(0)} | ${median(r.handoff).toFixed(2)} | ${p99(r.handoff).toFixed(2)} | ${(r.sameProcess * 100).toFixed(0)} % | ${median(r.toOther).toFixed(2)} | ${r.roundTripMs.toFixed(2)} | ${r.cpuMsPerSection.toFixed(2)} |`)
  }
}
