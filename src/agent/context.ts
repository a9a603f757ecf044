/** What every part of a running agent shares. */
import { MoveRecords } from '../cluster/moves/records.ts';
import type { RevocationList } from './revocation.ts';
import type { ConsoleRelay } from './console.ts';
import type { VncRelay } from './vnc.ts';
import type { Identity } from '../cluster/pki.ts';
import type { ClusterState } from '../cluster/model.ts';
import { AgentClient } from './client.ts';
import type { NodeConfig } from './config.ts';
import { NotFoundError, RefusedError, StaleTokenError } from './errors.ts';
import type { LocalRuntime } from './runtime.ts';
import type { ReplicationManager } from './replication.ts';
import type { OwnedVm } from '../cluster/model.ts';
import { StorageCatalog } from '../storage/registry.ts';
import { cpuMisfit } from '../cluster/cpu.ts';
import type { VmSpec } from '../qemu/spec.ts';
import type { AgentMetrics } from '../api/metrics.ts';

export interface AgentContext {
  node: NodeConfig;
  identity: Identity;
  state: ClusterState;
  runtime: LocalRuntime;
  /** Replicated volumes on this host: exports, replication jobs, their handover in migrations. */
  replication: ReplicationManager;
  /** Certificates no agent accepts any more. */
  revocations: RevocationList;
  /** Serial console sessions of this host's VMs. */
  consoles: ConsoleRelay;
  displays: VncRelay;
  log: (line: string) => void;
  /** Pets the watchdog with this host's HA guests now and tells the store which VMs it guards (after a start). */
  guard?: () => Promise<void>;
  /** Prometheus metrics (api/metrics.ts), served by the REST API. */
  metrics?: AgentMetrics;
}

export async function peer(ctx: AgentContext, host: string): Promise<AgentClient> {
  const record = await ctx.state.host(host);
  if (!record) throw new NotFoundError(`host '${host}' is not in the cluster (or its agent is down); see 'ferry node list'`);
  return new AgentClient({ url: record.url, name: record.name }, ctx.identity);
}

export async function requireVm(ctx: AgentContext, name: string): Promise<OwnedVm> {
  const vm = await ctx.state.vm(name);
  if (!vm) throw new NotFoundError(`no VM named '${name}'; see 'ferry vm list'`);
  return vm;
}

/** The VM as the store has it, if the caller's token is current; else a StaleTokenError. */
export async function checkToken(ctx: AgentContext, name: string, token: unknown): Promise<OwnedVm> {
  const vm = await ctx.state.vm(name);
  if (typeof token !== 'number' || !vm || vm.token !== token) throw new StaleTokenError(name, Number(token), vm?.token);
  return vm;
}

/** MiB of guest memory a host has left, by the VMs the store says it owns. */
export async function freeMemoryMiB(ctx: AgentContext, host: string): Promise<number> {
  const record = await ctx.state.host(host);
  if (!record) throw new NotFoundError(`host '${host}' is not in the cluster (or its agent is down)`);
  const used = (await ctx.state.vms()).filter((v) => v.owner === host).reduce((sum, v) => sum + v.spec.memoryMiB, 0);
  return record.memoryMiB - used;
}

/**
 * `host` may take `spec`'s VM: it is not in maintenance, runs the VM's CPU model (for a live
 * migration from `liveFrom`, keeps its CPU as it is), and has the memory. `creating`: the VM is
 * new, so another model is still a choice.
 */
export async function requireRoom(ctx: AgentContext, host: string, spec: VmSpec, options: { liveFrom?: string; creating?: boolean } = {}): Promise<void> {
  const maintenance = await new MoveRecords(ctx.state.store).maintenance(host);
  if (maintenance)
    throw new RefusedError(`host '${host}' is in maintenance since ${maintenance.since} (by ${maintenance.by}): it takes no new VM; choose another host, or end it with 'ferry node maintenance off ${host}'`);
  const [record, from] = await Promise.all([ctx.state.host(host), options.liveFrom ? ctx.state.host(options.liveFrom) : undefined]);
  const misfit = record && cpuMisfit(spec, record, from);
  if (misfit) {
    const hint = options.liveFrom
      ? `'ferry vm migrate ${spec.name} --dry-run' lists the hosts that can take it`
      : options.creating
        ? 'choose another host or --cpu model'
        : "choose another host (a VM's CPU model stays what it was made with)";
    throw new RefusedError(`'${spec.name}' cannot run there: ${misfit}; ${hint}; 'ferry cluster cpu' shows the models each host runs`);
  }
  const free = await freeMemoryMiB(ctx, host);
  if (free < spec.memoryMiB)
    throw new RefusedError(`host '${host}' has ${free} MiB free for guests, '${spec.name}' needs ${spec.memoryMiB} MiB; choose another host or stop a VM there`);
}

/** The cluster's storage pools as this host reaches them. */
export async function storageCatalog(ctx: AgentContext): Promise<StorageCatalog> {
  return new StorageCatalog(await ctx.state.pools(), ctx.node.name);
}
