/**
 * `ferry cluster balance`: which VMs to move so that the hosts' memory use evens out. Greedy, as
 * Proxmox's CRS and oVirt's even distribution: while the fullest and the emptiest host differ, move
 * from the fullest the running VM that brings them closest (one that fits, runs its CPU model there, keeps the HA rules and
 * reaches its disks there), and stop when no move narrows the spread. Pure: the cluster in, the
 * moves out; the same runner as a drain carries them out.
 */
import { cpuMisfit } from '../cpu.ts';
import type { HostRecord, OwnedVm } from '../model.ts';
import type { StoragePoolConfig } from '../../storage/types.ts';
import type { HaRule } from '../ha/records.ts';
import type { MoveItem } from './records.ts';

export interface BalanceInput {
  vms: OwnedVm[];
  hosts: HostRecord[];
  pools: StoragePoolConfig[];
  rules: HaRule[];
  /** Hosts left out (in maintenance, fenced): nothing moves to or from them. */
  unavailable: ReadonlySet<string>;
  /** At most this many moves (a plan, not a reshuffle). */
  maxMoves?: number;
}

export interface Spread {
  /** Per host: memory its VMs take (MiB), and its share of its memory. */
  hosts: Array<{ host: string; usedMiB: number; memoryMiB: number; share: number }>;
  /** Fullest share minus emptiest share, in percentage points. */
  spreadPoints: number;
}

export function spreadOf(vms: OwnedVm[], hosts: HostRecord[], unavailable: ReadonlySet<string> = new Set()): Spread {
  const counted = hosts.filter((h) => !unavailable.has(h.name));
  const rows = counted.map((h) => {
    const usedMiB = vms.filter((v) => v.owner === h.name).reduce((sum, v) => sum + v.spec.memoryMiB, 0);
    return { host: h.name, usedMiB, memoryMiB: h.memoryMiB, share: h.memoryMiB ? usedMiB / h.memoryMiB : 1 };
  });
  const shares = rows.map((r) => r.share);
  return { hosts: rows, spreadPoints: rows.length ? Math.round((Math.max(...shares) - Math.min(...shares)) * 1000) / 10 : 0 };
}

export function planBalance(input: BalanceInput): MoveItem[] {
  const { pools, rules, unavailable } = input;
  const hosts = input.hosts.filter((h) => !unavailable.has(h.name));
  const where = new Map(input.vms.map((v) => [v.spec.name, v.owner]));
  const used = new Map(hosts.map((h) => [h.name, 0]));
  for (const v of input.vms) if (used.has(v.owner)) used.set(v.owner, used.get(v.owner)! + v.spec.memoryMiB);
  const memory = new Map(hosts.map((h) => [h.name, h.memoryMiB]));
  const record = new Map(hosts.map((h) => [h.name, h]));
  const share = (h: string, delta = 0) => (used.get(h)! + delta) / memory.get(h)!;
  const moved = new Set<string>();
  const items: MoveItem[] = [];
  for (let round = 0; round < (input.maxMoves ?? 20) && hosts.length > 1; round++) {
    const byShare = [...used.keys()].sort((a, b) => share(b) - share(a) || a.localeCompare(b));
    const spread = share(byShare[0]!) - share(byShare.at(-1)!);
    let best: { vm: OwnedVm; to: string; spread: number } | undefined;
    for (const from of byShare.slice(0, 1)) {
      for (const vm of input.vms) {
        if (vm.owner !== from || where.get(vm.spec.name) !== from || vm.desired !== 'running' || moved.has(vm.spec.name)) continue;
        for (const to of byShare.slice(1)) {
          if (used.get(to)! + vm.spec.memoryMiB > memory.get(to)! || !reaches(vm, to, from, pools) || !keepsRules(vm.spec.name, from, to, rules, where)) continue;
          if (cpuMisfit(vm.spec, record.get(to)!, record.get(from))) continue;
          const after = [...used.keys()].map((h) => share(h, h === from ? -vm.spec.memoryMiB : h === to ? vm.spec.memoryMiB : 0));
          const newSpread = Math.max(...after) - Math.min(...after);
          if (newSpread < spread - 1e-9 && (!best || newSpread < best.spread)) best = { vm, to, spread: newSpread };
        }
      }
    }
    if (!best) break;
    const name = best.vm.spec.name;
    items.push({ vm: name, from: best.vm.owner, to: best.to, memoryMiB: best.vm.spec.memoryMiB, why: `evens out memory: spread ${points(spread)} → ${points(best.spread)} points`, progress: { state: 'waiting' } });
    used.set(best.vm.owner, used.get(best.vm.owner)! - best.vm.spec.memoryMiB);
    used.set(best.to, used.get(best.to)! + best.vm.spec.memoryMiB);
    where.set(name, best.to);
    moved.add(name);
  }
  return items;
}

function points(share: number): string {
  return (Math.round(share * 1000) / 10).toFixed(1);
}

/** Shared and local disks go anywhere (local ones are copied); a replicated one only to its other replica's host. */
function reaches(vm: OwnedVm, to: string, from: string, pools: StoragePoolConfig[]): boolean {
  return (vm.spec.disks ?? []).every((disk) => {
    const pool = pools.find((p) => p.name === disk.pool);
    if (!pool) return false;
    return pool.type !== 'replicated' || (disk.replicas ?? []).filter((h) => h !== from).includes(to);
  });
}

/**
 * A strict nodes rule allows `to`, and a failback rule does not rank it below `from` (failback would
 * move it back); no VM kept apart is there; VMs kept together stay together (none of them moves alone).
 */
function keepsRules(vm: string, from: string, to: string, rules: HaRule[], where: ReadonlyMap<string, string>): boolean {
  return rules.every((rule) => {
    if (!rule.vms.includes(vm)) return true;
    if (rule.kind === 'nodes') {
      const priority = (host: string) => rule.nodes.find((n) => n.host === host)?.priority ?? -1;
      return (!rule.strict || rule.nodes.some((n) => n.host === to)) && (!rule.failback || priority(to) >= priority(from));
    }
    const others = rule.vms.filter((v) => v !== vm && where.has(v));
    return rule.together ? others.length === 0 : !others.some((v) => where.get(v) === to);
  });
}
