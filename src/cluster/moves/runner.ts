/**
 * Runs the move jobs (drain, return, balance), one step per tick, on the agent that is the HA
 * manager. Each tick reads the jobs and what became of the migrations they started, starts what the
 * limits allow, and writes the job back — guarded by the manager key's revision (a deposed manager
 * writes nothing) and by the job's own (a cancel written meanwhile is never overwritten: the runner
 * reads again next tick). A new manager carries on from the record (KubeVirt's reconcile loop).
 *
 * Limits (KubeVirt: 5 per cluster, 2 out of a node; Proxmox: max_workers 4): at most `total`
 * migrations of the job at once, `perSource` out of one host, `perDestination` into one host —
 * counted over every running job, so two jobs do not double what a host sends or takes.
 */
import type { HostRecord, Job, OwnedVm } from '../model.ts';
import { ClusterState } from '../model.ts';
import type { Store } from '../store/types.ts';
import { HA_KEYS } from '../ha/records.ts';
import { finished, MAX_ATTEMPTS, MoveRecords, type HostMaintenance, type MoveItem, type MoveJob, type StoredMoveJob } from './records.ts';

/**
 * A migrate job not updated for this long whose migration is not in flight any more, or whose source
 * has no lease, is taken as ended; a `starting` with no migration after it, as never asked (the
 * migrate request's own timeout is 30 s).
 */
const SETTLED_AFTER_MS = 60_000;

const KEEP_ENDED_MS = 7 * 86_400_000;
const IDLE_LOOK_MS = 3_600_000;

export interface MoveActions {
  /** Starts the live migration of `vm` from its owner `from` to `to` (with `policy`, if any); the migrate job's id. */
  migrate(from: string, vm: string, to: string, policy?: string): Promise<string>;
  /** Cancels a migration under way on its source `from` (it rolls back). */
  cancel(from: string, vm: string, jobId: string): Promise<void>;
}

