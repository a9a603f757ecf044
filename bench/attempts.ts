/**
 * A benchmark run counts its tries. A ferry migration that rolled back left the guest running on
 * the source unchanged, so the run tries again with a fresh destination (as the agents do after
 * lost pages) — and the tables say how many attempts the runs took, so that a variant that needed
 * retries cannot look as clean as one that did not. Any other failure ends the benchmark.
 */
import { MigrationRolledBackError } from '../src/migration/errors.ts';

export const BENCH_ATTEMPTS = 3;

export interface Counted<T> {
  value: T;
  /** Attempts this run took, the one that completed included. */
  attempts: number;
  /** What stopped the earlier ones. */
  failures: string[];
}

export async function countAttempts<T>(attempt: () => Promise<T>, log: (line: string) => void = () => undefined): Promise<Counted<T>> {
  const failures: string[] = [];
  for (let n = 1; ; n++) {
    try {
      return { value: await attempt(), attempts: n, failures };
    } catch (err) {
      if (!(err instanceof MigrationRolledBackError) || n >= BENCH_ATTEMPTS) throw err;
      const reason = `${err.record.failure?.phase ?? '?'}: ${err.record.failure?.reason ?? err.message}`;
      failures.push(reason);
      log(`attempt ${n} rolled back (${reason}); trying again`);
    }
  }
}

/** "7 for 5 runs" (2 retried), or "5 for 5 runs". */
export function attemptsCell(samples: { attempts: number }[]): string {
  return `${samples.reduce((sum, s) => sum + s.attempts, 0)} for ${samples.length}`;
}
