/**
 * The HA manager: one agent of the cluster at a time (the holder of /ferry/ha/manager, a key bound to
 * a lease it renews every tick) brings the HA VMs of a dead host back on live ones.
 *
 * Each tick it reads the requests, the VMs and the live hosts, and acts only on what it sees then —
 * no memory of its own is needed to be right, so a manager that takes over after another died (or
 * after a restart of the whole cluster) simply carries on. What it remembers is when it first saw
 * each host gone: a VM is started elsewhere only once its host's lease has expired *and* the margin
 * of the timing chain (timing.ts) has passed since, measured on this process's monotonic clock. A new
 * manager starts that wait afresh: later, never sooner. Every start goes through the ownership
 * compare-and-swap on the host that starts it, so two managers could never start one VM twice.
 */
import type { HostRecord, OwnedVm } from '../model.ts';
import type { StoragePoolConfig } from '../../storage/types.ts';
import { ClusterState } from '../model.ts';
import { LeaseExpiredError, type Store } from '../store/types.ts';
import { HaRecords, type HaResource, type HaRule, type HaStatus } from './records.ts';
import { capacity, placeVms, reachableHosts, ruleConstraints, type PlacementRequest } from './placement.ts';
import type { HaTiming } from './timing.ts';
import { hostsTakingNoVm } from '../moves/records.ts';
import { cpuMisfits } from '../cpu.ts';

/** What the manager asks a host's agent to do (agent/ha.ts answers; the host checks it is the manager asking). */
export interface HaActions {
  /** Take `vm` from its dead owner and start it there (`start: false`: only take it, for requests `stopped`). */
  recover(host: string, vm: string, start: boolean): Promise<void>;
  /** Start `vm` on its live owner `host` (a request `started` whose VM is stopped). */
  start(host: string, vm: string): Promise<void>;
  /** Stop `vm` on its live owner `host` (a request `stopped` whose VM runs). */
  stop(host: string, vm: string): Promise<void>;
  /** Live-migrate `vm` from its owner `host` to `to` (failback); resolves once the migration has begun. */
  migrate(host: string, vm: string, to: string): Promise<void>;
  /** Hand the stopped `vm` from its live owner `host` to `to` (it failed to start there too often). */
  release(host: string, vm: string, to: string): Promise<void>;
}

/** A VM the manager starts on another host: its host is gone, or alive but it failed to start there. */
interface ToPlace {
  resource: HaResource;
  vm: OwnedVm;
  status: HaStatus;
  from: 'lost' | 'live';
}

export interface HaManagerOptions {
  store: Store;
  me: string;
  timing: HaTiming;
  actions: HaActions;
  log: (line: string) => void;
  /** How often the manager looks (and renews its key's lease). */
  tickMs?: number;
  /** More work of the one manager (the move jobs), after each look; false: the key is no longer its. */
  whileManager?: (token: number) => Promise<boolean>;
}

export class HaManager {
  private readonly records: HaRecords;
  private readonly state: ClusterState;
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private lease: string | undefined;
  /** The manager key's revision while this agent is the manager: the token its status writes carry. */
  private token: number | undefined;
  /** Hosts that own VMs and have no live record, with when this manager first saw them so. */
  private readonly goneSince = new Map<string, number>();
  private readonly written = new Map<string, string>();
  private readonly pending = new Map<string, HaStatus>();
  private renewTimer: NodeJS.Timeout | undefined;
  private seenRevision = -1;
  private inMaintenance = false;
  /** Live hosts, with when this manager first saw each alive (its own monotonic clock): failback waits for a host to settle. */
  private readonly aliveSince = new Map<string, number>();
  /** Failbacks tried (vm → target host → when): not tried again for FAILBACK_RETRY_MS, whatever came of them. */
  private readonly failbackTried = new Map<string, Map<string, number>>();
  /** When to look again although the store did not change (a failback waiting for its host to settle). */
  private lookAgainAt: number | undefined;

