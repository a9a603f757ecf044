/**
 * Trying a migration again after the memory check caught pages QEMU lost in the stream. Such a
 * migration never switched over: the guest runs on the source as before and the destination is
 * gone, so another attempt (with a fresh destination) is safe. The check runs by default only on a
 * QEMU with a known page-losing defect (< 9.0 under TCG, qemu/version.ts), which lost pages even in
 * short, unthrottled TLS migrations (3 of 24 hops of a busy 256 MiB guest here). The record of the
 * last attempt says how many there were, what stopped each earlier one, and the time all took.
 */
import { MigrationRolledBackError } from './errors.ts';
import type { EarlierAttempt, MigrationRecord } from './types.ts';

/** Attempts in all, the first included. */
export const LOST_PAGES_ATTEMPTS = 3;

export async function retryOnLostPages(
  attempt: (n: number) => Promise<MigrationRecord>,
  options: { signal?: AbortSignal; log?: (line: string) => void; attempts?: number } = {},
): Promise<MigrationRecord> {
  const attempts = options.attempts ?? LOST_PAGES_ATTEMPTS;
  const started = Date.now();
  const earlier: EarlierAttempt[] = [];
  const counted = (record: MigrationRecord, n: number): MigrationRecord =>
    Object.assign(record, { attempts: n, earlierAttempts: [...earlier], totalMsAllAttempts: n === 1 ? record.totalMs : Math.max(record.totalMs, Date.now() - started) });
  for (let n = 1; ; n++) {
    try {
      return counted(await attempt(n), n);
    } catch (err) {
      if (err instanceof MigrationRolledBackError) counted(err.record, n);
      if (!(err instanceof MigrationRolledBackError && err.record.failure?.lostPages && n < attempts && !options.signal?.aborted)) throw err;
      const failure = err.record.failure;
      earlier.push({ startedAt: err.record.startedAt, totalMs: err.record.totalMs, phase: failure.phase, reason: failure.reason });
      options.log?.(`attempt ${n} of ${attempts} rolled back: ${failure.reason}; the guest runs on the source unchanged; trying again`);
    }
  }
}
