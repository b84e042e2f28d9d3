/** A command line the CLI could not understand; the message is for people. */
export class UsageError extends Error {}

/** What an option takes: nothing (a flag), a value, or a value only if one follows. */
export type OptionKind = 'flag' | 'value' | 'optional-number'

/** The parsed words of a command line. */
export interface ParsedArgs {
  readonly options: ReadonlyMap<string, string | true>
  readonly positionals: readonly string[]
  /** Everything after `--`, untouched. */
  readonly rest: readonly string[] | undefined
}

/**
 * Parses `argv` against the options a command knows (`--name value`, `--name=value`, flags, and
 * `--wait [SECONDS]`, whose value is taken only when the next word is a number). Unknown options
 * are a UsageError.
 */
export function parseArgs(argv: readonly string[], known: Readonly<Record<string, OptionKind>>): ParsedArgs {
  const options = new Map<string, string | true>()
  const positionals: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i] ?? ''
    if (word === '--') return { options, positionals, rest: argv.slice(i + 1) }
    if (!word.startsWith('--') || word === '-') {
      positionals.push(word)
      continue
    }
    const eq = word.indexOf('=')
    const name = word.slice(2, eq < 0 ? undefined : eq)
    const kind = known[name]
    if (kind === undefined) throw new UsageError(`unknown option --${name}`)
    if (eq >= 0) {
      if (kind === 'flag') throw new UsageError(`option --${name} takes no value`)
      options.set(name, word.slice(eq + 1))
    } else if (kind === 'flag') {
      options.set(name, true)
    } else if (kind === 'optional-number') {
      const next = argv[i + 1]
      if (next !== undefined && /^\d+(\.\d+)?$/.test(next)) {
        options.set(name, next)
        i++
      } else {
        options.set(name, true)
      }
    } else {
      const next = argv[i + 1]
      if (next === undefined || next === '--') throw new UsageError(`option --${name} needs a value`)
      options.set(name, next)
      i++
    }
  }
  return { options, positionals, rest: undefined }
}

/** The value of a numeric option in seconds, as milliseconds; a UsageError names a bad one. */
export function secondsOption(args: ParsedArgs, name: string, fallback: number): number {
  const value = args.options.get(name)
  if (value === undefined || value === true) return fallback
  const seconds = Number(value)
  if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(seconds) || seconds * 1000 > 2 ** 31 - 1) {
    throw new UsageError(`option --${name} takes a number of seconds, got ${JSON.stringify(value)}`)
  }
  return Math.round(seconds * 1000)
}
