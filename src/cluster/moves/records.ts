/**
 * What a drain (and its return, and a balance) is, written down before anything moves: a move job,
 * a list of live migrations with their limits, run by the agent that is the HA manager (one at a
 * time in the cluster; a new one carries on from the record after a restart at any line) — KubeVirt's
 * migration controller, Proxmox's node maintenance.
 *
 *   /ferry/ha/moves/<id>                 a move job (drain, return, balance)
 *   /ferry/ha/host-maintenance/<host>    a host in maintenance: it takes no new VM
 */
import type { Store } from '../store/types.ts';
import { HaRecords } from '../ha/records.ts';

export type MoveJobKind = 'drain' | 'return' | 'balance';

/** One VM's way through a move job. */
export type MoveState =
  | { state: 'waiting' }
  /** Written down before the migration is asked for: a manager that dies here leaves this, and the next one looks. */
  | { state: 'starting'; since: string }
  | { state: 'migrating'; jobId: string; startedAt: string }
  | { state: 'moved'; jobId: string; seconds: number }
  /** It cannot move (no host with room, a disk only its host has…): the others go on. */
  | { state: 'blocked'; reason: string }
  /** Its migration failed or was cancelled: rolled back, it runs where it was. */
  | { state: 'failed'; jobId?: string; reason: string }
  /** It left its host by other means meanwhile (HA recovered it, an admin moved it): not this job's to move. */
  | { state: 'elsewhere'; owner: string };

export interface MoveItem {
  vm: string;
  from: string;
  to: string;
  memoryMiB: number;
  /** Why this destination (the plan's words), or why none. */
  why: string;
  progress: MoveState;
  /** How long its move is expected to take, and from what (absent: nothing to learn from yet). */
  predicted?: { seconds: number; basis: string };
  /** Migrations tried for it (one that failed, or was interrupted by an agent's restart, is tried again). */
  attempts?: number;
}

/** Tries per VM before it is left `failed`. */
export const MAX_ATTEMPTS = 3;

export type MoveJobState = 'running' | 'cancelling' | 'cancelled' | 'done';

export interface MoveLimits {
  /** Migrations at once in the whole job. */
  total: number;
  /** Out of one host at once. */
  perSource: number;
  /** Into one host at once. */
  perDestination: number;
}

export interface MoveJob {
  id: string;
  kind: MoveJobKind;
  /** The drained host (drain), the host VMs return to (return); absent for a balance. */
  host?: string;
  state: MoveJobState;
  limits: MoveLimits;
  items: MoveItem[];
  createdAt: string;
  by: string;
  /** The migration policy of its migrations (`--policy`, as `ferry vm migrate --policy`); absent: the default. */
  policy?: string;
  /** Drain for `ferry node maintenance on`: the moved VMs are remembered to come back at `off`. */
  forMaintenance?: boolean;
  endedAt?: string;
}

/** A host in maintenance: no new VM (create, HA placement, migration to it), its VMs drained. */
export interface HostMaintenance {
  host: string;
  since: string;
  by: string;
  /** The drain that empties it: the VMs it moved come back at `off`. */
  drainId: string;
}

export const MOVE_KEYS = {
  job: (id: string) => `/ferry/ha/moves/${id}`,
  jobs: '/ferry/ha/moves/',
  maintenance: (host: string) => `/ferry/ha/host-maintenance/${host}`,
  maintenances: '/ferry/ha/host-maintenance/',
};

/** A job as read, with its key's revision: every write of it compares that (the runner and a cancel never overwrite each other). */
export type StoredMoveJob = MoveJob & { revision: number };

export class MoveRecords {
  constructor(readonly store: Store) {}

  async jobs(): Promise<StoredMoveJob[]> {
    return (await this.store.list(MOVE_KEYS.jobs)).map((kv) => ({ ...(JSON.parse(kv.value) as MoveJob), revision: kv.modRevision }));
  }

  async job(id: string): Promise<StoredMoveJob | undefined> {
    const kv = await this.store.get(MOVE_KEYS.job(id));
    return kv ? { ...(JSON.parse(kv.value) as MoveJob), revision: kv.modRevision } : undefined;
  }

  /** A new job; false if one of that id exists. */
  async createJob(job: MoveJob): Promise<boolean> {
    return (await this.store.txn([{ key: MOVE_KEYS.job(job.id), modRevision: 0 }], [{ type: 'put', key: MOVE_KEYS.job(job.id), value: JSON.stringify(job) }])).succeeded;
  }

