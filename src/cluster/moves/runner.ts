/**
 * Runs the move jobs (drain, return, balance), one step per tick, on the agent that is the HA
 * manager. Each tick reads the jobs and what became of the migrations they started, starts what the
 * limits allow, and writes the job back — guarded by the manager key's revision, so a deposed
 * manager writes nothing and a new one carries on from the record (KubeVirt's reconcile loop).
 *
 * Limits (KubeVirt: 5 per cluster, 2 out of a node; Proxmox: max_workers 4): at most `total`
 * migrations of the job at once, `perSource` out of one host, `perDestination` into one host —
 * counted over every running job, so two drains do not double what a host sends or takes.
 */
import type { HostRecord, Job, OwnedVm } from '../model.ts';
import { ClusterState } from '../model.ts';
import type { Store } from '../store/types.ts';
import { HA_KEYS } from '../ha/records.ts';
import { finished, MAX_ATTEMPTS, MoveRecords, type HostMaintenance, type MoveItem, type MoveJob } from './records.ts';

/** A migrate job not updated for this long, with no migration in flight, is taken as ended. */
const ABANDONED_AFTER_MS = 60_000;

export interface MoveActions {
  /** Starts the live migration of `vm` from its owner `from` to `to` (with `policy`, if any); the migrate job's id. */
  migrate(from: string, vm: string, to: string, policy?: string): Promise<string>;
  /** Cancels a migration under way on its source `from` (it rolls back). */
  cancel(from: string, vm: string, jobId: string): Promise<void>;
}

export class MoveRunner {
  private readonly records: MoveRecords;
  private readonly state: ClusterState;

  constructor(
    store: Store,
    private readonly actions: MoveActions,
    private readonly log: (line: string) => void,
  ) {
    this.records = new MoveRecords(store);
    this.state = new ClusterState(store);
  }

  /** One step of every unfinished job; false if the manager key is no longer `managerToken`'s. */
  async tick(managerToken: number): Promise<boolean> {
    const jobs = (await this.records.jobs()).filter((j) => !finished(j));
    if (!jobs.length) return true;
    const [vms, hosts, maintenances] = await Promise.all([this.state.vms(), this.state.hosts(), this.records.maintenances()]);
    const view: ClusterView = { vms: new Map(vms.map((v) => [v.spec.name, v])), alive: new Map(hosts.map((h) => [h.name, h])), maintenances };
    const write = (job: MoveJob) => this.records.putJobAsManager(job, HA_KEYS.manager, managerToken);
    jobs.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    const before = new Map(jobs.map((j) => [j.id, JSON.stringify(j)]));
    for (const job of jobs) await this.follow(job, view);
    const busy = inFlight(jobs);
    for (const job of jobs) {
      if (job.state === 'cancelling') await this.cancel(job);
      else {
        // Written down before acting: a manager deposed meanwhile starts nothing.
        const starting = this.choose(job, view, busy);
        if (starting.length && !(await write(job))) return false;
        await this.start(job, starting);
      }
      this.close(job);
      if (JSON.stringify(job) === before.get(job.id)) continue;
      if (!(await write(job))) return false;
      if (job.forMaintenance && job.host) await this.rememberLeft(job);
    }
    return true;
  }

  /** What became of the migrations under way: moved, or failed (rolled back, the VM where it was). */
  private async follow(job: MoveJob, view: ClusterView): Promise<void> {
    for (const item of job.items) {
      if (item.progress.state === 'starting') await this.resolveStarting(item, view);
      if (item.progress.state !== 'migrating') continue;
      const migration = await this.state.job(item.progress.jobId);
      const vm = view.vms.get(item.vm);
      if (migration?.state === 'succeeded' || (vm?.owner === item.to && migration?.state !== 'running')) {
        const seconds = migration ? (Date.parse(migration.updatedAt) - Date.parse(migration.createdAt)) / 1000 : (Date.now() - Date.parse(item.progress.startedAt)) / 1000;
        item.progress = { state: 'moved', jobId: item.progress.jobId, seconds: Math.round(seconds * 10) / 10 };
        this.log(`${job.kind} ${job.id}: ${item.vm} moved ${item.from} → ${item.to} in ${item.progress.seconds} s`);
      } else if (migration?.state === 'failed' || (!migration && vm?.owner === item.from) || (await this.abandoned(migration, item))) {
        const reason = failure(migration);
        const attempts = item.attempts ?? 1;
        // Tried again (an agent restarted under it, a transient refusal), unless cancelling or tried enough.
        if (job.state === 'running' && attempts < MAX_ATTEMPTS && vm?.owner === item.from) {
          item.progress = { state: 'waiting' };
          item.attempts = attempts + 1;
          this.log(`${job.kind} ${job.id}: ${item.vm} did not move (${reason}); trying again (${attempts + 1} of ${MAX_ATTEMPTS})`);
        } else {
          item.progress = { state: 'failed', jobId: item.progress.jobId, reason: `${reason}${attempts > 1 ? ` (after ${attempts} tries)` : ''}` };
          this.log(`${job.kind} ${job.id}: ${item.vm} did not move: ${item.progress.reason}`);
        }
      }
    }
  }

  /** A migrate job still said running, but nothing migrates the VM any more (its source's agent died and did not come back to close it). */
  private async abandoned(migration: Job | undefined, item: MoveItem): Promise<boolean> {
    if (migration?.state !== 'running' || Date.now() - Date.parse(migration.updatedAt) < ABANDONED_AFTER_MS) return false;
    return (await this.state.migration(item.vm)) === undefined;
  }

