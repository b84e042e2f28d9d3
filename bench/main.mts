// npm run bench [-- --smoke] [-- --only=uncontended|contention|read-write|many-keys|wake] [-- --before=DIR]:
// every benchmark (or only section 1, 2 and 2b, 6, 7 or 8), one process per database, printed as
// markdown; with --before, an earlier version's built checkout runs as one more contender in
// sections 1, 2b and 7. Ratios within one run are the figure; absolute times on a shared machine
// are noise.
import { execFileSync } from 'node:child_process'
import { join, resolve } from 'node:path'
import { resolveMatrix } from '../test/targets.mjs'
import type { ManyKeysFigures } from './many-keys.mjs'
import type { RwFigures } from './read-write.mjs'
import type { WakeFigures } from './wake-latency.mjs'

const smoke = process.argv.includes('--smoke')
const only = process.argv.find((a) => a.startsWith('--only='))
// --before=DIR: an earlier version's checkout, built, measured as "worker-locks before" in sections 1, 2b and 7.
const beforeArg = process.argv.find((a) => a.startsWith('--before='))?.slice('--before='.length)
if (beforeArg) process.env.WL_BENCH_BEFORE = resolve(beforeArg)
const script = join(import.meta.dirname, 'database.mjs')

interface Summary { median: number; p99: number }
// With --only, only `database` and that section's field.
interface Result {
  database: string
  roundTripMs: number
  uncontended?: Record<string, Summary>
  contention?: Record<string, Summary & { perSecond: number }>
  processes?: Record<string, Summary & { perSecond: number; toOther: number; sameProcess: number; cpuMsPerSection: number; roundTripMs: number | null }>
  renewal?: Record<string, { statements: number; batchedMs: number; perLockMs: number }>
  crowd?: { waiters: number; wallMs: number; cpuMs: number }
  bytesPerLock?: number
  readWrite?: Record<string, { readWrite: RwFigures; plain: RwFigures }>
  manyKeys?: Record<string, ManyKeysFigures>
  wake?: Record<string, WakeFigures>
}

