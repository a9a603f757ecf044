/**
 * How long each VM's move is expected to take, for the order of a drain (shortest first: the most
 * VMs off the host soonest) and for its plan. Learned from the migrate jobs the cluster keeps: the
 * VM's own last completed migration if it has one (its memory and dirty rate as they were then), else
 * its memory at the median rate of the cluster's completed migrations; with none to learn from, no
 * figure (the order is then by memory, and the plan says so).
 */
import type { Job } from '../model.ts';
import type { MigrationRecord } from '../../migration/types.ts';

export interface PredictedMove {
  seconds: number;
  basis: string;
}

export type MovePredictor = (vm: string, memoryMiB: number) => PredictedMove | undefined;

export function predictorFrom(jobs: Job[]): MovePredictor {
  const completed = jobs
    .filter((j) => j.kind === 'migrate' && j.state === 'succeeded' && isRecord(j.result) && j.result.outcome === 'completed' && j.result.totalMs > 0)
    .map((j) => j.result as MigrationRecord)
    .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  const lastOf = new Map(completed.map((r) => [r.vm, r]));
  // Guest memory moved per second: what a migration of a VM of that size took, all told.
  const rates = completed.map((r) => r.bytes / 2 ** 20 / (r.totalMs / 1000)).sort((a, b) => a - b);
  const median = rates.length ? rates[Math.floor(rates.length / 2)]! : undefined;
  return (vm, memoryMiB) => {
    const last = lastOf.get(vm);
    if (last) return { seconds: round(last.totalMs / 1000), basis: `its last migration (${last.startedAt.slice(0, 16).replace('T', ' ')})` };
    if (median === undefined) return undefined;
    return { seconds: round(memoryMiB / median), basis: `its memory at the median ${round(median)} MiB/s of ${rates.length} migration(s)` };
  };
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

function isRecord(result: Job['result']): result is MigrationRecord {
  return typeof result === 'object' && result !== null && 'outcome' in result && 'totalMs' in result;
}
