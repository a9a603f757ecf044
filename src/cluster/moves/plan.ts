/**
 * Where each VM of a drained host goes, and why — or what blocks it (Proxmox's migrate window, per
 * VM). Pure: the cluster as read from the store in, the plan out; `--dry-run` prints only this.
 *
 * A destination is a live host not drained, not in maintenance, not fenced, that reaches the VM's
 * disks (any host for shared pools and for local disks, which the migration copies; the other
 * replica's host for a replicated volume), runs the VM's CPU model, has the memory, and keeps the HA rules (a nodes rule's
 * hosts first, VMs apart never on one host, together where the others are). Several VMs are spread
 * as the HA placement spreads them. The plan is ordered by expected move time, shortest first (so
 * more VMs are off the host sooner): learned from past migrations (predict.ts), else by memory.
 */
import type { HostRecord, OwnedVm } from '../model.ts';
import { cpuMisfits } from '../cpu.ts';
import type { StoragePoolConfig } from '../../storage/types.ts';
import type { HaRule } from '../ha/records.ts';
import { capacity, placeVms, ruleConstraints, type PlacementRequest } from '../ha/placement.ts';
import type { MoveItem } from './records.ts';
import type { MovePredictor } from './predict.ts';

export interface DrainInput {
  host: string;
  vms: OwnedVm[];
  hosts: HostRecord[];
  pools: StoragePoolConfig[];
  rules: HaRule[];
  /** Hosts that take no VM: in maintenance, fenced. */
  unavailable: ReadonlyMap<string, string>;
  /** Only these destinations (`--to`). */
  to?: string[];
  /** Each VM's expected move time (predict.ts); without it, or without a figure for a VM, the order is by memory. */
  predict?: MovePredictor;
}

export function planDrain(input: DrainInput): MoveItem[] {
  const { host, vms, pools, rules, unavailable } = input;
  const predicted = new Map(vms.filter((v) => v.owner === host).map((v) => [v.spec.name, input.predict?.(v.spec.name, v.spec.memoryMiB)]));
  // Shortest expected move first (a VM without a figure by its memory, after those with one).
  const expected = (v: OwnedVm) => predicted.get(v.spec.name)?.seconds ?? Number.POSITIVE_INFINITY;
  const own = vms.filter((v) => v.owner === host).sort((a, b) => expected(a) - expected(b) || a.spec.memoryMiB - b.spec.memoryMiB || a.spec.name.localeCompare(b.spec.name));
  const source = input.hosts.find((h) => h.name === host);
  const destinations = input.hosts.filter((h) => h.name !== host && !unavailable.has(h.name) && (!input.to || input.to.includes(h.name)));
  const items: MoveItem[] = [];
  const requests: PlacementRequest[] = [];
  const blocked = new Map<string, string>();
  for (const vm of own) {
    const name = vm.spec.name;
    if (vm.desired !== 'running') {
      blocked.set(name, 'it is stopped: only a running VM is live-migrated; it stays, stopped, on its host');
      continue;
    }
    const reach = destinationsForDisks(vm, pools, host);
    if ('reason' in reach) blocked.set(name, reach.reason);
    else
      requests.push({
        vm: name,
        memoryMiB: vm.spec.memoryMiB,
        ...(reach.hosts ? { reachableFrom: reach.hosts } : {}),
        exclude: new Set(),
        cpuMisfits: cpuMisfits(vm.spec, destinations, source),
        ...ruleConstraints(rules, name),
      });
  }
  const { room, locations } = capacity(vms, destinations);
  const placed = new Map(placeVms(requests, room, locations).map((p) => [p.vm, p]));
  for (const vm of own) {
    const name = vm.spec.name;
    const placement = placed.get(name);
    const reason = blocked.get(name) ?? (placement && 'reason' in placement ? withUnavailable(placement.reason, unavailable, input.to) : undefined);
    if (reason !== undefined || !placement || !('host' in placement)) {
      items.push({ vm: name, from: host, to: '', memoryMiB: vm.spec.memoryMiB, why: reason ?? 'no placement', progress: { state: 'blocked', reason: reason ?? 'no placement' } });
      continue;
    }
    const prediction = predicted.get(name);
    items.push({ vm: name, from: host, to: placement.host, memoryMiB: vm.spec.memoryMiB, why: whyThere(vm, placement.host, rules, pools), progress: { state: 'waiting' }, ...(prediction ? { predicted: prediction } : {}) });
  }
  // Blocked ones last: the report reads what moves first, then what does not.
  return [...items.filter((i) => i.progress.state !== 'blocked'), ...items.filter((i) => i.progress.state === 'blocked')];
}

/** VMs on other hosts that keep a replica of their disks on `host`: they run on, with one copy while it is away. */
export function replicaWarnings(host: string, vms: OwnedVm[], pools: StoragePoolConfig[]): string[] {
  return vms.flatMap((vm) =>
    vm.owner === host
      ? []
      : (vm.spec.disks ?? [])
          .filter((d) => pools.find((p) => p.name === d.pool)?.type === 'replicated' && d.replicas?.includes(host))
          .map((d) => `${vm.spec.name} (on ${vm.owner}) keeps the other replica of ${d.pool}/${d.volume} on ${host}: while ${host} is away it writes to one copy only`),
  );
}

/** Hosts that reach every disk of `vm` once it leaves `from` (undefined: any); a reason when none can. */
export function destinationsForDisks(vm: OwnedVm, pools: StoragePoolConfig[], from: string): { hosts?: Set<string> } | { reason: string } {
  let hosts: Set<string> | undefined;
  for (const disk of vm.spec.disks ?? []) {
    const pool = pools.find((p) => p.name === disk.pool);
    if (!pool) return { reason: `disk ${disk.id} is in pool '${disk.pool}', which the cluster no longer has` };
    if (pool.type !== 'replicated') continue; // shared: opened there; local: copied by the migration
    const others = (disk.replicas ?? []).filter((h) => h !== from);
    if (!others.length) return { reason: `disk ${disk.id} is replicated only on ${from}` };
    hosts = hosts ? new Set([...hosts].filter((h) => others.includes(h))) : new Set(others);
  }
  if (hosts && !hosts.size) return { reason: 'its replicated disks have their other replicas on different hosts: no one host has them all' };
  return hosts ? { hosts } : {};
}

function withUnavailable(reason: string, unavailable: ReadonlyMap<string, string>, to: string[] | undefined): string {
  const notUsed = [...unavailable].map(([h, why]) => `${h} ${why}`);
  return [reason, ...(notUsed.length ? [`not used: ${notUsed.join(', ')}`] : []), ...(to ? [`--to allows only ${to.join(', ')}`] : [])].join('; ');
}

function whyThere(vm: OwnedVm, host: string, rules: HaRule[], pools: StoragePoolConfig[]): string {
  const reasons: string[] = [];
  const nodes = rules.find((r) => r.kind === 'nodes' && r.vms.includes(vm.spec.name));
  if (nodes?.kind === 'nodes' && nodes.nodes.some((n) => n.host === host)) reasons.push(`rule '${nodes.name}' prefers it`);
  const kinds = new Set((vm.spec.disks ?? []).map((d) => pools.find((p) => p.name === d.pool)?.type));
  if (kinds.has('replicated')) reasons.push('it keeps the other replica of its disks');
  if (kinds.has('local')) reasons.push('its local disks are copied');
  if (!reasons.length) reasons.push('the most memory left');
  return reasons.join(', ');
}