  constructor(private readonly options: HaManagerOptions) {
    this.records = new HaRecords(options.store);
    this.state = new ClusterState(options.store);
  }

  get active(): boolean {
    return this.token !== undefined;
  }

  start(): void {
    // The key's lease is renewed on a timer of its own: a long tick (thousands of VMs) must not let it lapse.
    this.renewTimer = setInterval(() => void this.renew(), this.options.timing.renewMs);
    this.timer = setInterval(() => {
      if (this.ticking) return;
      this.ticking = true;
      void this.tick()
        .catch((err) => this.options.log(`HA manager: ${(err as Error).message}`))
        .finally(() => (this.ticking = false));
    }, this.options.tickMs ?? 1000);
  }

  /** Stops acting; the key is given up so another agent takes over at once, not after the lease. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.renewTimer);
    while (this.ticking) await new Promise((r) => setTimeout(r, 50));
    if (this.lease) await this.options.store.revokeLease(this.lease).catch(() => undefined);
    this.lease = undefined;
    this.token = undefined;
  }

  async tick(): Promise<void> {
    if (!(await this.holdOrClaim())) return;
    await this.reconcile();
    if (this.token !== undefined && this.options.whileManager && !(await this.options.whileManager(this.token))) this.stepDown('its manager key changed (another agent is the manager)');
  }

  private async renew(): Promise<boolean> {
    if (!this.lease || this.token === undefined) return false;
    try {
      await this.options.store.keepAlive(this.lease);
      return true;
    } catch (err) {
      // Gone for good only when the store says the lease is; a store that does not answer this once
      // means no acting this tick, and the next renewal tells.
      if (err instanceof LeaseExpiredError) this.stepDown('its lease expired');
      else this.options.log(`HA manager: cannot renew the manager key's lease (${(err as Error).message}); not acting until it is renewed`);
      return false;
    }
  }

  private stepDown(why: string): void {
    if (this.token === undefined) return;
    this.options.log(`HA manager: ${this.options.me} is no longer the manager (${why})`);
    this.token = undefined;
    this.lease = undefined;
    this.goneSince.clear();
    this.aliveSince.clear();
    this.written.clear();
    this.pending.clear();
    this.seenRevision = -1;
  }

  private async holdOrClaim(): Promise<boolean> {
    const { store, me, timing, log } = this.options;
    if (this.lease && this.token !== undefined) return this.renew();
    if (await this.records.manager()) return false;
    // A lease of its own for each try: one that lost the race is given back, never reused once stale.
    const lease = await store.grantLease(Math.round(timing.leaseTtlMs / 1000));
    const token = await this.records.claimManager({ host: me, since: new Date().toISOString() }, lease);
    if (token === undefined) {
      await store.revokeLease(lease).catch(() => undefined);
      return false;
    }
    this.lease = lease;
    this.token = token;
    log(`HA manager: ${me} is the HA manager now`);
    return true;
  }

  private async reconcile(): Promise<void> {
    // Nothing changed in the store since the last look, and no host's margin is running: nothing to do
    // (a cluster of thousands of VMs is not read every second). A lease that expires changes it.
    const revision = await this.options.store.revision();
    if (revision === this.seenRevision && this.goneSince.size === 0 && !(this.lookAgainAt !== undefined && performance.now() >= this.lookAgainAt)) return;
    this.lookAgainAt = undefined;
    // Cluster maintenance: no restart, relocation, failback, start or stop. A host seen gone meanwhile
    // starts its wait afresh once it is over (later, never sooner).
    const maintenance = await this.records.maintenance();
    if (maintenance) {
      if (!this.inMaintenance) this.options.log(`HA manager: cluster maintenance since ${maintenance.since} (${maintenance.by}): not acting until it is off`);
      this.inMaintenance = true;
      this.goneSince.clear();
      this.seenRevision = revision;
      return;
    }
    if (this.inMaintenance) this.options.log('HA manager: cluster maintenance is off: acting again');
    this.inMaintenance = false;
    const resources = await this.records.resources();
    const [vms, hosts, pools, statuses] = await Promise.all([this.state.vms(), this.state.hosts(), this.state.pools(), this.records.statuses()]);
    this.seenRevision = revision;
    const alive = new Set(hosts.map((h) => h.name));
    const now = performance.now();
    for (const host of alive) if (!this.aliveSince.has(host)) this.aliveSince.set(host, now);
    for (const host of [...this.aliveSince.keys()]) if (!alive.has(host)) this.aliveSince.delete(host);
    const byName = new Map(vms.map((v) => [v.spec.name, v]));
    const haOwners = new Set(resources.map((r) => byName.get(r.vm)?.owner));
    for (const host of [...this.goneSince.keys()]) if (alive.has(host) || !haOwners.has(host)) this.goneSince.delete(host);
    const statusOf = new Map(statuses.map((s) => [s.vm, s]));
    this.written.clear();
    for (const s of statuses) this.written.set(s.vm, comparable(s));
    const toPlace: ToPlace[] = [];
    const guardedBy = new Map<string, Set<string> | undefined>();
    for (const resource of resources) {
      const vm = byName.get(resource.vm);
      const status: HaStatus = statusOf.get(resource.vm) ?? { vm: resource.vm, actual: 'waiting', restarts: 0, relocations: 0, failedOn: [], updatedAt: '' };
      if (resource.request === 'ignored' || resource.request === 'disabled') continue;
      if (!vm) {
        this.save({ ...status, actual: 'error', reason: `the VM '${resource.vm}' no longer exists; remove it from HA (ferry ha remove ${resource.vm})` });
        continue;
      }
      if (status.actual === 'error') continue; // left by `ferry ha set VM --state disabled`, then started
      if (alive.has(vm.owner)) {
        if (resource.request === 'started' && vm.desired !== 'running') {
          // It failed to start there as often as allowed: another host, as for a lost one.
          if (status.failedOn.includes(vm.owner)) toPlace.push({ resource, vm, status, from: 'live' });
          else await this.startOnOwner(resource, vm, status);
        }
        else if (resource.request === 'stopped' && vm.desired === 'running') await this.stopOnOwner(vm, status);
        else {
          const actual = vm.desired === 'running' ? 'running' : 'stopped';
          this.save({ ...status, actual, host: vm.owner, reason: undefined, ...(actual === 'running' ? { restarts: 0, failedOn: [] } : {}) });
        }
        continue;
      }
      if (!this.goneSince.has(vm.owner)) {
        this.goneSince.set(vm.owner, now);
        this.options.log(`HA manager: host '${vm.owner}' has no live lease; its HA VMs move after ${this.options.timing.marginMs} ms more`);
      }
      const waited = now - this.goneSince.get(vm.owner)!;
      if (waited < this.options.timing.marginMs) {
        this.save({ ...status, actual: 'waiting', host: vm.owner, reason: `host '${vm.owner}' lost its lease; waiting the fencing margin before starting it elsewhere` });
        continue;
      }
      // A running VM comes back elsewhere only if its host's watchdog guarded it (DESIGN invariant 4):
      // one put under HA while its host was already silent, or on a host without a watchdog, may still run there.
      if (vm.desired === 'running') {
        if (!guardedBy.has(vm.owner)) guardedBy.set(vm.owner, await this.records.guarded(vm.owner));
        if (!guardedBy.get(vm.owner)?.has(vm.spec.name)) {
          this.save({ ...status, actual: 'waiting', host: vm.owner, reason: `host '${vm.owner}' lost its lease, but no watchdog of it guarded ${vm.spec.name} (none configured there, or it went silent before it did): its QEMU may still run. Once you are sure it is down: ferry vm recover ${vm.spec.name} --to HOST` });
          continue;
        }
      }
      toPlace.push({ resource, vm, status, from: 'lost' });
    }
    if (toPlace.length) await this.recoverAll(toPlace, vms, hosts, pools);
    else await this.failBack(resources, byName, vms, hosts, statusOf);
    await this.flush();
    this.written.clear(); // read afresh next time: nothing of the cluster's size stays between ticks
  }

  private async recoverAll(
    items: ToPlace[],
    vms: OwnedVm[],
    hosts: HostRecord[],
    pools: StoragePoolConfig[],
  ): Promise<void> {
    const [rules, fenced] = await Promise.all([this.records.rules(), this.unavailableHosts()]);
    const requests: PlacementRequest[] = [];
    const unplaceable = new Map<string, string>();
    for (const { vm, status, from } of items) {
      const reach = reachableHosts(vm.spec, pools, vm.owner);
      if ('reason' in reach) unplaceable.set(vm.spec.name, reach.reason);
      else if (from === 'live' && reach.hosts) unplaceable.set(vm.spec.name, `its replicated disks move to the other replica only when '${vm.owner}' is gone`);
      else
        requests.push({
          vm: vm.spec.name,
          memoryMiB: vm.spec.memoryMiB,
          reachableFrom: reach.hosts,
          exclude: new Set([...status.failedOn, ...fenced]),
          cpuMisfits: cpuMisfits(vm.spec, hosts), // a cold start: any host that runs the model
          ...ruleConstraints(rules, vm.spec.name),
        });
    }
    const { room, locations } = capacity(vms, hosts);
    const placements = placeVms(requests, room, locations);
    const placementOf = new Map(placements.map((p) => [p.vm, p]));
    const takeovers: Array<{ resource: HaResource; status: HaStatus; name: string; owner: string; from: ToPlace['from']; target: string; start: boolean; what: string }> = [];
    for (const { resource, vm, status, from } of items) {
      const name = vm.spec.name;
      const placement = placementOf.get(name);
      const reason = unplaceable.get(name) ?? (placement && 'reason' in placement ? placement.reason : undefined);
      if (reason || !placement || !('host' in placement)) {
        if (from === 'live')
          this.save({ ...status, actual: 'error', reason: `it failed to start on its host ${vm.owner}, and no other host can take it (${reason ?? 'no placement'}). ${leaveError(name)}` });
        else this.save({ ...status, actual: 'waiting', reason: `no host can take it: ${reason ?? 'no placement'}` });
        continue;
      }
      const start = resource.request === 'started';
      const why = from === 'lost' ? `its host '${vm.owner}' is gone` : `it failed to start on '${vm.owner}'`;
      const what = `${start ? 'start' : 'move (stopped)'} ${name} on ${placement.host}: ${why}`;
      this.save({ ...status, actual: 'recovering', host: placement.host, reason: undefined, lastAction: this.action(what) });
      takeovers.push({ resource, status, name, owner: vm.owner, from, target: placement.host, start, what });
    }
    // Written down before acting; a manager that lost its key meanwhile asks no host for anything.
    await this.flush();
    if (this.token === undefined) return;
    await Promise.allSettled(
      takeovers.map(async ({ resource, status, name, owner, from, target, start, what }) => {
        this.options.log(`HA manager: ${what}`);
        try {
          if (from === 'lost') await this.options.actions.recover(target, name, start);
          else {
            await this.options.actions.release(owner, name, target);
            // Not failed back by live migration to where it would not start, for a while.
            this.failbackTried.set(name, new Map([[owner, performance.now()]]));
            if (start) await this.options.actions.start(target, name);
          }
          this.save({ ...status, actual: start ? 'running' : 'stopped', host: target, reason: undefined, restarts: 0, failedOn: [], lastAction: this.action(`${what} — done`) });
        } catch (err) {
          this.save(this.afterFailure(resource, status, target, (err as Error).message));
        }
      }),
    );
  }

  /**
   * Failback (a nodes rule with `failback`): a running VM goes back by live migration to the live
   * host its rule prefers over its own. One at a time in the cluster, none while a recovery runs,
   * and only to a host up for FAILBACK_SETTLE_MS (one that just came back may still be starting).
   */
  private async failBack(resources: HaResource[], byName: Map<string, OwnedVm>, vms: OwnedVm[], hosts: HostRecord[], statusOf: Map<string, HaStatus>): Promise<void> {
    const allRules = await this.records.rules();
    const rules = allRules.filter((r): r is Extract<HaRule, { kind: 'nodes' }> => r.kind === 'nodes' && r.failback === true);
    if (!rules.length) return;
    const migrating = await this.state.migrations();
    if (migrating.some((m) => resources.some((r) => r.vm === m.vm))) return;
    const fenced = await this.unavailableHosts();
    const { room, locations } = capacity(vms, hosts);
    const now = performance.now();
    for (const resource of resources) {
      const vm = byName.get(resource.vm);
      const status = statusOf.get(resource.vm);
      const rule = rules.find((r) => r.vms.includes(resource.vm));
      if (!vm || !rule || resource.request !== 'started' || vm.desired !== 'running' || !this.aliveSince.has(vm.owner) || status?.actual !== 'running') continue;
      const tried = this.failbackTried.get(resource.vm) ?? new Map<string, number>();
      for (const [host, at] of tried) if (now - at >= FAILBACK_RETRY_MS) tried.delete(host);
      const priorities = new Map(rule.nodes.map((n) => [n.host, n.priority]));
      const own = priorities.get(vm.owner) ?? -1;
      const others = new Map(locations);
      others.delete(resource.vm);
      const [placement] = placeVms(
        [
          {
            vm: resource.vm,
            memoryMiB: vm.spec.memoryMiB,
            exclude: new Set([vm.owner, ...status.failedOn, ...fenced, ...tried.keys()]),
            cpuMisfits: cpuMisfits(vm.spec, hosts, hosts.find((h) => h.name === vm.owner)), // a live migration keeps the guest's CPU
            ...ruleConstraints(allRules, resource.vm),
            preferred: { rule: rule.name, priorities, strict: true },
          },
        ],
        room,
        others,
      );
      if (!placement || !('host' in placement) || (priorities.get(placement.host) ?? -1) <= own) continue;
      const settledFor = now - this.aliveSince.get(placement.host)!;
      if (settledFor < FAILBACK_SETTLE_MS) {
        this.lookAgainAt = now + FAILBACK_SETTLE_MS - settledFor;
        return;
      }
      tried.set(placement.host, now);
      this.failbackTried.set(resource.vm, tried);
      const what = `fail back ${resource.vm} to ${placement.host} by live migration (rule '${rule.name}': priority ${priorities.get(placement.host)} over ${vm.owner}'s ${own < 0 ? 'none' : own})`;
      this.save({ ...status, lastAction: this.action(what) });
      await this.flush();
      if (this.token === undefined) return;
      this.options.log(`HA manager: ${what}`);
      try {
        await this.options.actions.migrate(vm.owner, resource.vm, placement.host);
      } catch (err) {
        this.save({ ...status, lastAction: this.action(`${what} — refused: ${(err as Error).message}`) });
      }
      return; // one at a time: the next once this one has ended (its end changes the store)
    }
  }

