/**
 * What the HA manager keeps in the store:
 *   /ferry/ha/resources/<vm>  HaResource: the admin's request (`ferry ha add|set`); survives anything
 *   /ferry/ha/status/<vm>     HaStatus: what the manager last saw and did, with its reason
 *   /ferry/ha/manager         HaManagerRecord: which host's agent is the manager, bound to a lease
 *                             (its modRevision is the manager's fencing token)
 *   /ferry/ha/rules/<name>    HaRule: where the manager may place VMs (`ferry ha rule add`)
 *   /ferry/ha/guarded/<host>  the VMs whose QEMUs that host's watchdog guards
 */
import type { Store } from '../store/types.ts';

/**
 * What the admin asks for, as in Proxmox: `started` runs it and brings it back anywhere it can run;
 * `stopped` keeps it stopped but moves it off a dead host; `disabled` keeps it stopped where it is;
 * `ignored` leaves it to the admin. Leaving `error` takes `disabled` first.
 */
export type HaRequest = 'started' | 'stopped' | 'disabled' | 'ignored';
export const HA_REQUESTS: readonly HaRequest[] = ['started', 'stopped', 'disabled', 'ignored'];

export interface HaResource {
  vm: string;
  request: HaRequest;
  /** Failed starts on one host before the VM is tried on another. */
  maxRestart: number;
  /** Hosts tried after the first before the VM goes to `error`. */
  maxRelocate: number;
  addedAt: string;
}

/**
 * What the manager sees: `running` on its owner; `stopped` as requested; `waiting` for its host's
 * lease to expire and the margin to pass, or for a host it can run on; `recovering` while a host
 * starts it; `error` when every try failed (the reason says which).
 */
export type HaActual = 'running' | 'stopped' | 'waiting' | 'recovering' | 'error';

export interface HaStatus {
  vm: string;
  actual: HaActual;
  /** Why, when it is not what was asked for. */
  reason?: string;
  host?: string;
  /** Failed starts on `host` since the last success; hosts left behind since then. */
  restarts: number;
  relocations: number;
  /** Hosts where starting it failed `maxRestart` times (not tried again until it runs somewhere). */
  failedOn: string[];
  lastAction?: { what: string; at: string; by: string };
  updatedAt: string;
}

/**
 * Placement rules, as Proxmox VE 9's: `nodes` — the VMs go to the available host of the highest
 * priority (strict: only to those hosts; else any host when none of them can); `vms` — the VMs run
 * on one host (together) or never two on one host (apart).
 */
export type HaRule =
  | { name: string; kind: 'nodes'; vms: string[]; nodes: Array<{ host: string; priority: number }>; strict: boolean; failback?: boolean }
  | { name: string; kind: 'vms'; vms: string[]; together: boolean };

export interface HaManagerRecord {
  host: string;
  since: string;
}

export const HA_PREFIX = '/ferry/ha/';

export const HA_KEYS = {
  resource: (vm: string) => `/ferry/ha/resources/${vm}`,
  resources: '/ferry/ha/resources/',
  status: (vm: string) => `/ferry/ha/status/${vm}`,
  statuses: '/ferry/ha/status/',
  manager: '/ferry/ha/manager',
  rule: (name: string) => `/ferry/ha/rules/${name}`,
  /** The VMs a host's watchdog guards (written by that host after each change). */
  guarded: (host: string) => `/ferry/ha/guarded/${host}`,
  rules: '/ferry/ha/rules/',
  /** Cluster maintenance mode (Pacemaker's maintenance-mode): the manager does nothing while it is set. */
  maintenance: '/ferry/ha/maintenance',
  /** A lost host cut off a pool's backend (storage fencing), until it is back and lifts it. */
  fence: (host: string, pool: string) => `/ferry/ha/fences/${host}/${pool}`,
  fencesOf: (host: string) => `/ferry/ha/fences/${host}/`,
};

/** Cluster maintenance mode: who switched it on, when, and why. */
export interface ClusterMaintenance {
  since: string;
  by: string;
  reason?: string;
}

/** Storage fencing written down before it is done: whoever sees it knows the host must lift it when back. */
export interface StorageFence {
  host: string;
  pool: string;
  address: string;
  /** Who fenced it, and when. */
  by: string;
  at: string;
}

export class HaRecords {
  constructor(readonly store: Store) {}

  async resources(): Promise<HaResource[]> {
    return (await this.store.list(HA_KEYS.resources)).map((kv) => JSON.parse(kv.value) as HaResource);
  }

  async resource(vm: string): Promise<HaResource | undefined> {
    const kv = await this.store.get(HA_KEYS.resource(vm));
    return kv ? (JSON.parse(kv.value) as HaResource) : undefined;
  }

  async putResource(resource: HaResource): Promise<void> {
    await this.store.put(HA_KEYS.resource(resource.vm), JSON.stringify(resource));
  }

