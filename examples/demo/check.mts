// The demo's verdict, kept free of processes and timers so that a test can feed it sections
// that do overlap and see it say so.

/** One run of a job by one worker, from its "start" line to its "end" line (or its death). */
export interface Section {
  job: string
  worker: string
  fence: bigint
  start: number
  end: number
  /** The worker was killed inside this section; `end` is the kill time. */
  killed?: boolean
  /** The worker's lock signal aborted inside this section. */
  lost?: boolean
}

/** Two sections of one job that ran at the same time. */
export interface Overlap { job: string; earlier: Section; later: Section; overlapMs: number }

/** A section whose fence is not above that of the section before it. */
export interface FenceRegression { job: string; earlier: Section; later: Section }

export interface JobReport { job: string; sections: number; workers: string[]; maxOverlapMs: number }

export interface CheckResult {
  sections: number
  jobs: JobReport[]
  overlaps: Overlap[]
  fenceRegressions: FenceRegression[]
  ok: boolean
}

/**
 * Per job, in order of start: every section must start no earlier than all earlier ones ended
 * (comparing with the latest end so far, so one long section cannot hide behind a short one),
 * and fences must strictly increase.
 */
export function checkSections(sections: readonly Section[], jobs: readonly string[] = [...new Set(sections.map((s) => s.job))]): CheckResult {
  const overlaps: Overlap[] = []
  const fenceRegressions: FenceRegression[] = []
  const reports = jobs.map((job): JobReport => {
    const runs = sections.filter((s) => s.job === job).sort((a, b) => a.start - b.start)
    let maxOverlapMs = 0
    let latest: Section | undefined // the earlier section that ended last
    let previous: Section | undefined
    for (const section of runs) {
      if (latest && section.start < latest.end) {
        const overlapMs = Math.min(latest.end, section.end) - section.start
        overlaps.push({ job, earlier: latest, later: section, overlapMs })
        maxOverlapMs = Math.max(maxOverlapMs, overlapMs)
      }
      if (previous && section.fence <= previous.fence) fenceRegressions.push({ job, earlier: previous, later: section })
      if (!latest || section.end > latest.end) latest = section
      previous = section
    }
    return { job, sections: runs.length, workers: [...new Set(runs.map((s) => s.worker))].sort(), maxOverlapMs }
  })
  return {
    sections: sections.length,
    jobs: reports,
    overlaps,
    fenceRegressions,
    ok: overlaps.length === 0 && fenceRegressions.length === 0,
  }
}
