/**
 * A migration as the CLI runs it: asks the VM's owner to migrate it, follows
 * the job (through any agent while the owner's restarts), and — where the
 * cluster has a probe client — plays the game client meanwhile, whose longest
 * silence is the blackout a user saw.
 */
import { AgentUnreachableError } from '../agent/client.ts';
import type { Job } from '../cluster/model.ts';
import { Probe, type StreamWindow } from '../lab/probe.ts';
import type { EarlierAttempt, MigrationParams, MigrationProgress, MigrationRecord, SwitchoverTimeline } from '../migration/types.ts';
import type { Cli } from './context.ts';
import type { IncomingDisk } from '../storage/types.ts';

export interface MigrationSummary {
  status: 'completed' | 'failed';
  vm: string;
  from: string;
  to: string;
  job: string;
  /** The last attempt's total (the one that completed, or the one that failed last); null: no record. */
  totalMs: number | null;
  /** From the first attempt's start to the last one's end (equal to totalMs after one attempt). */
  totalMsAllAttempts: number | null;
  downtimeMs: number | null;
  blackoutMs: number | null;
  packetsLost: number | null;
  packetsSent: number | null;
  /** RAM bytes sent (last attempt); null when the migration left no record. */
  bytes: number | null;
  /** Disk bytes the mirrors copied (local storage); 0 when the disks are shared, null: no record. */
  diskBytes: number | null;
  disks: { id: string; mode: IncomingDisk }[];
  rounds: number | null;
  policy: string | null;
  /** What the policy did, in order. */
  steps: string[];
  /** What a user should know about a completed migration. */
  warnings: string[];
  /** Attempts the migration took (one the memory check stopped is tried again); null: not recorded. */
  attempts: number | null;
  /** What stopped each attempt before the last, in order. */
  earlierAttempts: EarlierAttempt[];
  /** Where the client's blackout went, in ms (null: a moment that was not seen). */
  breakdown: BlackoutBreakdown | null;
  error?: string;
}

/**
 * A hop's blackout cut at the switchover's moments: the last reply the client got before the guest
 * stopped, the source's stop, the destination loaded, the memory check (when one ran), the ownership
 * swap, the destination's resume, and the first reply after it.
 */
export interface BlackoutBreakdown {
  /** Last reply before the gap → source stop (at most the probe's period, plus the reply's way back). */
  lastReplyToStop: number | null;
  /** Source stop → destination loaded: the final RAM pass and the device state (QEMU's downtime, seen from the destination). */
  stopToLoaded: number | null;
  /** Loaded → memory check done (null when no check ran). */
  verify: number | null;
  /** Loaded (or checked) → ownership swapped in the store. */
  toOwned: number | null;
  /** Ownership swapped → guest resumed on the destination (the resume request, stopping NBD exports, cont). */
  ownedToResumed: number | null;
  /** Resumed → first reply the client got (network learning the new port, the guest answering). */
  resumedToReply: number | null;
}

export function blackoutBreakdown(timeline: SwitchoverTimeline | undefined, window: StreamWindow | undefined): BlackoutBreakdown | null {
  if (!timeline) return null;
  const span = (from: number | null | undefined, to: number | null | undefined) =>
    from === null || from === undefined || to === null || to === undefined ? null : Math.round((to - from) * 10) / 10;
  const checked = timeline.verifiedAt ?? timeline.loadedAt;
  return {
    lastReplyToStop: span(window?.maxGapFrom, timeline.stoppedAt),
    stopToLoaded: span(timeline.stoppedAt, timeline.loadedAt),
    verify: timeline.verifiedAt === null ? null : span(timeline.loadedAt, timeline.verifiedAt),
    toOwned: span(checked, timeline.ownedAt),
    ownedToResumed: span(timeline.ownedAt, timeline.resumedAt),
    resumedToReply: span(timeline.resumedAt, window?.maxGapTo),
  };
}

export interface MigrateOptions {
  params?: Partial<MigrationParams>;
  /** Measure the blackout with a probe (when the cluster has a client namespace and the VM an address). */
  probe?: boolean;
  onProgress?: ((from: string, progress: MigrationProgress) => void) | undefined;
}