const { targets, missing } = await resolveMatrix()
for (const m of missing) console.error(`skipped ${m.database}: ${m.reason}`)
const results: Result[] = []
for (const database of new Set(targets.map((t) => t.database))) {
  const output = execFileSync(process.execPath, ['--expose-gc', script, database, ...(smoke ? ['--smoke'] : []), ...(only ? [only] : [])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  results.push(JSON.parse(output.trim().split('\n').pop() ?? '{}') as Result)
}

const f = (n: number, digits = 1): string => n.toFixed(digits)
console.log(`# worker-locks benchmarks${smoke ? ' (smoke mode: tiny samples, numbers mean nothing)' : ''}\n`)
console.log(`Node ${process.version}, ${new Date().toISOString().slice(0, 10)}\n`)
if (results.some((r) => r.uncontended)) printUncontended()
if (results.some((r) => r.processes)) printContention()
if (!only) printRest()
if (results.some((r) => r.readWrite)) printReadWrite()
if (results.some((r) => r.manyKeys)) printManyKeys()
if (results.some((r) => r.wake)) printWake()

function printUncontended(): void {
  console.log('## 1. Uncontended tryAcquireLock + release (µs)\n')
  console.log('"bare": the minimal two-statement cycle on the bare driver (native upsert, token-guarded DELETE, no fence; prepared statements), the denominator of every ratio. "raw": worker-locks\' own statements on the bare driver (fences included; on PostgreSQL the release\'s NOTIFY too). Fencing\'s cost: raw − bare.\n')
  console.log('"worker-locks" releases without waiting for the disk where the database allows it (PostgreSQL); "durable": with `durableReleases: true`; "prepared": with `preparedStatements: true` (PostgreSQL: named statements; the same statements elsewhere).\n')
  console.log('| database | bare median | raw (same statements) median | dialect layer median | worker-locks median | worker-locks durable median | worker-locks prepared median | verrou median | bare p99 | worker-locks p99 | verrou p99 | raw / bare | dialect layer / bare | worker-locks / bare | worker-locks durable / bare | worker-locks prepared / bare | verrou / bare | fencing\'s cost µs | fencing\'s cost / worker-locks median |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    const u = r.uncontended ?? {}
    const bare = u.bare, raw = u.raw, dl = u['dialect layer'], wl = u['worker-locks'], wd = u['worker-locks, durable releases'], wp = u['worker-locks, prepared statements'], v = u.verrou
    if (!bare || !raw || !dl || !wl || !wd || !wp || !v) continue
    const fencing = raw.median - bare.median
    console.log(`| ${r.database} | ${f(bare.median)} | ${f(raw.median)} | ${f(dl.median)} | ${f(wl.median)} | ${f(wd.median)} | ${f(wp.median)} | ${f(v.median)} | ${f(bare.p99)} | ${f(wl.p99)} | ${f(v.p99)} | ${f(raw.median / bare.median, 2)}× | ${f(dl.median / bare.median, 2)}× | ${f(wl.median / bare.median, 2)}× | ${f(wd.median / bare.median, 2)}× | ${f(wp.median / bare.median, 2)}× | ${f(v.median / bare.median, 2)}× | ${f(fencing)} | ${f((fencing / wl.median) * 100, 0)} % |`)
  }
  console.log('\nRead/write locks, uncontended `tryAcquireReadWriteLock` + release against `tryAcquireLock` + release, same run:\n')
  console.log('| database | plain median | write side median | read side median | write / plain | read / plain | before: write / plain |')
  console.log('| --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    const u = r.uncontended ?? {}
    const wl = u['worker-locks'], w = u['worker-locks, read/write (write)'], rd = u['worker-locks, read/write (read)']
    const before = u['worker-locks before'], beforeW = u['worker-locks before, read/write (write)']
    if (!wl || !w || !rd) continue
    console.log(`| ${r.database} | ${f(wl.median)} | ${f(w.median)} | ${f(rd.median)} | ${f(w.median / wl.median, 2)}× | ${f(rd.median / wl.median, 2)}× | ${before && beforeW ? `${f(beforeW.median / before.median, 2)}×` : '—'} |`)
  }
  if (!results.some((r) => r.uncontended?.['worker-locks before'])) return
  console.log(`\nBefore and after, same run ("before": the build in ${process.env.WL_BENCH_BEFORE}, on a table its own createLockTable made):\n`)
  console.log('| database | bare median | worker-locks before median | worker-locks median | before / bare | **after / bare** |')
  console.log('| --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    const u = r.uncontended ?? {}
    const bare = u.bare, wl = u['worker-locks'], before = u['worker-locks before']
    if (bare && wl && before) console.log(`| ${r.database} | ${f(bare.median)} | ${f(before.median)} | ${f(wl.median)} | ${f(before.median / bare.median, 2)}× | **${f(wl.median / bare.median, 2)}×** |`)
  }
}

function printManyKeys(): void {
  console.log('\n## 7. Many keys: 8 worker processes on 1,000 keys\n')
  console.log('Each process loops: a random key, `tryAcquireLock` + `release` (bare: its upsert + DELETE; raw: worker-locks\' statements on the bare driver), no waiting; a refused attempt is counted and the loop goes on. Sections counted while every process ran; the contenders take turns, in reverse order the second time. Row-lock waits: MariaDB\'s global `Innodb_row_lock_waits` / `Innodb_row_lock_time` during the turns (other clients of the server count too).\n')
  console.log('| database | contender | sections / s | / bare | refused per section | workers\' CPU ms per section | InnoDB row-lock waits per 1,000 sections | row-lock ms per section |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    const bare = r.manyKeys?.bare
    for (const [name, x] of Object.entries(r.manyKeys ?? {})) {
      const locks = x.rowLockWaitsPer1000 === null ? '— | —' : `${f(x.rowLockWaitsPer1000)} | ${f(x.rowLockMsPerSection ?? NaN, 3)}`
      console.log(`| ${r.database} | ${name} | ${f(x.perSecond, 0)} | ${bare ? `${f(x.perSecond / bare.perSecond, 2)}×` : '—'} | ${f(x.refusedPerSection, 4)} | ${f(x.cpuMsPerSection, 2)} | ${locks} |`)
    }
  }
}

function printContention(): void {
  console.log('\n## 2. Contention: 8 workers in one process on one key\n')
  console.log('| database | contender | critical sections / s | hand-off p50 ms | hand-off p99 ms | p50 in raw writes |')
  console.log('| --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    for (const [name, c] of Object.entries(r.contention ?? {})) {
      console.log(`| ${r.database} | ${name} | ${f(c.perSecond, 0)} | ${f(c.median, 2)} | ${f(c.p99, 2)} | ${f(c.median / r.roundTripMs)} |`)
    }
  }

  console.log('\n## 2b. Contention: 8 worker processes on one key\n')
  console.log('"to another process": hand-offs in which another process took the lock. A round trip is a `SELECT 1` timed during the run, on a connection idle for 20 ms first.\n')
  console.log('| database | contender | critical sections / s | hand-off p50 ms | hand-off p99 ms | taken back by the releasing process | to another process p50 ms | round trip under this load ms | to another process p50 in round trips | workers\' CPU ms per section |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    for (const [name, c] of Object.entries(r.processes ?? {})) {
      // NaN (SQLite: no round trips) arrives as null through JSON.
      const rt = c.roundTripMs ?? NaN
      const trips = Number.isNaN(rt) ? '—' : f(rt, 2)
      const inTrips = Number.isNaN(rt) ? '—' : f(c.toOther / rt)
      console.log(`| ${r.database} | ${name} | ${f(c.perSecond, 0)} | ${f(c.median, 2)} | ${f(c.p99, 2)} | ${f(c.sameProcess * 100, 0)} % | ${f(c.toOther, 2)} | ${trips} | ${inTrips} | ${f(c.cpuMsPerSection, 2)} |`)
    }
  }

}

