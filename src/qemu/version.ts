/**
 * QEMU versions, and the defects of old ones that ferry has to work around.
 *
 * The one that matters most: before 9.0, QEMU under TCG loses dirty pages during migration. The
 * fast path of cpu_physical_memory_sync_dirty_bitmap() cleared migration dirty bits without
 * resetting TCG's TLB entries, so later guest stores through those entries were never marked dirty
 * (fixed upstream by commit 03bfc2188f06, "physmem: Fix migration dirty bitmap coherency with TCG
 * memory access"; Debian 12's 7.2 does not carry it).
 */
import type { Accel } from './spec.ts';

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

export class QemuVersionFormatError extends Error {
  override name = 'QemuVersionFormatError';
}

export function parseQemuVersion(text: string): QemuVersion {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(text.trim());
  if (!m) throw new QemuVersionFormatError(`'${text}' is not a QEMU version (expected MAJOR.MINOR[.MICRO])`);
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0) };
}

export function formatQemuVersion(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}`;
}

/** Negative when a is older than b. */
export function compareQemuVersions(a: QemuVersion, b: QemuVersion): number {
  return a.major - b.major || a.minor - b.minor || a.micro - b.micro;
}

/** The first QEMU release whose TCG dirty tracking does not lose pages in migration. */
export const TCG_DIRTY_TRACKING_FIXED_IN: QemuVersion = { major: 9, minor: 0, micro: 0 };

export function tcgDirtyTrackingSound(v: QemuVersion): boolean {
  return compareQemuVersions(v, TCG_DIRTY_TRACKING_FIXED_IN) >= 0;
}

/**
 * Why a migration from this QEMU must compare RAM before switching over (and may not use post-copy),
 * or undefined when no known defect makes that necessary.
 */
export function lostPagesDefect(v: QemuVersion, accel: Accel): string | undefined {
  if (accel !== 'tcg' || tcgDirtyTrackingSound(v)) return undefined;
  return (
    `QEMU ${formatQemuVersion(v)} under TCG loses dirty pages during migration (fixed in QEMU 9.0 by commit 03bfc2188f06, ` +
    `"physmem: Fix migration dirty bitmap coherency with TCG memory access"); upgrade QEMU — on Debian 12 'bash scripts/setup.sh' ` +
    `installs QEMU 10 from bookworm-backports`
  );
}
