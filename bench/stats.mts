// Small statistics helpers for the benchmarks.

export function quantile(samples: readonly number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}

export const median = (samples: readonly number[]): number => quantile(samples, 0.5)
export const p99 = (samples: readonly number[]): number => quantile(samples, 0.99)