  /** Hosts no VM is placed on: fenced (not lifted yet), in maintenance, being drained. */
  private async unavailableHosts(): Promise<Set<string>> {
    return new Set((await hostsTakingNoVm(this.options.store)).keys());
  }

  private async startOnOwner(resource: HaResource, vm: OwnedVm, status: HaStatus): Promise<void> {
    const what = `start ${vm.spec.name} on its host ${vm.owner} (HA requests it started)`;
    this.save({ ...status, actual: 'recovering', host: vm.owner, lastAction: this.action(what) });
    await this.flush();
    if (this.token === undefined) return;
    this.options.log(`HA manager: ${what}`);
    try {
      await this.options.actions.start(vm.owner, vm.spec.name);
      this.save({ ...status, actual: 'running', host: vm.owner, reason: undefined, restarts: 0, failedOn: [], lastAction: this.action(`${what} — done`) });
    } catch (err) {
      // Tried again there, then (next tick, failedOn naming its host) relocated, then error.
      this.save(this.afterFailure(resource, status, vm.owner, (err as Error).message));
    }
  }

  private async stopOnOwner(vm: OwnedVm, status: HaStatus): Promise<void> {
    const what = `stop ${vm.spec.name} on ${vm.owner} (HA requests it stopped)`;
    await this.flush();
    if (this.token === undefined) return;
    this.options.log(`HA manager: ${what}`);
    try {
      await this.options.actions.stop(vm.owner, vm.spec.name);
      this.save({ ...status, actual: 'stopped', host: vm.owner, reason: undefined, lastAction: this.action(`${what} — done`) });
    } catch (err) {
      this.save({ ...status, actual: 'running', host: vm.owner, reason: `stopping it failed: ${(err as Error).message}; trying again`, lastAction: this.action(`${what} — failed`) });
    }
  }

