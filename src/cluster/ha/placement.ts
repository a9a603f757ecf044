/**
 * Where the HA manager starts VMs whose host is gone: a live host that reaches every disk (any host
 * for a shared pool, the other replica's host for a replicated volume, none for a local disk) and has
 * the memory, within the placement rules (records.ts HaRule): among the hosts a rule prefers, the
 * highest priority first; never a host that cannot run its CPU model. Several VMs of one dead host are spread: each goes to the host with the
 * most memory left after the VMs placed before it (largest VMs first, so the big ones find room).
 */
import type { VmSpec } from '../../qemu/spec.ts';
import type { StoragePoolConfig } from '../../storage/types.ts';
import type { HaRule } from './records.ts';
import type { HostRecord, OwnedVm } from '../model.ts';

export interface PlacementHost {
  name: string;
  memoryMiB: number;
  /** Memory of the VMs it owns now. */
  usedMiB: number;
}

export interface PlacementRequest {
  vm: string;
  memoryMiB: number;
  /** Hosts that reach every disk; undefined: any host. */
  reachableFrom?: ReadonlySet<string>;
  /** Hosts not to use (where it failed to start). */
  exclude: ReadonlySet<string>;
  /** Hosts that cannot run its CPU model, each with why (cluster/cpu.ts). */
  cpuMisfits?: ReadonlyMap<string, string>;
  /** A node-affinity rule: the hosts it prefers, by priority (higher first); strict: only those. */
  preferred?: { rule: string; priorities: ReadonlyMap<string, number>; strict: boolean };
  /** VM-affinity rules: VMs it must share a host with, and VMs it must not. */
  together?: { rule: string; vms: string[] };
  apart?: { rule: string; vms: string[] };
}

export type Placement = { vm: string; host: string } | { vm: string; reason: string };

/** Which hosts reach every disk of `spec`; a reason instead when no host but `lost` ever could. */
export function reachableHosts(spec: VmSpec, pools: StoragePoolConfig[], lost: string): { hosts?: Set<string> } | { reason: string } {
  let hosts: Set<string> | undefined;
  const narrow = (to: Iterable<string>) => {
    const next = new Set(to);
    hosts = hosts ? new Set([...hosts].filter((h) => next.has(h))) : next;
  };
  for (const disk of spec.disks ?? []) {
    const pool = pools.find((p) => p.name === disk.pool);
    if (!pool) return { reason: `disk ${disk.id} is in pool '${disk.pool}', which the cluster no longer has` };
    if (pool.type === 'local') return { reason: `disk ${disk.id} is in the local pool '${disk.pool}' of '${lost}': no other host has it` };
    if (pool.type === 'replicated') narrow((disk.replicas ?? []).filter((h) => h !== lost));
  }
  if (hosts && hosts.size === 0) return { reason: `its replicated disks have no replica outside '${lost}'` };
  return hosts ? { hosts } : {};
}

/** `locations`: where the other VMs run now (live hosts only), for the VM-affinity rules. */
export function placeVms(requests: PlacementRequest[], hosts: PlacementHost[], locations: ReadonlyMap<string, string> = new Map()): Placement[] {
  const free = new Map(hosts.map((h) => [h.name, h.memoryMiB - h.usedMiB]));
  const where = new Map(locations);
  const ordered = [...requests].sort((a, b) => b.memoryMiB - a.memoryMiB || a.vm.localeCompare(b.vm));
  return ordered.map((request) => {
    const placed = choose(request, hosts, free, where);
    if ('host' in placed) {
      free.set(placed.host, free.get(placed.host)! - request.memoryMiB);
      where.set(request.vm, placed.host);
    }
    return placed;
  });
}

