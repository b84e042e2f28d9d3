// The torture run's verdict (torture/check.mts) must be able to fail: fed a lost update, a write
// accepted with a stale fence, a fence that did not grow in grant order (or was granted twice), a
// fence the database never granted, two unaware holders at once (a writer with anyone, for
// read/write locks), a reader that saw a write while it held its lock, or a lock taken from a
// killed holder too early, or a pooler that was not really restarted or died by itself, it says so. The run itself (`npm run torture`) is too long
// for the test suite; CI runs it separately.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  checkFences, checkJournal, checkKills, checkPoolerRestarts, checkReports, checkStableReads, findOverlaps, type Acquisition, type Grant, type JournalEntry, type SectionRecord,
} from '../torture/check.mjs'

let nextId = 0
const claim = (writer: string, fence: bigint, value: bigint): JournalEntry =>
  ({ id: ++nextId, lock: 'lock-a', op: 'claim', fence, writer, readValue: null, value })
const write = (writer: string, fence: bigint, readValue: bigint): JournalEntry =>
  ({ id: ++nextId, lock: 'lock-a', op: 'write', fence, writer, readValue, value: readValue + 1n })
const counters = (value: bigint): Map<string, bigint> => new Map([['lock-a', value]])
const grant = (id: number, holder: string, fence: bigint, lock = 'lock-a'): Grant => ({ id, lock, fence, holder })
const acq = (worker: string, fence: bigint, at: number, lock = 'lock-a'): Acquisition => ({ worker, lock, fence, at })

