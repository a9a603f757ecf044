/**
 * `ferry vm migrate --dry-run`: measure what decides a migration — the guest's
 * non-zero memory, its dirty rate, the link to the destination — and predict
 * each policy's outcome. Nothing moves.
 */
import { candidateHosts, type CandidateHost } from './cpu.ts';
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

/** Which past migrations a dry run learns from: all of them, only other VMs' (to judge it on a VM it has not seen), or none. */
export type HistoryChoice = 'all' | 'other-vms' | 'none';
export const HISTORY_CHOICES: readonly HistoryChoice[] = ['all', 'other-vms', 'none'];

/** Where one input of a prediction comes from: measured now, learned from past migrations, or assumed. */
export type InputBasis =
  | { basis: 'measured'; how: string }
  | { basis: 'learned'; from: number; how: string }
  | { basis: 'assumed'; why: string };

export interface DryRun {
  vm: string;
  from: string;
  to: string;
  /** What the simulation ran on; `basis` says, for each figure, whether it was measured, learned or assumed. */
  inputs: PredictionInput;
  basis: Record<keyof Required<PredictionInput>, InputBasis>;
  /** The past migrations it learned from (completed migrate jobs), as chosen by `history`. */
  history: { choice: HistoryChoice; migrations: number; vms: string[] };
  /**
   * Where `inputs.linkBytesPerSec` comes from: the probe's transfer to the destination, and the
   * throughput past migrations achieved (the lower one counts).
   */
  link: { probedBytesPerSec: number; achievedBytesPerSec?: number };
  predictions: Prediction[];
  /** What the destination lacks (CPU features, memory, disks, networks): a real migration would be refused in begin. */
  destinationProblems: string[];
  /** Every host as a destination: can it take the VM, and if not, why. */
  candidates: CandidateHost[];
}

/** Setup time assumed when no past migration says better: starting the destination, switchover, retiring the source. */
export const ASSUMED_SETUP_MS = 500;

export async function dryRun(ctx: AgentContext, name: string, to: string, history: HistoryChoice = 'all'): Promise<DryRun> {
  if (!HISTORY_CHOICES.includes(history)) throw new RefusedError(`history '${history}': choose one of ${HISTORY_CHOICES.join(', ')}`);
  const vm = await requireVm(ctx, name);
  if (vm.owner !== ctx.node.name) throw new RefusedError(`'${name}' runs on ${vm.owner}, not on ${ctx.node.name}`);
  if (to === ctx.node.name) throw new RefusedError(`'${name}' already runs on ${to}; choose another host`);
  const instance = ctx.runtime.require(name);
  const destination = await peer(ctx, to);

  const dirtyRateBytesPerSec = await sampleDirtyRate(instance, 1);
  const nonZero = await nonZeroBytes(instance);
  const probedBytesPerSec = await measureLink(destination);
  const past = history === 'none' ? [] : (await pastMigrations(ctx)).filter(({ record }) => history === 'all' || record.vm !== name);
  const stream = typicalStreamBytesPerSec(past);
  const linkBytesPerSec = stream ? Math.min(probedBytesPerSec, stream.bytesPerSec) : probedBytesPerSec;
  const setup = typicalSetupMs(past);
  const storage = await storageCatalog(ctx);
  const needs = await new LocalSource(instance, { storage }).diskNeeds();
  const candidates = await candidateHosts(ctx, name);
  const destinationProblems = [
    ...new Set([
      ...(candidates.hosts.find((h) => h.host === to)?.reasons ?? []),
      ...(await destination.call<{ problems: string[] }>('POST', '/v1/incoming/check', { spec: vm.spec, disks: needs }, 30_000)).problems,
    ]),
  ];
  const copied = (vm.spec.disks ?? []).filter((d) => !storage.get(d.pool).shared).map((d) => d.id);
  const diskCopyBytes = needs.filter((n) => copied.includes(n.id)).reduce((sum, n) => sum + n.allocatedBytes, 0);

  const inputs: PredictionInput = {
    guestBytes: vm.spec.memoryMiB * 2 ** 20,
    nonZeroBytes: nonZero,
    dirtyRateBytesPerSec,
    linkBytesPerSec,
    setupMs: setup?.ms ?? ASSUMED_SETUP_MS,
    diskCopyBytes,
  };
  const basis: DryRun['basis'] = {
    guestBytes: { basis: 'measured', how: "the VM's configured memory" },
    nonZeroBytes: { basis: 'measured', how: "a scan of the guest's RAM now" },
    dirtyRateBytesPerSec: { basis: 'measured', how: "QEMU's dirty-rate sampling over 1 s now" },
    linkBytesPerSec:
      stream && stream.bytesPerSec < probedBytesPerSec
        ? { basis: 'learned', from: stream.from, how: `the median stream throughput of ${stream.from} past unthrottled migrations, below the probe's` }
        : { basis: 'measured', how: `the best of three ${PROBE_BYTES / 2 / 2 ** 20} MiB transfers to ${to} now` },
    setupMs: setup
      ? { basis: 'learned', from: setup.from, how: `the median of ${setup.from} past migrations' total minus their perform phase` }
      : { basis: 'assumed', why: `no past migration to learn from (history: ${history})` },
    diskCopyBytes: { basis: 'measured', how: "the allocated size of the VM's disks on pools that are not shared" },
  };
  const predictions = POLICY_NAMES.map((policy) => predictMigration(inputs, planMigration({ name: policy }, vm.spec.memoryMiB)));
  return {
    vm: name,
    from: ctx.node.name,
    to,
    inputs,
    basis,
    history: { choice: history, migrations: past.length, vms: [...new Set(past.map(({ record }) => record.vm))].sort() },
    link: { probedBytesPerSec, ...(stream ? { achievedBytesPerSec: stream.bytesPerSec } : {}) },
    predictions,
    destinationProblems,
    candidates: candidates.hosts,
  };
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
    .flatMap((record) => {
      const perform = record.phases.find((p) => p.phase === 'perform');
      return perform ? [{ record, performMs: perform.ms }] : []; // a record without a perform phase teaches nothing
    });
}

function median(values: number[]): number | undefined {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * The stream throughput past migrations achieved (bytes sent over the perform phase, unthrottled
 * ones only), with how many it is the median of. On a busy host QEMU's stream is the bottleneck —
 * TLS in one thread, next to the guest's vCPUs — and the link probe alone overestimates it.
 */
function typicalStreamBytesPerSec(past: { record: MigrationRecord; performMs: number }[]): { bytesPerSec: number; from: number } | undefined {
  const rates = past
    .filter(({ record: r, performMs }) => r.plan?.maxBandwidth === 'unlimited' && !r.postcopy && performMs > 0 && r.bytes + r.diskBytes > 0)
    .map(({ record: r, performMs }) => (r.bytes + r.diskBytes) / (performMs / 1000));
  const value = median(rates);
  return value === undefined ? undefined : { bytesPerSec: value, from: rates.length };
}

/**
 * What a migration costs besides streaming RAM (starting the destination, switchover, retiring the
 * source): the median of past migrations' total minus perform, with how many; none without history.
 */
function typicalSetupMs(past: { record: MigrationRecord; performMs: number }[]): { ms: number; from: number } | undefined {
  const value = median(past.map(({ record, performMs }) => record.totalMs - performMs));
  return value === undefined ? undefined : { ms: value, from: past.length };
}