  /** Counts a failed start: another try on the same host, then the next host, then `error`. */
  private afterFailure(resource: HaResource, status: HaStatus, host: string, message: string): HaStatus {
    const restarts = (status.host === host ? status.restarts : 0) + 1;
    const base = { ...status, host, lastAction: this.action(`starting ${resource.vm} on ${host} failed: ${message}`) };
    this.options.log(`HA manager: starting ${resource.vm} on ${host} failed (${restarts} of ${resource.maxRestart + 1} tries there): ${message}`);
    if (restarts <= resource.maxRestart) return { ...base, actual: 'waiting', restarts, reason: `start on ${host} failed: ${message}; trying again` };
    const relocations = status.relocations + 1;
    if (relocations > resource.maxRelocate)
      return {
        ...base,
        actual: 'error',
        restarts,
        relocations,
        reason: `it failed to start on ${[...status.failedOn, host].join(', ')} (last: ${message}); after ${resource.maxRelocate} relocations it stays down. ${leaveError(resource.vm)}`,
      };
    return { ...base, actual: 'waiting', restarts: 0, relocations, failedOn: [...status.failedOn, host], reason: `start on ${host} failed ${restarts} times: ${message}; trying another host` };
  }

  private action(what: string): HaStatus['lastAction'] {
    return { what, at: new Date().toISOString(), by: this.options.me };
  }