describe('torture verdict', () => {
  it('passes a journal in which every write read its predecessor and fences only grew', () => {
    const journal = [claim('w1', 1n, 0n), write('w1', 1n, 0n), claim('w2', 2n, 1n), write('w2', 2n, 1n)]
    const verdict = checkJournal(journal, counters(2n))
    assert.deepEqual({ lost: verdict.lostUpdates, stale: verdict.staleFences, corrupt: verdict.corrupt }, { lost: [], stale: [], corrupt: [] })
    assert.equal(verdict.writes, 2)
    assert.equal(verdict.claims, 2)
  })

  it('reports a lost update: two accepted writes that read the same value', () => {
    // w1 and w2 both read 0; both writes were accepted (fences in order), so one +1 vanished.
    const journal = [claim('w1', 1n, 0n), claim('w2', 2n, 0n), write('w2', 2n, 0n), write('w3', 3n, 0n)]
    const verdict = checkJournal(journal, counters(1n))
    assert.equal(verdict.staleFences.length, 0)
    assert.ok(verdict.lostUpdates.some((p) => /#\d+ write by w3 with fence 3 stored 1 from a read of 0, but the counter held 1/.test(p)), verdict.lostUpdates.join('\n'))
    assert.ok(verdict.lostUpdates.some((p) => /the counter holds 1 after 2 accepted write/.test(p)), verdict.lostUpdates.join('\n'))
  })

  it('reports a write accepted with a stale fence, even when no update was lost', () => {
    // w2 claimed fence 2 and wrote; then w1, overtaken, wrote with fence 1 and was accepted.
    const journal = [claim('w1', 1n, 0n), claim('w2', 2n, 0n), write('w2', 2n, 0n), write('w1', 1n, 1n)]
    const verdict = checkJournal(journal, counters(2n))
    assert.deepEqual(verdict.lostUpdates, [])
    assert.equal(verdict.staleFences.length, 1)
    assert.match(verdict.staleFences[0] ?? '', /write by w1 with fence 1 was accepted after #\d+ write by w2 with fence 2/)
  })

  it('reports a counter that moved without a journaled write, and reports that contradict the journal', () => {
    const journal = [claim('w1', 1n, 0n), write('w1', 1n, 0n)]
    assert.ok(checkJournal(journal, counters(5n)).corrupt.some((p) => /holds 5, but its journal ends at 1/.test(p)))
    const section = (worker: string, fence: bigint, outcome: string): SectionRecord => ({
      worker, lock: 'lock-a', fence, start: 0, end: 1, claim: 'ok', write: outcome, aborted: false, maxLagMs: 0, stalled: false, killed: false,
    })
    const problems = checkReports([section('w1', 1n, 'refused'), section('w2', 2n, 'ok'), section('w3', 3n, 'error')], journal)
    assert.equal(problems.length, 2)
  })

  it('passes fences that grew in grant order, each held by the worker it was granted to', () => {
    const grants = [grant(1, 'w1', 1n), grant(2, 'w2', 2n), grant(3, 'w1', 3n), grant(4, 'w3', 5n, 'lock-b'), grant(5, 'w3', 4n)]
    // A grant nobody reported (its holder was killed before it could say) is fine.
    const verdict = checkFences(grants, [acq('w1', 1n, 10), acq('w2', 2n, 11), acq('w3', 5n, 12, 'lock-b'), acq('w3', 4n, 12)])
    assert.deepEqual(verdict, { problems: [], ungranted: [] })
  })

  it('reports a fence that did not grow in grant order, however close in time, on every database', () => {
    // PostgreSQL used to draw a fresh insert's fence before the insert could wait: w1 drew 7,
    // waited, and was granted after w2 had been granted 8. Reported 1 ms apart, in grant order.
    const grants = [grant(1, 'w0', 6n), grant(2, 'w2', 8n), grant(3, 'w1', 7n)]
    const verdict = checkFences(grants, [acq('w0', 6n, 0), acq('w2', 8n, 100), acq('w1', 7n, 101)])
    assert.equal(verdict.problems.length, 1, verdict.problems.join('\n'))
    assert.match(verdict.problems[0] ?? '', /lock-a: grant #3 of fence 7 to w1 came after grant #2 of fence 8 to w2/)
    assert.deepEqual(verdict.ungranted, [])
    // A fence granted twice, and one held by two workers.
    const twice = checkFences([grant(1, 'w1', 5n), grant(2, 'w2', 5n)], [])
    assert.match(twice.problems[0] ?? '', /grant #2 of fence 5 to w2 came after grant #1 of fence 5 to w1/)
    const shared = checkFences([grant(1, 'w1', 5n)], [acq('w1', 5n, 0), acq('w2', 5n, 10)])
    assert.ok(shared.problems.some((p) => /fence 5 was held twice, by w1 and by w2/.test(p)), shared.problems.join('\n'))
    assert.deepEqual(shared.ungranted, ['lock-a: w2 held fence 5, which the database granted to w1'])
  })

  it('reports a fence a worker held that the database never granted it (a forged hand-over)', () => {
    const grants = [grant(1, 'w1', 1n), grant(2, 'w2', 2n)]
    const verdict = checkFences(grants, [acq('w1', 1n, 0), acq('w2', 2n, 10), acq('w3', 999_999_999n, 20)])
    assert.deepEqual(verdict.ungranted, ['lock-a: w3 held fence 999999999, which the database never granted'])
    assert.deepEqual(verdict.problems, verdict.ungranted)
    // The right fence for the lock, but granted to another worker; or granted for another lock.
    assert.equal(checkFences(grants, [acq('w1', 2n, 10)]).ungranted.length, 1)
    assert.equal(checkFences(grants, [acq('w1', 1n, 10, 'lock-b')]).ungranted.length, 1)
  })

  it('tells overlaps of holders that knew (or were stalled) from holders that did not', () => {
    const section = (worker: string, start: number, end: number, extra: Partial<SectionRecord> = {}): SectionRecord => ({
      worker, lock: 'lock-a', fence: BigInt(start), start, end, claim: 'ok', write: 'ok', aborted: false, maxLagMs: 0, stalled: false, killed: false, ...extra,
    })
    const overlaps = findOverlaps([
      section('w1', 0, 3_000, { stalled: true, aborted: true }),
      section('w2', 2_000, 2_100), // inside w1's stall: explained
      section('w3', 5_000, 5_500),
      section('w4', 5_200, 5_300), // w3 never knew: a lock given to two workers at once
      section('w5', 5_490, 5_600), // 10 ms of overlap with w3: within tolerance
    ], 25, 900)
    assert.equal(overlaps.length, 2)
    assert.match(overlaps[0]?.explanation ?? '', /signal had aborted/)
    assert.equal(overlaps[1]?.explanation, undefined)
    assert.equal(overlaps[1]?.later.worker, 'w4')
  })

  it('lets readers of a read/write lock overlap, but not a writer with anyone', () => {
    const section = (worker: string, start: number, end: number, mode: 'read' | 'write', extra: Partial<SectionRecord> = {}): SectionRecord => ({
      worker, lock: 'rw-x', fence: BigInt(start), start, end, claim: 'ok', write: mode === 'write' ? 'ok' : 'skipped', aborted: false, maxLagMs: 0, stalled: false, killed: false, mode, ...extra,
    })
    const overlaps = findOverlaps([
      section('r1', 0, 1_000, 'read'),
      section('r2', 100, 900, 'read'), // two readers at once: fine
      section('w1', 500, 600, 'write'), // a writer among them: twice unexplained
      section('r3', 2_000, 5_000, 'read', { stalled: true }),
      section('w2', 4_000, 4_100, 'write'), // inside a stalled reader's section: explained
    ], 25, 900)
    assert.deepEqual(overlaps.map((o) => `${o.earlier.worker}/${o.later.worker} ${o.explanation ?? 'unexplained'}`),
      ['r1/w1 unexplained', 'r2/w1 unexplained', 'r3/w2 it was stalled'])
  })

  it('reports a reader that read two values while it held its lock, unless it had lost its lease', () => {
    const reader = (worker: string, first: bigint, again: bigint, extra: Partial<SectionRecord> = {}): SectionRecord => ({
      worker, lock: 'rw-x', fence: 1n, start: 0, end: 1, claim: 'ok', write: 'skipped', aborted: false, maxLagMs: 0, stalled: false, killed: false,
      mode: 'read', reads: { first, again }, ...extra,
    })
    const verdict = checkStableReads([reader('r1', 4n, 4n), reader('r2', 4n, 5n), reader('r3', 4n, 5n, { aborted: true }), reader('r4', 4n, 6n, { maxLagMs: 1_000 })], 900)
    assert.equal(verdict.checked, 4)
    assert.equal(verdict.explained, 2)
    assert.deepEqual(verdict.problems, ['rw-x: reader r2 #1 read 4, then 5 before it released, and its signal had not aborted'])
  })

  it('after a killed reader, holds back writers only until its lease could end', () => {
    const timing = { lockTimeoutMs: 1_500, toleranceMs: 100, availableWithinMs: 6_500, runEnd: 60_000 }
    const kill = { worker: 'r1', lock: 'rw-x', fence: 7n, at: 10_000, heldSince: 9_500, leaseFrom: 9_800, skip: undefined, sameName: false, mode: 'read' as const }
    // Another reader at once is no problem; a writer before 11,300 is.
    const readers = checkKills([kill], [{ worker: 'r2', lock: 'rw-x', fence: 8n, at: 10_100, mode: 'read' }, { worker: 'w1', lock: 'rw-x', fence: 9n, at: 11_400, mode: 'write' }], [], timing)
    assert.deepEqual(readers.problems, [])
    assert.deepEqual(readers.takenOver, [1_400])
    const writer = checkKills([kill], [{ worker: 'w1', lock: 'rw-x', fence: 8n, at: 10_400, mode: 'write' }], [], timing)
    assert.match(writer.problems[0] ?? '', /went to w1 400 ms after the kill, 900 ms before its lease could have run out/)
    // A killed writer holds back readers too.
    const afterWriter = checkKills([{ ...kill, mode: 'write' }], [{ worker: 'r2', lock: 'rw-x', fence: 8n, at: 10_400, mode: 'read' }], [], timing)
    assert.equal(afterWriter.problems.length, 1)
    // Only readers came after a killed reader, for longer than a writer may wait: nobody shown to get in.
    const noWriter = checkKills([kill], [{ worker: 'r2', lock: 'rw-x', fence: 8n, at: 10_100, mode: 'read' }], [], timing)
    assert.match(noWriter.problems[0] ?? '', /rw-x \(read, fence 7\) of r1, SIGKILLed: no writer got it within 6500 ms/)
  })

  it('reports a killed holder\'s lock given away too early, or refused to its namesake', () => {
    const timing = { lockTimeoutMs: 1_500, toleranceMs: 100, availableWithinMs: 6_500, runEnd: 60_000 }
    // Its row was last renewed by a statement sent at 9,800: nobody else may have it before 11,300.
    const kill = { worker: 'w1', lock: 'lock-a', fence: 7n, at: 10_000, heldSince: 9_500, leaseFrom: 9_800, skip: undefined }
    const early = checkKills([{ ...kill, sameName: false }], [{ worker: 'w2', lock: 'lock-a', fence: 8n, at: 10_400 }], [], timing)
    assert.match(early.problems[0] ?? '', /went to w2 400 ms after the kill, 900 ms before its lease could have run out/)
    const alsoEarly = checkKills([{ ...kill, sameName: false }], [{ worker: 'w2', lock: 'lock-a', fence: 8n, at: 11_150 }], [], timing)
    assert.equal(alsoEarly.problems.length, 1)
    const fine = checkKills([{ ...kill, sameName: false }], [{ worker: 'w2', lock: 'lock-a', fence: 8n, at: 11_350 }], [], timing)
    assert.deepEqual(fine.problems, [])
    assert.deepEqual(fine.takenOver, [1_350])
    const refused = checkKills([{ ...kill, sameName: true }], [], [{ worker: 'w1', lock: 'lock-a', acquired: false, start: 10_490, at: 10_500 }], timing)
    assert.match(refused.problems[0] ?? '', /same instance name was refused the lock 500 ms after the kill/)
    const reclaimed = checkKills([{ ...kill, sameName: true }], [{ worker: 'w1', lock: 'lock-a', fence: 8n, at: 10_500 }], [{ worker: 'w1', lock: 'lock-a', acquired: true, start: 10_490, at: 10_500 }], timing)
    assert.equal(reclaimed.reclaimed, 1)
    assert.deepEqual(reclaimed.problems, [])
    // Another worker took it while the namesake's own attempt was under way (its delete had freed
    // the row): inconclusive, not a broken lease. Just before that attempt began, it is a problem.
    const slipped = checkKills([{ ...kill, sameName: true }], [{ worker: 'w2', lock: 'lock-a', fence: 8n, at: 10_495 }], [{ worker: 'w1', lock: 'lock-a', acquired: false, start: 10_490, at: 10_500 }], timing)
    assert.deepEqual(slipped.problems, [])
    assert.match(slipped.reclaimInconclusive[0] ?? '', /w2 took it 495 ms after the kill, while its replacement was asking/)
    const before = checkKills([{ ...kill, sameName: true }], [{ worker: 'w2', lock: 'lock-a', fence: 8n, at: 10_480 }], [{ worker: 'w1', lock: 'lock-a', acquired: false, start: 10_490, at: 10_500 }], timing)
    assert.match(before.problems[0] ?? '', /went to w2 480 ms after the kill/)
  })

  it('reports a pooler that was not restarted, not by a new process, not followed by work, or that died by itself', () => {
    const section = (start: number, write: string): SectionRecord => ({
      worker: 'w1', lock: 'lock-a', fence: 1n, start, end: start + 10, claim: 'ok', write, aborted: false, maxLagMs: 0, stalled: false, killed: false,
    })
    const work = [section(1_000, 'ok'), section(6_000, 'ok')]
    const restart = { oldPid: 100, newPid: 200, end: 5_000 }
    const fine = checkPoolerRestarts([restart], work, { atStart: 100, atEnd: 200 })
    assert.deepEqual(fine, { problems: [], writesAfter: [1] })
    assert.deepEqual(checkPoolerRestarts([], work, { atStart: 100, atEnd: 100 }).problems, ['the pooler was never restarted'])
    assert.match(checkPoolerRestarts([{ ...restart, newPid: 100 }], work, { atStart: 100, atEnd: 100 }).problems.join('\n'), /restart #1: the pooler still ran as pid 100/)
    assert.match(checkPoolerRestarts([restart], [section(1_000, 'ok'), section(6_000, 'error')], { atStart: 100, atEnd: 200 }).problems.join('\n'), /no accepted write after restart #1/)
    // Its own crash, after the harness's restart or without any: another pid, or none, at the end.
    assert.match(checkPoolerRestarts([restart], work, { atStart: 100, atEnd: undefined }).problems.join('\n'), /ran as pid 200 .* but as no process at the end of the run: it died by itself/)
    assert.match(checkPoolerRestarts([restart], work, { atStart: 100, atEnd: 300 }).problems.join('\n'), /but as 300 at the end/)
  })
})
