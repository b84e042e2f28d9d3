import { parseArgs } from 'node:util'

/** A command line the CLI could not understand; the message is for people (exit 2). */
export class UsageError extends Error {}

// A number of seconds as options take it: digits, perhaps with a fraction.
const SECONDS = /^\d+(\.\d+)?$/

// The options that take no value; all others take one.
const FLAGS = new Set(['help', 'json'])

/** A parsed command line: option values, the words besides them, and everything after `--`. */
export interface CommandLine {
  readonly values: Readonly<Record<string, string | boolean | undefined>>
  readonly positionals: readonly string[]
  readonly rest: readonly string[] | undefined
}

/**
 * Parses `argv` against the `known` option names; anything after `--` is left untouched. A bare
 * `--wait` (not followed by a number) becomes `--wait=`: a wait without an end.
 */
export function parseCommandLine(argv: readonly string[], known: readonly string[]): CommandLine {
  const end = argv.indexOf('--')
  const words = (end < 0 ? argv : argv.slice(0, end))
    .map((word, i, all) => word === '--wait' && !SECONDS.test(all[i + 1] ?? '') ? '--wait=' : word)
  const options = Object.fromEntries(known.map((name) => [name, { type: FLAGS.has(name) ? 'boolean' as const : 'string' as const }]))
  // Not strict, so that the messages below are ours, and an option's value may start with a dash.
  const { values, positionals, tokens } = parseArgs({ args: words, options, strict: false, allowPositionals: true, tokens: true })
  for (const token of tokens) {
    if (token.kind !== 'option') continue
    if (!Object.hasOwn(options, token.name)) throw new UsageError(`unknown option ${token.rawName}`)
    const flag = FLAGS.has(token.name)
    if (!flag && token.value === undefined) throw new UsageError(`option ${token.rawName} needs a value`)
    if (flag && token.value !== undefined) throw new UsageError(`option ${token.rawName} takes no value`)
  }
  return { values, positionals, rest: end < 0 ? undefined : argv.slice(end + 1) }
}

/** The string value of option `name`, if given. */
export function text(args: CommandLine, name: string): string | undefined {
  const value = args.values[name]
  return typeof value === 'string' ? value : undefined
}

/** The value of option `name` in seconds, as milliseconds (`fallback` if not given); a UsageError names a bad one. */
export function seconds<T extends number | undefined>(args: CommandLine, name: string, fallback: T): number | T {
  const value = text(args, name)
  if (value === undefined) return fallback
  if (!SECONDS.test(value) || Number(value) * 1000 > 2 ** 31 - 1) {
    throw new UsageError(`option --${name} takes a number of seconds, got ${JSON.stringify(value)}`)
  }
  return Math.round(Number(value) * 1000)
}