  private async cancel(job: MoveJob): Promise<void> {
    for (const item of job.items) {
      if (item.progress.state === 'migrating') await this.actions.cancel(item.from, item.vm, item.progress.jobId).catch((err: Error) => this.log(`${job.kind} ${job.id}: cancelling ${item.vm}: ${err.message}`));
    }
    if (!job.items.some((i) => i.progress.state === 'migrating' || i.progress.state === 'starting')) job.state = 'cancelled';
  }

  /** A start a manager wrote down and then did not record the outcome of (it died, or was deposed). */
  private async resolveStarting(item: MoveItem, view: ClusterView): Promise<void> {
    const migration = await this.state.migration(item.vm);
    if (migration && migration.destination === item.to) item.progress = { state: 'migrating', jobId: migration.jobId, startedAt: migration.startedAt };
    else if (view.vms.get(item.vm)?.owner === item.to) item.progress = { state: 'moved', jobId: '', seconds: 0 };
    else if (!migration) item.progress = { state: 'waiting' };
  }

  /** The waiting items the limits let start now, marked `starting`. */
  private choose(job: MoveJob, view: ClusterView, busy: Busy): MoveItem[] {
    if (job.state !== 'running') return [];
    const chosen: MoveItem[] = [];
    for (const item of job.items) {
      if (item.progress.state !== 'waiting') continue;
      if (busy.total(job.id) >= job.limits.total) break;
      if (busy.from(item.from) >= job.limits.perSource || busy.into(item.to) >= job.limits.perDestination) continue;
      const now = this.check(item, view, job);
      if (now) {
        item.progress = now;
        continue;
      }
      item.progress = { state: 'starting', since: new Date().toISOString() };
      busy.add(job.id, item);
      chosen.push(item);
    }
    return chosen;
  }

  private async start(job: MoveJob, items: MoveItem[]): Promise<void> {
    for (const item of items) {
      item.attempts ??= 1;
      try {
        const jobId = await this.actions.migrate(item.from, item.vm, item.to, job.policy);
        item.progress = { state: 'migrating', jobId, startedAt: new Date().toISOString() };
        this.log(`${job.kind} ${job.id}: ${item.vm} ${item.from} → ${item.to} (job ${jobId})`);
      } catch (err) {
        item.progress = { state: 'failed', reason: (err as Error).message };
        this.log(`${job.kind} ${job.id}: ${item.vm} refused: ${(err as Error).message}`);
      }
    }
  }

  /** A waiting item whose world changed: moved already, or it cannot go as planned any more. */
  private check(item: MoveItem, view: ClusterView, job: MoveJob): MoveItem['progress'] | undefined {
    const vm = view.vms.get(item.vm);
    if (!vm) return { state: 'blocked', reason: `the VM '${item.vm}' no longer exists` };
    if (vm.owner === item.to) return { state: 'moved', jobId: '', seconds: 0 };
    if (vm.owner !== item.from) return { state: 'blocked', reason: `it moved to ${vm.owner} meanwhile (not by this ${job.kind})` };
    if (vm.desired !== 'running') return { state: 'blocked', reason: 'it was stopped meanwhile: only a running VM is live-migrated' };
    if (!view.alive.has(item.to)) return { state: 'blocked', reason: `its destination ${item.to} is down; run the ${job.kind} again for a new plan` };
    const maintenance = view.maintenances.find((m) => m.host === item.to);
    if (maintenance && job.kind !== 'return') return { state: 'blocked', reason: `its destination ${item.to} went into maintenance; run the ${job.kind} again for a new plan` };
    return undefined;
  }

  private close(job: MoveJob): void {
    if (job.state === 'running' && !job.items.some((i) => ['waiting', 'starting', 'migrating'].includes(i.progress.state))) job.state = 'done';
    if (finished(job)) job.endedAt ??= new Date().toISOString();
  }

  /** The VMs a maintenance drain moved, for `ferry node maintenance off` to bring back. */
  private async rememberLeft(job: MoveJob): Promise<void> {
    const maintenance = await this.records.maintenance(job.host!);
    if (!maintenance || maintenance.drainId !== job.id) return;
    const left = job.items.filter((i) => i.progress.state === 'moved').map((i) => ({ vm: i.vm, to: i.to }));
    if (JSON.stringify(left) !== JSON.stringify(maintenance.left)) await this.records.putMaintenance({ ...maintenance, left } satisfies HostMaintenance);
  }
}

interface ClusterView {
  vms: Map<string, OwnedVm>;
  alive: Map<string, HostRecord>;
  maintenances: HostMaintenance[];
}

interface Busy {
  total(jobId: string): number;
  from(host: string): number;
  into(host: string): number;
  add(jobId: string, item: MoveItem): void;
}

/** The migrations under way in every running job, by job, source and destination. */
function inFlight(jobs: MoveJob[]): Busy {
  const perJob = new Map<string, number>();
  const from = new Map<string, number>();
  const into = new Map<string, number>();
  const add = (jobId: string, item: MoveItem) => {
    perJob.set(jobId, (perJob.get(jobId) ?? 0) + 1);
    from.set(item.from, (from.get(item.from) ?? 0) + 1);
    into.set(item.to, (into.get(item.to) ?? 0) + 1);
  };
  for (const job of jobs) for (const item of job.items) if (item.progress.state === 'migrating' || item.progress.state === 'starting') add(job.id, item);
  return { total: (id) => perJob.get(id) ?? 0, from: (h) => from.get(h) ?? 0, into: (h) => into.get(h) ?? 0, add };
}

function failure(migration: Job | undefined): string {
  if (!migration) return 'its migration left no job record; it runs where it was';
  return `${migration.error ?? 'its migration failed'} (job ${migration.id}; rolled back, it runs where it was)`;
}
