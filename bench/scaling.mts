// How contention across processes scales with the number of processes waiting for one lock. On
// PostgreSQL every waiting process hears every release and tries once, so on a machine with few
// cores the hand-off slows as processes are added.
//
// Run: npm run build && node dist/bench/scaling.mjs [DATABASE] [SECONDS] [WORK_MS] [--before=DIR]
// (WORK_MS: how long each section holds the lock; --before: also the earlier build's library in
// the same workers, on PostgreSQL with and without its waiting line)
import { resolve } from 'node:path'
import { acrossProcesses, type ProcessContender } from './processes.mjs'
import { median, p99 } from './stats.mjs'
import type { Database } from '../test/targets.mjs'

const [database = 'postgres', seconds = 3, workMs = 0] = process.argv.slice(2).filter((a) => !a.startsWith('--')).map((a, i) => (i === 0 ? a : Number(a))) as [Database?, number?, number?]
const beforeArg = process.argv.find((a) => a.startsWith('--before='))?.slice('--before='.length)
if (beforeArg) process.env.WL_BENCH_BEFORE = resolve(beforeArg)
const contenders: ProcessContender[] = ['worker-locks', ...(beforeArg ? ['worker-locks before' as const, ...(database === 'postgres' ? ['worker-locks before, no line' as const] : [])] : [])]
console.log(`Processes taking one lock in turn on ${database}, holding it ${workMs} ms each time (Node ${process.version}, ${seconds} s each)\n`)
console.log('| processes | contender | critical sections / s | hand-off p50 ms | hand-off p99 ms | taken back by the releasing process | to another process p50 ms | round trip under this load ms | workers\' CPU ms per section |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const n of [2, 4, 8]) {
  for (const contender of contenders) {
    const r = await acrossProcesses(database, contender, seconds, n, workMs)
    console.log(`| ${n} | ${contender} | ${r.perSecond.toFixed(0)} | ${median(r.handoff).toFixed(2)} | ${p99(r.handoff).toFixed(2)} | ${(r.sameProcess * 100).toFixed(0)} % | ${median(r.toOther).toFixed(2)} | ${r.roundTripMs.toFixed(2)} | ${r.cpuMsPerSection.toFixed(2)} |`)
  }
}
