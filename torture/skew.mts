// Imported first by worker.mts: simulates a machine whose clock is off by WLT_SKEW_MS
// milliseconds by shifting Date.now() for everything loaded after it (worker-locks, knex, the
// drivers). `performance.now()` and timers are left alone: a wrong wall clock does not make
// time pass faster, and worker-locks measures its own deadlines on the monotonic clock.
const skewMs = Number(process.env.WLT_SKEW_MS ?? 0)
if (!Number.isFinite(skewMs)) throw new Error(`WLT_SKEW_MS must be a number, got ${process.env.WLT_SKEW_MS}`)
if (skewMs !== 0) {
  const systemNow = Date.now.bind(Date)
  Date.now = () => systemNow() + skewMs
}
export const simulatedSkewMs = skewMs
