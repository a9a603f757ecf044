/** Plain-text output helpers for the CLI: tables, sizes, durations. */

export function mib(bytes: number | null | undefined): string {
  return bytes === null || bytes === undefined ? '-' : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function ms(value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `${Math.round(value)} ms`;
}

/** A left-aligned first column and right-aligned figures, like `virsh domjobinfo`. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function median(values: number[]): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Median of the values that were measured (a missing one is left out, never counted as 0), with how many there were. */
export function medianOfMeasured(values: (number | null | undefined)[]): { value: number | null; n: number } {
  const seen = values.filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  return { value: seen.length ? median(seen) : null, n: seen.length };
}

/** "54 ms (of 3)", or "-" when nothing was measured. */
export function medianCell(values: (number | null | undefined)[], unit: (v: number) => string = ms): string {
  const m = medianOfMeasured(values);
  return m.value === null ? '-' : `${unit(m.value)} (of ${m.n})`;
}

/** "1 attempt", or "3 attempts (2 rolled back: REASON; REASON)": a result never hides the tries it took. */
export function attemptsText(attempts: number | null | undefined, earlier: { reason: string }[] = []): string {
  if (attempts === null || attempts === undefined) return 'attempts not recorded';
  if (attempts === 1) return '1 attempt';
  return `${attempts} attempts (${earlier.length} rolled back${earlier.length ? `: ${earlier.map((a) => a.reason).join('; ')}` : ''})`;
}
