/** A command line the CLI could not understand; the message is for people. */
export class UsageError extends Error {}

// A number of seconds as options take it: digits, perhaps with a fraction.
const SECONDS = /^\d+(\.\d+)?$/

/** What an option takes: nothing (a flag), a value, or a value only if one follows. */
export type OptionKind = 'flag' | 'value' | 'optional-number'

/** The options a command knows, by name. */
type KnownOptions = Readonly<Record<string, OptionKind>>

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
    if (!word.startsWith('--') || word === '-') positionals.push(word)
    else i += readOption(word, argv[i + 1], known, options)
  }
  return { options, positionals, rest: undefined }
}

/**
 * Reads the option `word` (`--name` or `--name=value`) into `options`, `next` being the word
 * after it; returns how many words after it were its value (0 or 1).
 */
function readOption(word: string, next: string | undefined, known: KnownOptions, options: Map<string, string | true>): number {
  const eq = word.indexOf('=')
  const name = word.slice(2, eq < 0 ? undefined : eq)
  const kind = Object.hasOwn(known, name) ? known[name] : undefined
  if (kind === undefined) throw new UsageError(`unknown option --${name}`)
  if (eq < 0) {
    const [value, taken] = separateValue(name, kind, next)
    options.set(name, value)
    return taken
  }
  if (kind === 'flag') throw new UsageError(`option --${name} takes no value`)
  options.set(name, word.slice(eq + 1))
  return 0
}

/** The value of option `name` written without `=`, and how many of the next words it took (0 or 1). */
function separateValue(name: string, kind: OptionKind, next: string | undefined): [string | true, number] {
  if (kind === 'flag') return [true, 0]
  // `--wait [SECONDS]`: the next word is its value only when it is a number.
  if (kind === 'optional-number') return next !== undefined && SECONDS.test(next) ? [next, 1] : [true, 0]
  if (next === undefined || next === '--') throw new UsageError(`option --${name} needs a value`)
  return [next, 1]
}

/** The value of a numeric option in seconds, as milliseconds; a UsageError names a bad one. */
export function secondsOption(args: ParsedArgs, name: string, fallback: number): number {
  const value = args.options.get(name)
  if (value === undefined || value === true) return fallback
  const seconds = Number(value)
  if (!SECONDS.test(value) || !Number.isFinite(seconds) || seconds * 1000 > 2 ** 31 - 1) {
    throw new UsageError(`option --${name} takes a number of seconds, got ${JSON.stringify(value)}`)
  }
  return Math.round(seconds * 1000)
}
