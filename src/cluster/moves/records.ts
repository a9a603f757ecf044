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
  | { state: 'failed'; jobId?: string; reason: string };

export interface MoveItem {
  vm: string;
  from: string;
  to: string;
  memoryMiB: number;
  /** Why this destination (the plan's words), or why none. */
  why: string;
  progress: MoveState;
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
  /** The drain that empties it. */
  drainId: string;
  /** VMs that left it for the maintenance, and where to: `off` brings them back. */
  left: Array<{ vm: string; to: string }>;
}

export const MOVE_KEYS = {
  job: (id: string) => `/ferry/ha/moves/${id}`,
  jobs: '/ferry/ha/moves/',
  maintenance: (host: string) => `/ferry/ha/host-maintenance/${host}`,
  maintenances: '/ferry/ha/host-maintenance/',
};

export class MoveRecords {
  constructor(readonly store: Store) {}

  async jobs(): Promise<MoveJob[]> {
    return (await this.store.list(MOVE_KEYS.jobs)).map((kv) => JSON.parse(kv.value) as MoveJob);
  }

  async job(id: string): Promise<MoveJob | undefined> {
    const kv = await this.store.get(MOVE_KEYS.job(id));
    return kv ? (JSON.parse(kv.value) as MoveJob) : undefined;
  }

  async putJob(job: MoveJob): Promise<void> {
    await this.store.put(MOVE_KEYS.job(job.id), JSON.stringify(job));
  }

  /**
   * Written by the manager only while it is the manager (its key's revision, as for HA statuses);
   * false if it is not any more.
   */
  async putJobAsManager(job: MoveJob, managerKey: string, managerToken: number): Promise<boolean> {
    return (await this.store.txn([{ key: managerKey, modRevision: managerToken }], [{ type: 'put', key: MOVE_KEYS.job(job.id), value: JSON.stringify(job) }])).succeeded;
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

  async putMaintenance(maintenance: HostMaintenance): Promise<void> {
    await this.store.put(MOVE_KEYS.maintenance(maintenance.host), JSON.stringify(maintenance));
  }

  async endMaintenance(host: string): Promise<void> {
    await this.store.delete(MOVE_KEYS.maintenance(host));
  }
}

/** Whether a move job has nothing more to do. */
export function finished(job: MoveJob): boolean {
  return job.state === 'cancelled' || job.state === 'done';
}