function choose(request: PlacementRequest, hosts: PlacementHost[], free: Map<string, number>, where: Map<string, string>): Placement {
  const vm = request.vm;
  let candidates = hosts.map((h) => h.name).filter((h) => !request.exclude.has(h) && (!request.reachableFrom || request.reachableFrom.has(h)));
  if (!candidates.length) {
    const why = request.reachableFrom ? `no live host reaches its disks (they are on ${[...request.reachableFrom].join(', ')})` : 'no live host is left to try';
    return { vm, reason: request.exclude.size ? `${why}; it failed to start on ${[...request.exclude].join(', ')}` : why };
  }
  const misfits = request.cpuMisfits;
  if (misfits?.size) {
    const fit = candidates.filter((h) => !misfits.has(h));
    if (!fit.length) return { vm, reason: `no host it could use runs its CPU: ${candidates.map((h) => misfits.get(h)).join('; ')}` };
    candidates = fit;
  }
  const { preferred, together, apart } = request;
  if (preferred?.strict) {
    candidates = candidates.filter((h) => preferred.priorities.has(h));
    if (!candidates.length) return { vm, reason: `rule '${preferred.rule}' allows only ${[...preferred.priorities.keys()].join(', ')}, and none of them is alive, reaches its disks and is left to try` };
  }
  if (apart) {
    const taken = new Set(apart.vms.filter((v) => v !== vm).map((v) => where.get(v)).filter((h): h is string => h !== undefined));
    candidates = candidates.filter((h) => !taken.has(h));
    if (!candidates.length) return { vm, reason: `rule '${apart.rule}' keeps it apart from ${apart.vms.filter((v) => v !== vm).join(', ')}, which are on every host it could use` };
  }
  if (together) {
    const with_ = new Set(together.vms.filter((v) => v !== vm).map((v) => where.get(v)).filter((h): h is string => h !== undefined));
    if (with_.size) {
      candidates = candidates.filter((h) => with_.has(h));
      if (!candidates.length) return { vm, reason: `rule '${together.rule}' keeps it with ${together.vms.filter((v) => v !== vm).join(', ')} on ${[...with_].join(', ')}, which it cannot use` };
    }
  }
  const roomy = candidates.filter((h) => free.get(h)! >= request.memoryMiB);
  if (!roomy.length) return { vm, reason: `it needs ${request.memoryMiB} MiB and the hosts it can run on have ${candidates.map((h) => `${h} ${free.get(h)} MiB`).join(', ')} free` };
  const priority = (h: string) => preferred?.priorities.get(h) ?? -1;
  const host = roomy.sort((a, b) => priority(b) - priority(a) || free.get(b)! - free.get(a)! || a.localeCompare(b))[0]!;
  return { vm, host };
}

/** What the placement rules ask of one VM (the first rule of each kind that names it). */
export function ruleConstraints(rules: HaRule[], vm: string): Pick<PlacementRequest, 'preferred' | 'together' | 'apart'> {
  const nodes = rules.find((r): r is Extract<HaRule, { kind: 'nodes' }> => r.kind === 'nodes' && r.vms.includes(vm));
  const together = rules.find((r): r is Extract<HaRule, { kind: 'vms' }> => r.kind === 'vms' && r.together && r.vms.includes(vm));
  const apart = rules.find((r): r is Extract<HaRule, { kind: 'vms' }> => r.kind === 'vms' && !r.together && r.vms.includes(vm));
  return {
    ...(nodes ? { preferred: { rule: nodes.name, priorities: new Map(nodes.nodes.map((n) => [n.host, n.priority])), strict: nodes.strict } } : {}),
    ...(together ? { together: { rule: together.name, vms: together.vms } } : {}),
    ...(apart ? { apart: { rule: apart.name, vms: apart.vms } } : {}),
  };
}

/** Each live host's memory and what its VMs use, and where the VMs run, for placement. */
export function capacity(vms: OwnedVm[], hosts: HostRecord[]): { room: PlacementHost[]; locations: Map<string, string> } {
  const used = new Map<string, number>();
  for (const v of vms) used.set(v.owner, (used.get(v.owner) ?? 0) + v.spec.memoryMiB);
  const alive = new Set(hosts.map((h) => h.name));
  return {
    room: hosts.map((h) => ({ name: h.name, memoryMiB: h.memoryMiB, usedMiB: used.get(h.name) ?? 0 })),
    locations: new Map(vms.filter((v) => alive.has(v.owner) && v.desired === 'running').map((v) => [v.spec.name, v.owner])),
  };
}