export class MoveRunner {
  private readonly records: MoveRecords;
  private readonly state: ClusterState;
  /**
   * The store's revision when the last look found no job to run, and when that was: while it stays,
   * there is none (as the HA manager's idle ticks); looked at hourly all the same, for ended jobs to age out.
   */
  private idle: { revision: number; at: number } | undefined;

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
    const revision = await this.state.store.revision();
    if (this.idle?.revision === revision && performance.now() - this.idle.at < IDLE_LOOK_MS) return true;
    const all = await this.records.jobs();
    // Ended jobs are kept a week for `ferry job show`, then forgotten (every tick reads the list) —
    // not the drain of a host still in maintenance: `off` brings back what it moved.
    const aged = all.filter((j) => finished(j) && j.endedAt && Date.now() - Date.parse(j.endedAt) > KEEP_ENDED_MS);
    if (aged.length) {
      const kept = new Set((await this.records.maintenances()).map((m) => m.drainId));
      for (const old of aged) if (!kept.has(old.id)) await this.records.removeJob(old);
    }
    const jobs = all.filter((j) => !finished(j));
    if (!jobs.length) {
      this.idle = { revision, at: performance.now() };
      return true;
    }
    this.idle = undefined;
    const [vms, hosts, maintenances] = await Promise.all([this.state.vms(), this.state.hosts(), this.records.maintenances()]);
    const view: ClusterView = { vms: new Map(vms.map((v) => [v.spec.name, v])), alive: new Map(hosts.map((h) => [h.name, h])), maintenances };
    /** Writes a job; false when the manager key is not ours any more (stop), or someone wrote the job meanwhile (skip it). */
    const write = async (job: StoredMoveJob): Promise<'written' | 'job changed' | 'deposed'> => {
      const revision = await this.records.putJobAsManager(job, HA_KEYS.manager, managerToken);
      if (revision !== undefined) {
        job.revision = revision;
        return 'written';
      }
      const manager = await this.state.store.get(HA_KEYS.manager);
      return manager?.modRevision === managerToken ? 'job changed' : 'deposed';
    };
    jobs.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    const before = new Map(jobs.map((j) => [j.id, JSON.stringify(j)]));
    for (const job of jobs) await this.follow(job, view);
    const busy = inFlight(jobs);
    for (const job of jobs) {
      if (job.state === 'cancelling') await this.cancel(job);
      else {
        // Written down before acting: a manager deposed meanwhile, or a job cancelled meanwhile, starts nothing.
        const starting = this.choose(job, view, busy);
        if (starting.length) {
          const written = await write(job);
          if (written === 'deposed') return false;
          if (written === 'job changed') continue;
        }
        await this.start(job, starting);
      }
      this.close(job);
      if (JSON.stringify(job) === before.get(job.id)) continue;
      const written = await write(job);
      if (written === 'deposed') return false;
      // Changed meanwhile (a cancel): the migrations this tick started are put into the fresh record, the rest is read again next tick.
      if (written === 'job changed' && !(await this.mergeStarted(job, write))) return false;
    }
    return true;
  }

  private async mergeStarted(job: MoveJob, write: (job: StoredMoveJob) => Promise<'written' | 'job changed' | 'deposed'>): Promise<boolean> {
    const fresh = await this.records.job(job.id);
    if (!fresh) return true;
    let changed = false;
    for (const item of fresh.items) {
      const mine = job.items.find((i) => i.vm === item.vm);
      if (mine?.progress.state === 'migrating' && (item.progress.state === 'waiting' || item.progress.state === 'starting')) {
        item.progress = mine.progress;
        item.attempts = mine.attempts;
        changed = true;
      }
    }
    return !changed || (await write(fresh)) !== 'deposed';
  }

  /** What became of the migrations under way: moved, failed (rolled back: tried again), or ended by other means. */
  private async follow(job: MoveJob, view: ClusterView): Promise<void> {
    for (const item of job.items) {
      const vm = view.vms.get(item.vm);
      if (item.progress.state === 'starting') await this.resolveStarting(item, vm);
      if (item.progress.state !== 'migrating') continue;
      const migration = await this.state.job(item.progress.jobId);
      if (migration?.state === 'succeeded' || (vm?.owner === item.to && migration?.state !== 'running')) {
        const seconds = migration ? (Date.parse(migration.updatedAt) - Date.parse(migration.createdAt)) / 1000 : (Date.now() - Date.parse(item.progress.startedAt)) / 1000;
        item.progress = { state: 'moved', jobId: item.progress.jobId, seconds: Math.round(seconds * 10) / 10 };
        this.log(`${job.kind} ${job.id}: ${item.vm} moved ${item.from} → ${item.to} in ${item.progress.seconds} s`);
      } else if (vm && vm.owner !== item.from && vm.owner !== item.to) {
        item.progress = { state: 'elsewhere', owner: vm.owner };
        this.log(`${job.kind} ${job.id}: ${item.vm} is on ${vm.owner} now, by other means`);
      } else if (!vm) {
        item.progress = { state: 'blocked', reason: `the VM '${item.vm}' no longer exists` };
      } else if (migration?.state === 'failed' || !migration || (await this.settled(migration, item, view))) {
        this.retryOrFail(job, item, failure(migration), item.progress.jobId);
      }
    }
  }

  /** A failed try: tried again (an agent restarted under it, a refusal of the moment), unless cancelling or tried enough. */
  private retryOrFail(job: MoveJob, item: MoveItem, reason: string, jobId?: string): void {
    const attempts = item.attempts ?? 1;
    if (job.state === 'running' && attempts < MAX_ATTEMPTS) {
      item.progress = { state: 'waiting' };
      item.attempts = attempts + 1;
      this.log(`${job.kind} ${job.id}: ${item.vm} did not move (${reason}); trying again (${attempts + 1} of ${MAX_ATTEMPTS})`);
    } else {
      item.progress = { state: 'failed', ...(jobId ? { jobId } : {}), reason: `${reason}${attempts > 1 ? ` (after ${attempts} tries)` : ''}` };
      this.log(`${job.kind} ${job.id}: ${item.vm} did not move: ${item.progress.reason}`);
    }
  }

  /** A migrate job still said running, but nothing migrates the VM any more: its source's agent died, and did not come back to close it. */
  private async settled(migration: Job, item: MoveItem, view: ClusterView): Promise<boolean> {
    if (migration.state !== 'running' || Date.now() - Date.parse(migration.updatedAt) < SETTLED_AFTER_MS) return false;
    return !view.alive.has(item.from) || (await this.state.migration(item.vm)) === undefined;
  }

  private async cancel(job: MoveJob): Promise<void> {
    for (const item of job.items) {
      if (item.progress.state === 'migrating') await this.actions.cancel(item.from, item.vm, item.progress.jobId).catch((err: Error) => this.log(`${job.kind} ${job.id}: cancelling ${item.vm}: ${err.message}`));
    }
    if (!job.items.some((i) => i.progress.state === 'migrating' || i.progress.state === 'starting')) job.state = 'cancelled';
  }

  /** A start written down whose outcome was not (the manager died or was deposed, or a cancel was written meanwhile). */
  private async resolveStarting(item: MoveItem, vm: OwnedVm | undefined): Promise<void> {
    if (item.progress.state !== 'starting') return;
    const migration = await this.state.migration(item.vm);
    if (migration && migration.destination === item.to) item.progress = { state: 'migrating', jobId: migration.jobId, startedAt: migration.startedAt };
    else if (vm?.owner === item.to) item.progress = { state: 'moved', jobId: '', seconds: 0 };
    // Never asked, or refused: once the ask itself could not still be under way.
    else if (!migration && Date.now() - Date.parse(item.progress.since) > SETTLED_AFTER_MS) item.progress = { state: 'waiting' };
  }

  /** The waiting items the limits let start now, marked `starting`. */
  private choose(job: MoveJob, view: ClusterView, busy: Busy): MoveItem[] {
    if (job.state !== 'running') return [];
    const chosen: MoveItem[] = [];
    for (const item of job.items) {
      if (item.progress.state !== 'waiting') continue;
      if (busy.total(job.id) >= job.limits.total) break;
      if (busy.vm(item.vm) || busy.from(item.from) >= job.limits.perSource || busy.into(item.to) >= job.limits.perDestination) continue;
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
        this.retryOrFail(job, item, `refused: ${(err as Error).message}`);
      }
    }
  }

  /** A waiting item whose world changed: moved already, gone by other means, or it cannot go as planned any more. */
  private check(item: MoveItem, view: ClusterView, job: MoveJob): MoveItem['progress'] | undefined {
    const vm = view.vms.get(item.vm);
    if (!vm) return { state: 'blocked', reason: `the VM '${item.vm}' no longer exists` };
    if (vm.owner === item.to) return { state: 'moved', jobId: '', seconds: 0 };
    if (vm.owner !== item.from) return { state: 'elsewhere', owner: vm.owner };
    if (vm.desired !== 'running') return { state: 'blocked', reason: 'it was stopped meanwhile: only a running VM is live-migrated' };
    if (!view.alive.has(item.to)) return { state: 'blocked', reason: `its destination ${item.to} is down; run the ${job.kind} again for a new plan` };
    if (view.maintenances.some((m) => m.host === item.to)) return { state: 'blocked', reason: `its destination ${item.to} went into maintenance; run the ${job.kind} again for a new plan` };
    return undefined;
  }

  private close(job: MoveJob): void {
    if (job.state === 'running' && !job.items.some((i) => ['waiting', 'starting', 'migrating'].includes(i.progress.state))) job.state = 'done';
    if (finished(job)) job.endedAt ??= new Date().toISOString();
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
  /** Whether the VM is being moved by any job. */
  vm(name: string): boolean;
  add(jobId: string, item: MoveItem): void;
}

/** The migrations under way in every running job, by job, source, destination and VM. */
function inFlight(jobs: MoveJob[]): Busy {
  const perJob = new Map<string, number>();
  const from = new Map<string, number>();
  const into = new Map<string, number>();
  const vms = new Set<string>();
  const add = (jobId: string, item: MoveItem) => {
    perJob.set(jobId, (perJob.get(jobId) ?? 0) + 1);
    from.set(item.from, (from.get(item.from) ?? 0) + 1);
    into.set(item.to, (into.get(item.to) ?? 0) + 1);
    vms.add(item.vm);
  };
  for (const job of jobs) for (const item of job.items) if (item.progress.state === 'migrating' || item.progress.state === 'starting') add(job.id, item);
  return { total: (id) => perJob.get(id) ?? 0, from: (h) => from.get(h) ?? 0, into: (h) => into.get(h) ?? 0, vm: (name) => vms.has(name), add };
}

function failure(migration: Job | undefined): string {
  if (!migration) return 'its migration left no job record; it runs where it was';
  return `${migration.error ?? 'its migration failed'} (job ${migration.id}; rolled back, it runs where it was)`;
}