export async function migrateWithProbe(cli: Cli, name: string, to: string, options: MigrateOptions = {}): Promise<MigrationSummary> {
  const vm = await cli.vm(name);
  cli.agent(to); // an unknown host is a usage error before anything is asked of an agent
  const probe = options.probe !== false && vm.ip && cli.context.clientNetns ? await Probe.start(cli.context.clientNetns) : undefined;
  let window: StreamWindow | undefined;
  try {
    if (probe) {
      await probe.startStream(vm.ip!, 200);
      await new Promise((r) => setTimeout(r, 300)); // a baseline before the migration starts
      await probe.window();
    }
    const { job: started } = await cli.agent(vm.owner).call<{ job: Job }>('POST', `/v1/vms/${name}/migrate`, { to, token: vm.token, params: options.params ?? {} });
    const job = await follow(cli, started, vm.owner, (p) => options.onProgress?.(vm.owner, p));
    if (probe) {
      await new Promise((r) => setTimeout(r, 200));
      window = await probe.stopStream();
      // Into the migration's record (and its host's metrics): what the client saw. An older agent has no such route.
      if (job.state === 'succeeded' && window.maxGapMs !== null)
        await cli
          .agent(vm.owner)
          .call('POST', `/v1/jobs/${job.id}/blackout`, { blackoutMs: Math.round(window.maxGapMs), packetsLost: window.lost, packetsSent: window.sent })
          .catch(() => undefined);
    }
    const record = job.result as MigrationRecord | undefined;
    return {
      status: job.state === 'succeeded' ? 'completed' : 'failed',
      vm: name,
      from: vm.owner,
      to,
      job: job.id,
      totalMs: record?.totalMs ?? null,
      totalMsAllAttempts: record?.totalMsAllAttempts ?? null,
      downtimeMs: record?.downtimeMs ?? null,
      blackoutMs: window ? window.maxGapMs : null,
      packetsLost: window ? window.lost : null,
      packetsSent: window ? window.sent : null,
      bytes: record?.bytes ?? null,
      diskBytes: record?.diskBytes ?? null,
      disks: record?.disks ?? [],
      rounds: record?.rounds ?? null,
      policy: record?.plan?.policy ?? null,
      steps: (record?.steps ?? []).map((step) => step.reason),
      warnings: record?.warnings ?? [],
      attempts: record?.attempts ?? null,
      earlierAttempts: record?.earlierAttempts ?? [],
      breakdown: blackoutBreakdown(record?.switchover, window),
      ...(job.error ? { error: job.error } : {}),
    };
  } finally {
    await probe?.close();
  }
}

/** Polls a job until it ends. Jobs live in the store: any agent can report them, also while the owner's agent restarts. */
async function follow(cli: Cli, started: Job, owner: string, onProgress: (p: MigrationProgress) => void): Promise<Job> {
  let job = started;
  let unreachableSince = 0;
  let lastChange = Date.now();
  while (job.state === 'running') {
    await new Promise((r) => setTimeout(r, 200));
    try {
      const agent = unreachableSince ? await cli.anyAgent() : cli.agent(owner);
      const previous = job.updatedAt;
      job = (await agent.call<{ job: Job }>('GET', `/v1/jobs/${job.id}`)).job;
      unreachableSince = 0;
      if (job.updatedAt !== previous) lastChange = Date.now();
      else if (Date.now() - lastChange > 120_000)
        throw new AgentUnreachableError(`job ${job.id} has not moved for 2 minutes; the agent of ${owner} may be down (its restart resolves the job: see 'ferry job show ${job.id}')`);
    } catch (err) {
      if (!(err instanceof AgentUnreachableError)) throw err;
      unreachableSince ||= Date.now();
      if (Date.now() - unreachableSince > 120_000) throw err;
      continue;
    }
    if (job.progress) onProgress(job.progress);
  }
  return job;
}

/**
 * Moves a VM around the hosts in order, `rounds` times over, from where it is; `hop` migrates it to
 * the next host and says whether that completed. A hop that did not ends the tour.
 */
export async function tourHosts(hosts: string[], from: string, rounds: number, hop: (to: string) => Promise<boolean>): Promise<void> {
  let at = from;
  for (let i = 0; i < rounds * hosts.length; i++) {
    const to = hosts[(hosts.indexOf(at) + 1) % hosts.length]!;
    if (!(await hop(to))) return;
    at = to;
  }
}
