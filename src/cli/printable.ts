// Lock names, keys and holders come from the database, where anyone may have put anything.

// C0 and C1 controls, DEL, and the two Unicode line separators some terminals and editors obey.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g

const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * `text` with every control character written as an escape (`\n`, `\t`, `\x1b`, `\u2028`), so
 * that printing it cannot start a new line or send the terminal an escape sequence. Other text,
 * backslashes included, is left as it is.
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => {
    const named = NAMED[c]
    if (named !== undefined) return named
    const code = c.charCodeAt(0)
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16)}`
  })
}

/** `JSON.stringify(text)`, with the control characters JSON leaves alone escaped too. */
export function quoted(text: string): string {
  return printable(JSON.stringify(text))
}
