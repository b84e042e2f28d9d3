// The torture run's verdict, kept free of processes, timers and databases so that a test can feed
// it a lost update or a stale-fence write and see it fail (test/torture.test.mts).

/** One accepted change of a counter, as the resource's trigger recorded it, in commit order (`id`). */
export interface JournalEntry {
  id: number
  lock: string
  /** `claim`: a holder announced its fence before reading. `write`: a holder stored read + 1. */
  op: 'claim' | 'write'
  fence: bigint
  writer: string | null
  /** What the writer had read (writes only). */
  readValue: bigint | null
  /** The counter after the change. */
  value: bigint
}

export interface JournalVerdict {
  claims: number
  writes: number
  /** A write that did not read the value the previous accepted write left: an update was lost. */
  lostUpdates: string[]
  /** A change accepted although the resource had already seen a higher fence. */
  staleFences: string[]
  /** Anything else that cannot happen (a claim that changed the value, a write that did not add 1, a counter the journal does not explain). */
  corrupt: string[]
}

const fmt = (e: JournalEntry): string => `#${e.id} ${e.op} by ${e.writer ?? '?'} with fence ${e.fence}`

/**
 * Replays the journal of every lock in commit order. Every accepted write must have read exactly
 * what the previous accepted write stored (else the update in between was lost), no change may
 * carry a fence lower than one accepted before it, and each counter must end where its journal
 * does: at the number of accepted writes.
 */
export function checkJournal(entries: readonly JournalEntry[], counters: ReadonlyMap<string, bigint>): JournalVerdict {
  const verdict: JournalVerdict = { claims: 0, writes: 0, lostUpdates: [], staleFences: [], corrupt: [] }
  const locks = new Set([...counters.keys(), ...entries.map((e) => e.lock)])
  for (const lock of [...locks].sort()) {
    const journal = entries.filter((e) => e.lock === lock).sort((a, b) => a.id - b.id)
    let value = 0n
    let highest = 0n
    let highestBy: JournalEntry | undefined
    let writes = 0n
    for (const e of journal) {
      if (e.fence < highest) {
        verdict.staleFences.push(`${lock}: ${fmt(e)} was accepted after ${highestBy ? fmt(highestBy) : `fence ${highest}`}`)
      }
      if (e.op === 'claim') {
        verdict.claims++
        if (e.value !== value) verdict.corrupt.push(`${lock}: ${fmt(e)} changed the counter from ${value} to ${e.value}`)
      } else {
        verdict.writes++
        writes++
        if (e.readValue !== value) {
          verdict.lostUpdates.push(`${lock}: ${fmt(e)} stored ${e.value} from a read of ${e.readValue ?? 'nothing'}, but the counter held ${value}: ` +
            (e.readValue !== null && e.readValue < value ? `${value - e.readValue} accepted update(s) were overwritten` : 'it never held what was read'))
        }
        if (e.readValue === null || e.value !== e.readValue + 1n) verdict.corrupt.push(`${lock}: ${fmt(e)} stored ${e.value} after reading ${e.readValue ?? 'nothing'}`)
      }
      value = e.value
      if (e.fence >= highest) {
        highest = e.fence
        highestBy = e
      }
    }
    const counter = counters.get(lock)
    if (counter === undefined) verdict.corrupt.push(`${lock}: the journal has changes for a counter that does not exist`)
    else if (counter !== value) verdict.corrupt.push(`${lock}: the counter holds ${counter}, but its journal ends at ${value}`)
    if (counter !== undefined && counter !== writes) {
      verdict.lostUpdates.push(`${lock}: the counter holds ${counter} after ${writes} accepted write(s) of +1`)
    }
  }
  return verdict
}

/** A critical section as its worker reported it (or as the harness closed it when it killed the worker). */
export interface SectionRecord {
  worker: string
  lock: string
  fence: bigint
  start: number
  end: number
  claim: string
  write: string
  /** lock.signal had aborted when the section ended. */
  aborted: boolean
  /** The longest the worker's event loop was blocked during the section. */
  maxLagMs: number
  stalled: boolean
  /** The worker was SIGKILLed inside it; `end` is the kill. */
  killed: boolean
  /** A read/write lock's side; absent for a plain lock. Two readers of one lock may overlap. */
  mode?: 'read' | 'write'
  /** A reader's two reads of the counter, at the start and at the end of its section (both made). */
  reads?: { first: bigint; again: bigint }
}

/**
 * What workers said about their writes must match the journal: a write reported accepted is in
 * it, a write reported refused is not. (A write that failed with an error may be either.)
 */