  /** Removes the request and what the manager recorded for it. */
  async removeResource(vm: string): Promise<void> {
    await this.store.txn([], [{ type: 'delete', key: HA_KEYS.resource(vm) }, { type: 'delete', key: HA_KEYS.status(vm) }]);
  }

  async statuses(): Promise<HaStatus[]> {
    return (await this.store.list(HA_KEYS.statuses)).map((kv) => JSON.parse(kv.value) as HaStatus);
  }

  async status(vm: string): Promise<HaStatus | undefined> {
    const kv = await this.store.get(HA_KEYS.status(vm));
    return kv ? (JSON.parse(kv.value) as HaStatus) : undefined;
  }

  /**
   * Written only by the manager, and only while it still is the manager: each write carries the
   * manager key's revision (its fencing token), so a manager that lost its lease writes nothing.
   * In batches of 100 (etcd's default limit of operations in one transaction is 128).
   */
  async putStatuses(statuses: HaStatus[], managerToken: number): Promise<boolean> {
    for (let i = 0; i < statuses.length; i += 100) {
      const puts = statuses.slice(i, i + 100).map((status) => ({ type: 'put' as const, key: HA_KEYS.status(status.vm), value: JSON.stringify(status) }));
      if (!(await this.store.txn([{ key: HA_KEYS.manager, modRevision: managerToken }], puts)).succeeded) return false;
    }
    return true;
  }

  async putGuarded(host: string, vms: string[]): Promise<void> {
    await this.store.put(HA_KEYS.guarded(host), JSON.stringify({ vms, at: new Date().toISOString() }));
  }

  /** The VMs `host` said its watchdog guards; undefined: it never said (no watchdog, or an older agent). */
  async guarded(host: string): Promise<Set<string> | undefined> {
    const kv = await this.store.get(HA_KEYS.guarded(host));
    return kv ? new Set((JSON.parse(kv.value) as { vms: string[] }).vms) : undefined;
  }

  async maintenance(): Promise<ClusterMaintenance | undefined> {
    const kv = await this.store.get(HA_KEYS.maintenance);
    return kv ? (JSON.parse(kv.value) as ClusterMaintenance) : undefined;
  }

  async setMaintenance(maintenance: ClusterMaintenance | undefined): Promise<void> {
    if (maintenance) await this.store.put(HA_KEYS.maintenance, JSON.stringify(maintenance));
    else await this.store.delete(HA_KEYS.maintenance);
  }

  async putFence(fence: StorageFence): Promise<void> {
    await this.store.put(HA_KEYS.fence(fence.host, fence.pool), JSON.stringify(fence));
  }

  async fencesOf(host: string): Promise<StorageFence[]> {
    return (await this.store.list(HA_KEYS.fencesOf(host))).map((kv) => JSON.parse(kv.value) as StorageFence);
  }

  /** Hosts with a storage fence not lifted yet: no VM is placed there. */
  async fencedHosts(): Promise<Set<string>> {
    return new Set((await this.store.list('/ferry/ha/fences/')).map((kv) => (JSON.parse(kv.value) as StorageFence).host));
  }

  async removeFence(fence: StorageFence): Promise<void> {
    await this.store.delete(HA_KEYS.fence(fence.host, fence.pool));
  }

  async rules(): Promise<HaRule[]> {
    return (await this.store.list(HA_KEYS.rules)).map((kv) => JSON.parse(kv.value) as HaRule);
  }

  /** Adds a rule under a name not taken yet; false if it is. */
  async addRule(rule: HaRule): Promise<boolean> {
    return (await this.store.txn([{ key: HA_KEYS.rule(rule.name), modRevision: 0 }], [{ type: 'put', key: HA_KEYS.rule(rule.name), value: JSON.stringify(rule) }])).succeeded;
  }

  /** Removes a rule; false if there was none of that name. */
  async removeRule(name: string): Promise<boolean> {
    if (!(await this.store.get(HA_KEYS.rule(name)))) return false;
    await this.store.delete(HA_KEYS.rule(name));
    return true;
  }

  async manager(): Promise<(HaManagerRecord & { token: number }) | undefined> {
    const kv = await this.store.get(HA_KEYS.manager);
    return kv ? { ...(JSON.parse(kv.value) as HaManagerRecord), token: kv.modRevision } : undefined;
  }

  /** Becomes the manager if there is none: the key bound to `lease`. Its revision is the token, or undefined. */
  async claimManager(record: HaManagerRecord, lease: string): Promise<number | undefined> {
    const result = await this.store.txn([{ key: HA_KEYS.manager, modRevision: 0 }], [{ type: 'put', key: HA_KEYS.manager, value: JSON.stringify(record), lease }]);
    return result.succeeded ? result.revision : undefined;
  }
}
