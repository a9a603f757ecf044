/** Reading QEMU's query-migrate answer into ferry's types. */
import type { QemuMigrationSummary } from './sides.ts';
import type { RamProgress } from './types.ts';

/** The part of QEMU's MigrationInfo that ferry reads. */
export interface QemuMigrationInfo {
  status?: string;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  'cpu-throttle-percentage'?: number;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    'dirty-pages-rate'?: number;
    'page-size'?: number;
    'dirty-sync-count'?: number;
    mbps?: number;
  };
}

/** Statuses in which a migration is still under way on the source. */
export const ACTIVE_STATUSES = new Set(['setup', 'active', 'device', 'pre-switchover', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'wait-unplug', 'cancelling']);

export function toRamProgress(info: QemuMigrationInfo): RamProgress {
  const ram = info.ram;
  return {
    qemuStatus: info.status ?? 'none',
    transferredBytes: ram?.transferred ?? 0,
    remainingBytes: ram?.remaining ?? 0,
    totalBytes: ram?.total ?? 0,
    dirtyRateBytesPerSec: (ram?.['dirty-pages-rate'] ?? 0) * (ram?.['page-size'] ?? 4096),
    expectedDowntimeMs: info['expected-downtime'] ?? 0,
    round: ram?.['dirty-sync-count'] ?? 0,
    throughputBytesPerSec: Math.round(((ram?.mbps ?? 0) * 1e6) / 8),
    throttlePercent: info['cpu-throttle-percentage'] ?? 0,
  };
}

export function toSummary(info: QemuMigrationInfo): QemuMigrationSummary {
  return {
    status: info.status ?? 'none',
    downtimeMs: info.downtime ?? null,
    setupMs: info['setup-time'] ?? null,
    totalMs: info['total-time'] ?? null,
    bytes: info.ram?.transferred ?? 0,
    rounds: info.ram?.['dirty-sync-count'] ?? 0,
    ...(info['error-desc'] ? { error: info['error-desc'] } : {}),
  };
}