export function checkReports(sections: readonly SectionRecord[], entries: readonly JournalEntry[]): string[] {
  const written = new Set(entries.filter((e) => e.op === 'write').map((e) => `${e.lock}\0${e.fence}\0${e.writer ?? ''}`))
  const problems: string[] = []
  for (const s of sections) {
    const found = written.has(`${s.lock}\0${s.fence}\0${s.worker}`)
    if (s.write === 'ok' && !found) problems.push(`${s.worker} says its write to ${s.lock} with fence ${s.fence} was accepted; the journal has no such write`)
    if (s.write === 'refused' && found) problems.push(`${s.worker} says its write to ${s.lock} with fence ${s.fence} was refused; the journal has it`)
  }
  return problems
}

/** One acquisition of a lock, when its worker had it; `mode` for a read/write lock's side. */
export interface Acquisition { worker: string; lock: string; fence: bigint; at: number; mode?: 'read' | 'write' }

/** Whether two holders of one lock exclude each other: always, unless both are readers. */
const conflicting = (a: { mode?: 'read' | 'write' }, b: { mode?: 'read' | 'write' }): boolean => a.mode !== 'read' || b.mode !== 'read'

/**
 * One grant of a lock as the database recorded it: a trigger on the lock table journals every row
 * inserted, and every row whose fence changed (a takeover), in the
 * same statement. `id` is drawn while the granting statement holds what serialises the grants of
 * that lock (the advisory lock on PostgreSQL, the fence counter's row lock on MySQL/MariaDB,
 * SQLite's write lock), so it is the order in which the lock was granted.
 */
export interface Grant { id: number; lock: string; fence: bigint; holder: string }

export interface FenceVerdict {
  /** Anything wrong: a fence that did not grow in grant order, or a fence a worker held that the database never granted it. */
  problems: string[]
  /** Of `problems`: acquisitions whose fence the database never granted to that worker. */
  ungranted: string[]
}

/**
 * Fences must strictly increase per lock in grant order, on every database, with no tolerance:
 * every grant in the database's own record carries a higher fence than every earlier grant of
 * the same lock (a fence handed out twice is the same failure). And every fence a worker reported
 * holding must be one the database granted to that worker, once: a fence that came from anywhere
 * else (a forged notification, say) is a failure however large it is.
 */
export function checkFences(grants: readonly Grant[], acquisitions: readonly Acquisition[]): FenceVerdict {
  const problems: string[] = []
  const ungranted: string[] = []
  const byLock = new Map<string, Grant[]>()
  for (const g of grants) byLock.set(g.lock, [...(byLock.get(g.lock) ?? []), g])
  const granted = new Map<string, Grant>()
  for (const [lock, list] of byLock) {
    let highest: Grant | undefined
    for (const g of [...list].sort((a, b) => a.id - b.id)) {
      if (highest && g.fence <= highest.fence) {
        problems.push(`${lock}: grant #${g.id} of fence ${g.fence} to ${g.holder} came after grant #${highest.id} of fence ${highest.fence} to ${highest.holder}`)
      }
      if (!highest || g.fence > highest.fence) highest = g
      granted.set(`${lock}\0${g.fence}`, g)
    }
  }
  const reported = new Map<string, Acquisition>()
  for (const a of acquisitions) {
    const key = `${a.lock}\0${a.fence}`
    const twin = reported.get(key)
    if (twin) problems.push(`${a.lock}: fence ${a.fence} was held twice, by ${twin.worker} and by ${a.worker}`)
    else reported.set(key, a)
    const grant = granted.get(key)
    if (!grant || grant.holder !== a.worker) {
      const problem = `${a.lock}: ${a.worker} held fence ${a.fence}, which the database ${grant ? `granted to ${grant.holder}` : 'never granted'}`
      problems.push(problem)
      ungranted.push(problem)
    }
  }
  return { problems, ungranted }
}

export interface Overlap {
  lock: string
  earlier: SectionRecord
  later: SectionRecord
  overlapMs: number
  /** How the earlier holder could run on after losing its lease: it knew (signal aborted), it was stalled, or its event loop was blocked. */
  explanation: string | undefined
}

/** How a holder could run on after losing its lease, if it did: it knew (signal aborted), it was stalled, or its event loop was blocked. */
function leaseLossExplained(section: SectionRecord, blockedMs: number): string | undefined {
  return section.aborted ? 'its signal had aborted'
    : section.stalled ? 'it was stalled'
    : section.maxLagMs >= blockedMs ? `its event loop was blocked for ${section.maxLagMs} ms`
    : undefined
}

