// The forger: a process that, during a PostgreSQL pair of the torture run, keeps sending
// notifications that no release sent, on every channel worker-locks' stores listen on:
// `<table>_released` and each listening connection's own probe channel `wl_probe_<32 hex>` (found
// in the LISTEN those connections last sent, as pg_stat_activity shows it). Its payloads:
// malformed ones (not JSON, wrong shapes, empty, ~7,900 characters), forged hand-overs
// `[name, key, 'forger', 'forged-token', '999999999', now]` for the run's locks, and replays of
// real release payloads it heard by listening on the table's channel. Any session may NOTIFY, so the
// library must treat all of this as, at most, a hint to ask the lock row again: nobody may get a
// lock, let alone fence 999999999, from a notification.
//
// Started by main.mts with its environment (ForgerConfig in shared.mts). Sends a round every
// 20–50 ms until "stop" on stdin (or the end of stdin, or SIGTERM), or by itself at WLF_UNTIL;
// then prints one JSON line (ForgerSummary) and exits. A server restart costs it a reconnect.
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { createInterface } from 'node:readline'
import { POSTGRES_URL } from '../test/targets.mjs'
import { FORGED_FENCE, forgerConfigFromEnv, realNow, type ForgerSummary } from './shared.mjs'

const config = forgerConfigFromEnv(process.env)
const released = `${config.table}_released`
const LISTENER_PREFIX = `${config.table}_w` // application_name of every worker slot's sessions (servers.mts)
/** At most this many probe channels per round, so that a round stays one small statement. */
const MAX_CHANNELS = 16
const MAX_CAPTURED = 64

const summary: ForgerSummary = {
  t: 'forger', sent: 0, malformed: 0, forged: 0, replayed: 0, onReleased: 0, onOwnChannels: 0,
  ownChannels: 0, captured: 0, rounds: 0, errors: 0, reconnects: 0,
}
const reached = new Set<string>()
const captured: string[] = []

let stopping = false
const input = createInterface({ input: process.stdin })
input.on('line', (line) => { if (line.trim() === 'stop') stopping = true })
input.on('close', () => { stopping = true })
process.on('SIGTERM', () => { stopping = true })

const lock = (): string => config.locks[Math.floor(Math.random() * config.locks.length)] ?? 'lock-a'
const long = (length: number): string => {
  let text = ''
  while (text.length < length) text += 'forged-payload/'
  return text.slice(0, length)
}
const LONG_KEY = long(7_860)

/** Payloads no release sends: each must be ignored (and logged at debug level), never thrown. */
const MALFORMED: ReadonlyArray<() => string> = [
  () => '',
  () => 'not json {',
  () => '{"name":"lock-a","key":""}',
  () => 'null',
  () => '42',
  () => '"lock-a"',
  () => '[]',
  () => `["${lock()}"]`,
  () => '["", "", "forger"]',
  () => `[null, "", "forger"]`,
  () => `["${lock()}", 7, "forger"]`,
  () => `[["${lock()}"], "", "forger"]`,
  () => `${'['.repeat(3_000)}${']'.repeat(3_000)}`,
  () => long(7_900), // not JSON, close to the most NOTIFY carries
  () => JSON.stringify([lock(), LONG_KEY, 'forger']), // ~7,900 characters: a key no lock has
  () => `["${lock()}", "", "forger"`, // cut short
]

const forgedHandOver = (): string => JSON.stringify([lock(), '', 'forger', 'forged-token', String(FORGED_FENCE), String(Date.now())])

type Kind = 'malformed' | 'forged' | 'replayed'
let turn = Math.floor(Math.random() * 100)
/** The next payload, by turns: half malformed, the rest forged hand-overs and (once it has heard some) replays. */
function nextPayload(): { kind: Kind; payload: string } {
  const n = turn++
  if (n % 2 === 0) return { kind: 'malformed', payload: (MALFORMED[(n / 2) % MALFORMED.length] as () => string)() }
  if (n % 4 === 3 && captured.length > 0) return { kind: 'replayed', payload: captured[Math.floor(Math.random() * captured.length)] as string }
  return { kind: 'forged', payload: forgedHandOver() }
}

let client: pg.Client | undefined
let ownPid: number | undefined

function note(error: unknown): void {
  summary.errors++
  summary.lastError = error instanceof Error ? error.message : String(error)
}

async function open(): Promise<pg.Client> {
  const url = new URL(POSTGRES_URL)
  url.searchParams.set('application_name', `${config.table}_forger`)
  const c = new pg.Client({ connectionString: url.toString(), connectionTimeoutMillis: 3_000, statement_timeout: 5_000, query_timeout: 6_000 })
  c.on('error', (error) => {
    note(error)
    if (client === c) client = undefined
  })
  c.on('end', () => { if (client === c) client = undefined })
  c.on('notification', (message) => {
    // Our own notifications come back to us; keep only what the workers sent.
    if (message.processId === ownPid || message.payload === undefined || message.payload.length === 0) return
    summary.captured++
    if (captured.length >= MAX_CAPTURED) captured.splice(Math.floor(Math.random() * captured.length), 1)
    captured.push(message.payload)
  })
  await c.connect()
  try {
    ownPid = Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0]?.pid)
    await c.query(`LISTEN ${pg.escapeIdentifier(released)}`)
  } catch (error) {
    await c.end().catch(() => undefined)
    throw error
  }
  return c
}

/** The probe channels of the connections listening now. */
async function ownChannels(c: pg.Client): Promise<string[]> {
  const { rows } = await c.query(`SELECT DISTINCT substring(query from 'LISTEN "(wl_probe_[0-9a-f]{32})"') AS channel
    FROM pg_stat_activity WHERE left(application_name, length($1)) = $1 AND strpos(query, 'LISTEN "wl_probe_') > 0`, [LISTENER_PREFIX]) as { rows: Array<{ channel: string | null }> }
  return rows.flatMap((r) => (r.channel ? [r.channel] : []))
}

async function round(c: pg.Client): Promise<void> {
  let channels = await ownChannels(c)
  if (channels.length > MAX_CHANNELS) channels = channels.sort(() => Math.random() - 0.5).slice(0, MAX_CHANNELS)
  const notes = [released, ...channels].map((channel) => ({ channel, ...nextPayload() }))
  const sql = `SELECT ${notes.map((_, i) => `pg_notify($${2 * i + 1}, $${2 * i + 2})`).join(', ')}`
  await c.query(sql, notes.flatMap((n) => [n.channel, n.payload]))
  summary.rounds++
  summary.sent += notes.length
  for (const n of notes) summary[n.kind]++
  summary.onReleased++
  summary.onOwnChannels += channels.length
  for (const channel of channels) reached.add(channel)
}

while (!stopping && realNow() < config.until) {
  try {
    if (!client) {
      if (summary.rounds > 0 || summary.errors > 0) summary.reconnects++
      client = await open()
    }
    await round(client)
  } catch (error) {
    // A server restart, mostly: open again after a pause.
    note(error)
    const broken = client
    client = undefined
    await broken?.end().catch(() => undefined)
    await sleep(200 + Math.random() * 300)
  }
  await sleep(20 + Math.random() * 30)
}

input.close()
await client?.end().catch(() => undefined)
summary.ownChannels = reached.size
process.stdout.write(`${JSON.stringify(summary)}\n`)