  /** Queues a status, if it changed (the store's writes grow with what happens, not with time or the cluster's size). */
  private save(status: HaStatus): void {
    const key = comparable(status);
    if (this.written.get(status.vm) === key) return;
    this.written.set(status.vm, key);
    this.pending.set(status.vm, { ...status, updatedAt: new Date().toISOString() });
  }

  /** Writes the queued statuses; a manager whose key is gone writes none and stops being the manager. */
  private async flush(): Promise<void> {
    if (!this.pending.size || this.token === undefined) return;
    const statuses = [...this.pending.values()];
    this.pending.clear();
    if (!(await this.records.putStatuses(statuses, this.token))) this.stepDown('its manager key changed (another agent is the manager)');
  }

}

/** How long a host that came back is left to settle (as this manager saw it come) before VMs fail back to it. */
const FAILBACK_SETTLE_MS = 5_000;
/** A failback to a host is not tried again for this long, whatever came of it (no loop of failing migrations). */
const FAILBACK_RETRY_MS = 5 * 60_000;

/** How an admin takes a VM out of `error`, as with Proxmox's ha-manager. */
function leaveError(vm: string): string {
  return `Fix the cause, then: ferry ha set ${vm} --state disabled; ferry ha set ${vm} --state started`;
}

/** A status without its time stamp, for "did it change". */
function comparable(status: HaStatus): string {
  const { updatedAt: _updatedAt, ...rest } = status;
  return JSON.stringify(rest);
}