/**
 * Critical sections of one lock that ran at the same time (two readers of a read/write lock
 * excepted). A lease lock allows that only when the
 * earlier holder lost its lease: then, if its event loop could run, its signal had aborted by the
 * time it finished. An overlap longer than `toleranceMs` whose earlier holder neither knew nor was
 * blocked for at least `blockedMs` means the lock was given to two workers at once.
 */
export function findOverlaps(sections: readonly SectionRecord[], toleranceMs: number, blockedMs: number): Overlap[] {
  const overlaps: Overlap[] = []
  const byLock = new Map<string, SectionRecord[]>()
  for (const s of sections) byLock.set(s.lock, [...(byLock.get(s.lock) ?? []), s])
  for (const [lock, list] of byLock) {
    const sorted = [...list].sort((a, b) => a.start - b.start)
    let active: SectionRecord[] = []
    for (const later of sorted) {
      active = active.filter((earlier) => earlier.end > later.start + toleranceMs)
      for (const earlier of active) {
        if (!conflicting(earlier, later)) continue
        const explanation = leaseLossExplained(earlier, blockedMs)
        overlaps.push({ lock, earlier, later, overlapMs: Math.min(earlier.end, later.end) - later.start, explanation })
      }
      active.push(later)
    }
  }
  return overlaps
}

/**
 * Readers of a read/write lock whose two reads of the counter differ: a writer's change was
 * accepted while they held the lock. Only a reader that had lost its lease (as for overlaps) may
 * see that; each other one is a problem.
 */
export function checkStableReads(sections: readonly SectionRecord[], blockedMs: number): { checked: number; explained: number; problems: string[] } {
  const readers = sections.filter((s) => s.mode === 'read' && s.reads !== undefined)
  const changed = readers.filter((s) => s.reads!.first !== s.reads!.again)
  const problems = changed.filter((s) => !leaseLossExplained(s, blockedMs))
    .map((s) => `${s.lock}: reader ${s.worker} #${s.fence} read ${s.reads!.first}, then ${s.reads!.again} before it released, and its signal had not aborted`)
  return { checked: readers.length, explained: changed.length - problems.length, problems }
}

/** A holder the harness SIGKILLed. */
export interface Kill {
  worker: string
  lock: string
  fence: bigint
  at: number
  /** When the killed worker got the lock. */
  heldSince: number
  /** When the killed worker last sent a write of its row (acquire or renewal): the row is at least that fresh. */
  leaseFrom: number
  /** The replacement got the same instance name (so it must get the lock at once) or a new one. */
  sameName: boolean
  /** Why this kill says nothing about the lock (the holder had already lost it, or just released it). */
  skip: string | undefined
  /** The side of a read/write lock it held: a killed reader keeps out writers only. */
  mode?: 'read' | 'write'
}

/** What a replacement with the same instance name reported on its first attempt, begun at `start`. */
export interface Reclaim { worker: string; lock: string; acquired: boolean; start: number; at: number }

export interface KillVerdict {
  reclaimed: number
  reclaimInconclusive: string[]
  takenOver: number[]
  /** For every lock taken by someone else after a kill: how long after the killed holder's lease could have ended. */
  margins: number[]
  notChecked: number
  problems: string[]
}

/**
 * A killed holder's lock must not be given to anyone else before its lease can have run out
 * (`lockTimeoutMs` after its last write of the row was sent, less `toleranceMs`), must be free for
 * others within `availableWithinMs` of the kill, and must be given at once to a replacement with
 * the same instance name (inconclusive if that replacement started so late that someone else had
 * rightly taken the lock first). For a read/write lock, "anyone else" is a holder in a conflicting
 * mode: after a killed reader, only writers count (other readers may join it at once).
 */
