// Section 1 alone, several times, to show how much the ratios move between runs on this shared
// machine: worker-locks / raw and dialect layer / raw per run.
//
// Run: npm run build && node --expose-gc dist/bench/repeat-uncontended.mjs [DATABASE] [RUNS] [CYCLES]
import { createLockTable, dropLockTable } from '../src/index.js'
import { connect, uniqueName, type Database } from '../test/targets.mjs'
import { median } from './stats.mjs'
import { uncontended } from './uncontended.mjs'

const database = (process.argv[2] ?? 'postgres') as Database
const runs = Number(process.argv[3] ?? 5)
const cycles = Number(process.argv[4] ?? 2_000)
const knex = connect(database, { poolMax: 4 })
const table = uniqueName('wl_repeat')
await createLockTable(knex, { tableName: table })
try {
  console.log(`Uncontended acquire + release on ${database}, ${runs} runs of ${cycles} cycles (Node ${process.version})\n`)
  console.log('| run | raw median µs | dialect layer / raw | worker-locks / raw |')
  console.log('| --- | --- | --- | --- |')
  for (let run = 1; run <= runs; run++) {
    const series = await uncontended(database, knex, table, cycles, 120_000)
    const raw = median(series.raw ?? [])
    const ratio = (name: string): string => `${(median(series[name] ?? []) / raw).toFixed(2)}×`
    console.log(`| ${run} | ${raw.toFixed(1)} | ${ratio('dialect layer')} | ${ratio('worker-locks')} |`)
  }
} finally {
  await dropLockTable(knex, { tableName: table })
  await knex.destroy()
}
