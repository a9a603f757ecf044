/** A mistake in how the command was called: printed with a hint, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
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