export function checkKills(
  kills: readonly Kill[], acquisitions: readonly Acquisition[], reclaims: readonly Reclaim[],
  timing: { lockTimeoutMs: number; toleranceMs: number; availableWithinMs: number; runEnd: number },
): KillVerdict {
  const verdict: KillVerdict = { reclaimed: 0, reclaimInconclusive: [], takenOver: [], margins: [], notChecked: 0, problems: [] }
  for (const kill of kills) {
    // Someone else got the lock between the killed worker's acquisition and the kill: the killed
    // worker had lost it already (a stall, a failing connection), so its lease proves nothing.
    const lostBefore = acquisitions.some((a) => a.lock === kill.lock && a.worker !== kill.worker && conflicting(a, kill) && a.at > kill.heldSince && a.at < kill.at)
    if (kill.skip !== undefined || lostBefore) {
      verdict.notChecked++
      continue
    }
    const after = acquisitions.filter((a) => a.lock === kill.lock && conflicting(a, kill) && a.at > kill.at).sort((a, b) => a.at - b.at)
    const first = after[0]
    const what = `${kill.lock} (${kill.mode ? `${kill.mode}, ` : ''}fence ${kill.fence}) of ${kill.worker}, SIGKILLed`
    const leaseEnd = kill.leaseFrom + timing.lockTimeoutMs
    const reclaim = kill.sameName ? reclaims.find((r) => r.worker === kill.worker && r.lock === kill.lock && r.at > kill.at) : undefined
    // The namesake's own attempt may end the dead holder's lease early: it may delete the rows of
    // its instance name before it inserts, and on SQLite (no transaction around the two) another
    // worker can take the free lock in between. Nobody alive was excluded then.
    const freedByNamesake = reclaim !== undefined && first !== undefined && first.at >= reclaim.start && first.at <= reclaim.at
    if (first && first.worker !== kill.worker) verdict.margins.push(first.at - leaseEnd)
    if (first && first.worker !== kill.worker && first.at < leaseEnd - timing.toleranceMs && !freedByNamesake) {
      verdict.problems.push(`${what}, went to ${first.worker} ${Math.round(first.at - kill.at)} ms after the kill, ${Math.round(leaseEnd - first.at)} ms before its lease could have run out`)
    }
    if (kill.sameName) {
      if (reclaim?.acquired) verdict.reclaimed++
      else if (first && first.worker !== kill.worker && (!reclaim || first.at <= reclaim.at)) {
        verdict.reclaimInconclusive.push(`${what}: ${freedByNamesake
          ? `${first.worker} took it ${Math.round(first.at - kill.at)} ms after the kill, while its replacement was asking (from ${Math.round((reclaim?.start ?? 0) - kill.at)} ms)`
          : `its replacement ${reclaim ? `asked ${Math.round(reclaim.at - kill.at)} ms after the kill` : 'never asked'}, after ${first.worker} had taken it over (${Math.round(first.at - kill.at)} ms)`}`)
      } else {
        verdict.problems.push(`${what}: its replacement with the same instance name ${reclaim ? `was refused the lock ${Math.round(reclaim.at - kill.at)} ms after the kill` : 'never reported trying to reclaim it'}`)
      }
    } else if (first && first.at - kill.at <= timing.availableWithinMs) {
      verdict.takenOver.push(first.at - kill.at)
    } else if (timing.runEnd - kill.at > timing.availableWithinMs) {
      verdict.problems.push(`${what}: ${kill.mode === 'read' ? 'no writer' : 'nobody'} got it within ${timing.availableWithinMs} ms${first ? ` (first after ${Math.round(first.at - kill.at)} ms)` : ''}`)
    } else {
      verdict.notChecked++
    }
  }
  return verdict
}

/** One restart of the pooler by the harness: its process before and after, and when it answered again. */
export interface PoolerRestartRecord { oldPid: number; newPid: number; end: number }

/**
 * A run through a pooler the harness restarts: it must have been restarted at least once, each
 * time by a new process (a restart that left the old one running proved nothing), a write must
 * have been accepted after each restart, and at the end the pooler must still be the process the
 * harness started last (or found at the start): any other pid, or none, means it died by itself.
 */
export function checkPoolerRestarts(
  restarts: readonly PoolerRestartRecord[], sections: readonly SectionRecord[], pids: { atStart: number | undefined; atEnd: number | undefined },
): { problems: string[]; writesAfter: number[] } {
  const problems: string[] = []
  if (restarts.length === 0) problems.push('the pooler was never restarted')
  for (const [i, r] of restarts.entries()) {
    if (r.newPid === r.oldPid) problems.push(`restart #${i + 1}: the pooler still ran as pid ${r.oldPid}`)
  }
  const writesAfter = restarts.map((r) => sections.filter((s) => s.start > r.end && s.write === 'ok').length)
  writesAfter.forEach((n, i) => { if (n === 0) problems.push(`no accepted write after restart #${i + 1}`) })
  const expected = restarts.at(-1)?.newPid ?? pids.atStart
  if (expected === undefined || pids.atEnd !== expected) {
    problems.push(`the pooler ran as pid ${expected ?? 'none'} after the harness last started it (or at the start), but as ${pids.atEnd ?? 'no process'} at the end of the run: it died by itself`)
  }
  return { problems, writesAfter }
}

/** One line of the verdict: an invariant, whether it held, and the evidence. */
export interface Invariant { name: string; ok: boolean; detail: string; problems: string[] }

export const invariant = (name: string, problems: readonly string[], detail: string): Invariant =>
  ({ name, ok: problems.length === 0, detail, problems: [...problems] })