  /** The job changed as `change` says, if no one wrote it since it was read (tried again on a fresh read, a few times). */
  async updateJob(id: string, change: (job: MoveJob) => MoveJob | undefined): Promise<StoredMoveJob | undefined> {
    for (let i = 0; i < 5; i++) {
      const current = await this.job(id);
      if (!current) return undefined;
      const { revision, ...job } = current;
      const next = change(job);
      if (!next) return current;
      const r = await this.store.txn([{ key: MOVE_KEYS.job(id), modRevision: revision }], [{ type: 'put', key: MOVE_KEYS.job(id), value: JSON.stringify(next) }]);
      if (r.succeeded) return { ...next, revision: r.revision };
    }
    throw new Error(`move job ${id} kept changing while being updated; try again`);
  }

  /**
   * Written by the manager only while it is the manager (its key's revision, as for HA statuses) and
   * only if no one wrote the job since it was read; the new revision, or undefined (then it reads again).
   */
  async putJobAsManager(job: StoredMoveJob, managerKey: string, managerToken: number): Promise<number | undefined> {
    const { revision, ...record } = job;
    const r = await this.store.txn(
      [
        { key: managerKey, modRevision: managerToken },
        { key: MOVE_KEYS.job(job.id), modRevision: revision },
      ],
      [{ type: 'put', key: MOVE_KEYS.job(job.id), value: JSON.stringify(record) }],
    );
    return r.succeeded ? r.revision : undefined;
  }

  /** Forgets an ended job (if no one wrote it since it was read). */
  async removeJob(job: StoredMoveJob): Promise<void> {
    await this.store.txn([{ key: MOVE_KEYS.job(job.id), modRevision: job.revision }], [{ type: 'delete', key: MOVE_KEYS.job(job.id) }]);
  }

  async maintenances(): Promise<HostMaintenance[]> {
    return (await this.store.list(MOVE_KEYS.maintenances)).map((kv) => JSON.parse(kv.value) as HostMaintenance);
  }

  async maintenance(host: string): Promise<HostMaintenance | undefined> {
    const kv = await this.store.get(MOVE_KEYS.maintenance(host));
    return kv ? (JSON.parse(kv.value) as HostMaintenance) : undefined;
  }

  /** Puts a host in maintenance with its drain, in one transaction; false if it is in maintenance already. */
  async beginMaintenance(maintenance: HostMaintenance, drain: MoveJob): Promise<boolean> {
    const key = MOVE_KEYS.maintenance(maintenance.host);
    return (
      await this.store.txn(
        [{ key, modRevision: 0 }],
        [
          { type: 'put', key, value: JSON.stringify(maintenance) },
          { type: 'put', key: MOVE_KEYS.job(drain.id), value: JSON.stringify(drain) },
        ],
      )
    ).succeeded;
  }

  /** Ends a host's maintenance and writes the job that brings its VMs back, in one transaction. */
  async endMaintenance(host: string, back: MoveJob | undefined): Promise<void> {
    await this.store.txn(
      [],
      [{ type: 'delete', key: MOVE_KEYS.maintenance(host) }, ...(back ? [{ type: 'put' as const, key: MOVE_KEYS.job(back.id), value: JSON.stringify(back) }] : [])],
    );
  }
}

/**
 * Hosts that take no VM now, and why: in maintenance, being drained, fenced from storage (not lifted
 * yet). Drains, balances, HA recovery and failback place nothing there.
 */
export async function hostsTakingNoVm(store: Store): Promise<Map<string, string>> {
  const moves = new MoveRecords(store);
  const [maintenances, jobs, fenced] = await Promise.all([moves.maintenances(), moves.jobs(), new HaRecords(store).fencedHosts()]);
  const why = new Map<string, string>();
  for (const f of fenced) why.set(f, 'is fenced from storage');
  for (const j of jobs) if (j.kind === 'drain' && j.host && !finished(j)) why.set(j.host, 'is being drained');
  for (const m of maintenances) why.set(m.host, 'is in maintenance');
  return why;
}

/** Whether a move job has nothing more to do. */
export function finished(job: MoveJob): boolean {
  return job.state === 'cancelled' || job.state === 'done';
}