function printRest(): void {
  console.log('\n## 3. One renewal tick\n')
  console.log('| database | held locks | statements | batched ms | per-lock statements ms | per-lock / batched |')
  console.log('| --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    for (const [n, x] of Object.entries(r.renewal ?? {})) {
      console.log(`| ${r.database} | ${n} | ${x.statements} | ${f(x.batchedMs, 2)} | ${f(x.perLockMs, 2)} | ${f(x.perLockMs / x.batchedMs)}× |`)
    }
  }

  console.log('\n## 4. Waiters on one key, served one after another\n')
  console.log('| database | waiters | wall ms | CPU ms |')
  console.log('| --- | --- | --- | --- |')
  for (const r of results) if (r.crowd) console.log(`| ${r.database} | ${r.crowd.waiters} | ${f(r.crowd.wallMs)} | ${f(r.crowd.cpuMs)} |`)

  console.log('\n## 5. Memory per held lock\n')
  console.log('| database | bytes of heap per held lock |')
  console.log('| --- | --- |')
  for (const r of results) if (r.bytesPerLock !== undefined) console.log(`| ${r.database} | ${f(r.bytesPerLock, 0)} |`)
  console.log(`\nA raw write (one committed acquiring statement) takes ${results.map((r) => `${f(r.roundTripMs, 3)} ms on ${r.database}`).join(', ')}.`)
}

