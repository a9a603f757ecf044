/**
 * `ferry vm migrate --dry-run`: measure what decides a migration — the guest's
 * non-zero memory, its dirty rate, the link to the destination — and predict
 * each policy's outcome. Nothing moves.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { planMigration, POLICY_NAMES } from '../migration/policy/policy.ts';
import { predictMigration, type Prediction, type PredictionInput } from '../migration/predict.ts';
import type { MigrationRecord } from '../migration/types.ts';
import { sampleDirtyRate } from '../qemu/dirty-rate.ts';
import { nonZeroBytes } from '../qemu/ram-scan.ts';
import type { AgentClient } from './client.ts';
import { peer, requireVm, storageCatalog, type AgentContext } from './context.ts';
import { LocalSource } from '../migration/local.ts';
import { RefusedError } from './errors.ts';

const PROBE_BYTES = 32 * 2 ** 20;

export interface DryRun {
  vm: string;
  from: string;
  to: string;
  measured: PredictionInput;
  /**
   * Where `measured.linkBytesPerSec` comes from: the probe's transfer to the destination, and the
   * throughput this cluster's past migrations achieved (the lower one counts).
   */
  link: { probedBytesPerSec: number; achievedBytesPerSec?: number };
  predictions: Prediction[];
  /** Why a real migration to this destination would be refused for its storage (empty: it would not). */
  storageProblems: string[];
}

export async function dryRun(ctx: AgentContext, name: string, to: string): Promise<DryRun> {
  const vm = await requireVm(ctx, name);
  if (vm.owner !== ctx.node.name) throw new RefusedError(`'${name}' runs on ${vm.owner}, not on ${ctx.node.name}`);
  if (to === ctx.node.name) throw new RefusedError(`'${name}' already runs on ${to}; choose another host`);
  const instance = ctx.runtime.require(name);
  const destination = await peer(ctx, to);

  const dirtyRateBytesPerSec = await sampleDirtyRate(instance, 1);
  const nonZero = await nonZeroBytes(instance);
  const probedBytesPerSec = await measureLink(destination);
  const past = await pastMigrations(ctx);
  const achievedBytesPerSec = typicalStreamBytesPerSec(past);
  const linkBytesPerSec = achievedBytesPerSec ? Math.min(probedBytesPerSec, achievedBytesPerSec) : probedBytesPerSec;
  const storage = await storageCatalog(ctx);
  const needs = await new LocalSource(instance, { storage }).diskNeeds();
  const storageProblems = (vm.spec.disks ?? []).length
    ? (await destination.call<{ problems: string[] }>('POST', '/v1/incoming/check-storage', { spec: vm.spec, disks: needs }, 30_000)).problems
    : [];
  const copied = (vm.spec.disks ?? []).filter((d) => !storage.get(d.pool).shared).map((d) => d.id);
  const diskCopyBytes = needs.filter((n) => copied.includes(n.id)).reduce((sum, n) => sum + n.allocatedBytes, 0);

  const measured: PredictionInput = {
    guestBytes: vm.spec.memoryMiB * 2 ** 20,
    nonZeroBytes: nonZero,
    dirtyRateBytesPerSec,
    linkBytesPerSec,
    setupMs: typicalSetupMs(past),
    diskCopyBytes,
  };
  const predictions = POLICY_NAMES.map((policy) => predictMigration(measured, planMigration({ name: policy }, vm.spec.memoryMiB)));
  return { vm: name, from: ctx.node.name, to, measured, link: { probedBytesPerSec, ...(achievedBytesPerSec ? { achievedBytesPerSec } : {}) }, predictions, storageProblems };
}

/**
 * The link's throughput to the destination: the best of three transfers of random bytes (nothing
 * on the way can compress them), so that a moment of load on a shared machine does not pass for
 * a slow link.
 */
async function measureLink(destination: AgentClient): Promise<number> {
  const payload = randomBytes(PROBE_BYTES / 2);
  let best = 0;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await destination.send('/v1/sink', payload, 60_000);
    best = Math.max(best, payload.length / ((performance.now() - t0) / 1000));
  }
  return best;
}

/** This cluster's completed migrations, each with the time its perform phase took. */
async function pastMigrations(ctx: AgentContext): Promise<{ record: MigrationRecord; performMs: number }[]> {
  return (await ctx.state.jobs())
    .filter((j) => j.kind === 'migrate' && j.state === 'succeeded')
    .map((j) => j.result as MigrationRecord | undefined)
    .filter((r): r is MigrationRecord => !!r?.phases)
    .map((record) => ({ record, performMs: record.phases.find((p) => p.phase === 'perform')?.ms ?? 0 }));
}

function median(values: number[]): number | undefined {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * The stream throughput past migrations achieved (bytes sent over the perform phase, unthrottled
 * ones only). On a busy host QEMU's stream is the bottleneck — TLS in one thread, next to the
 * guest's vCPUs — and the link probe alone overestimates it.
 */
function typicalStreamBytesPerSec(past: { record: MigrationRecord; performMs: number }[]): number | undefined {
  return median(
    past
      .filter(({ record: r, performMs }) => r.plan?.maxBandwidth === 'unlimited' && !r.postcopy && performMs > 0 && r.bytes + (r.diskBytes ?? 0) > 0)
      .map(({ record: r, performMs }) => (r.bytes + (r.diskBytes ?? 0)) / (performMs / 1000)),
  );
}

/**
 * What a migration costs besides streaming RAM (starting the destination, switchover, retiring the
 * source): past migrations' total minus perform; 500 ms before any.
 */
function typicalSetupMs(past: { record: MigrationRecord; performMs: number }[]): number {
  return median(past.map(({ record, performMs }) => record.totalMs - performMs)) ?? 500;
}
