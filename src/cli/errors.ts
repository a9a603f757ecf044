import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A mistake in how the command was called: printed with a hint, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * node:util's parseArgs (strict: an unknown flag, a flag without its value or a value for a switch
 * is refused), its refusals as usage errors: every way to call a command wrongly ends the same way.
 */
export function parseCommandLine<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (err) {
    if (String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS')) throw new UsageError(`${(err as Error).message} (see --help)`);
    throw err;
  }
}

/** The value of a --flag that must be a whole number ≥ 0; undefined when the flag was not given. */
export function wholeNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${flag} must be a whole number, not '${value}'`);
  return n;
}

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** A size like 512M, 1G, 1.5G or 1073741824 (bytes), as qemu-img takes it. */
export function sizeBytes(flag: string, value: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(value.trim());
  if (!m) throw new UsageError(`--${flag} ${value}: give a size like 512M, 1G or a number of bytes`);
  const bytes = Math.round(Number(m[1]) * UNITS[m[2]!.toUpperCase()]!);
  if (bytes < 2 ** 20 || bytes % 512 !== 0) throw new UsageError(`--${flag} ${value}: a disk must be at least 1M and a multiple of 512 bytes`);
  return bytes;
}