function printReadWrite(): void {
  const errors = (x: RwFigures): string => {
    const all = { ...x.queryErrors, ...x.failures }
    return Object.keys(all).length === 0 ? 'none' : Object.entries(all).map(([k, n]) => `${k} × ${n}`).join(', ')
  }
  console.log(`\n## 6. Read/write locks: 8 worker processes, 70 % readers / 30 % writers\n`)
  console.log('Each process loops: a random key, read or write, `acquireReadWriteLock` (waiting, new readers blocked by a waiting writer), 0.2 ms of busy work, release. "plain": the same processes and keys with `acquireLock` for every section. Waits run from calling acquire to holding; a wait still going 1 s after the end (0.5 s in smoke mode) is cut and counts with the length it had reached. Checked: no writer (no plain holder) overlaps another holder of its key, on the machine\'s monotonic clock or in fence order. Failed statements are counted at the driver, those the library retries or counts as refused included (deadlocks: 40P01 on PostgreSQL, 1213 on MySQL; serialization failures: 40001).\n')
  console.log('| database | keys | read/write sections / s | plain sections / s | read/write / plain | writer wait p50 ms | writer wait p99 ms | reader wait p50 ms | reader wait p99 ms | plain wait p50 / p99 ms | most readers at once | refused attempts per section, rw / plain | workers\' CPU ms per section, rw / plain | waits cut at the end, rw writers + readers / plain | exclusivity broken (clock / fence order) | failed statements by code, failed waits: rw (plain) |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  const samples: string[] = []
  for (const r of results) {
    for (const [keys, { readWrite: rw, plain }] of Object.entries(r.readWrite ?? {})) {
      const cut = (x: RwFigures): number => x.cutWaits.writers + x.cutWaits.readers
      console.log(`| ${r.database} | ${keys} | ${f(rw.perSecond, 0)} | ${f(plain.perSecond, 0)} | ${f(rw.perSecond / plain.perSecond, 2)} | ${f(rw.writerWait.p50, 2)} | ${f(rw.writerWait.p99, 1)} | ${f(rw.readerWait.p50, 2)} | ${f(rw.readerWait.p99, 1)} | ${f(plain.wait.p50, 2)} / ${f(plain.wait.p99, 1)} | ${rw.maxReaders} | ${f(rw.refusedPerSection, 2)} / ${f(plain.refusedPerSection, 2)} | ${f(rw.cpuMsPerSection, 2)} / ${f(plain.cpuMsPerSection, 2)} | ${rw.cutWaits.writers} + ${rw.cutWaits.readers} / ${cut(plain)} | ${rw.overlaps + plain.overlaps} / ${rw.fenceViolations + plain.fenceViolations} | ${errors(rw)} (${errors(plain)}) |`)
      samples.push(...[...rw.failureSamples, ...plain.failureSamples].map((m) => `${r.database}, ${keys} keys: ${m}`))
    }
  }
  if (samples.length > 0) console.log(`\nFailed waits and releases, first messages:\n\n${samples.map((m) => `- ${m}`).join('\n')}`)
}

function printWake(): void {
  console.log('\n## 8. Release → grant across processes (ms)\n')
  console.log('A holder process releases after 50 ms to 3 s (50-200 ms in smoke mode); a store in another process waits for the lock. From the moment the holder begins its release to the moment the waiter holds the lock; 4 lanes at once. "statements / s": what the waiting store ran per second of waiting (attempts and looks for releases), median over samples. Then one store waits 10 s (1 s in smoke mode) for a lock another process holds throughout: this process\'s CPU time and the store\'s statements per second of that wait.\n')
  console.log('| database | contender, mode | samples | p50 | p90 | p99 | max | statements / s while waiting | one 10 s wait on a held lock: CPU ms / s, statements / s |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    for (const [name, w] of Object.entries(r.wake ?? {})) {
      console.log(`| ${r.database} | ${name} | ${w.samples} | ${f(w.p50)} | ${f(w.p90)} | ${f(w.p99)} | ${f(w.max)} | ${f(w.statementsPerSecond)} | ${f(w.idleWait.cpuMsPerSecond, 2)}, ${f(w.idleWait.statementsPerSecond)} |`)
    }
  }
}
