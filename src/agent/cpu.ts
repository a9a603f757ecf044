/**
 * The agent's side of CPU models: what this host advertises (probed once at start, less what its
 * admin hides), `ferry cluster cpu` (the matrix, the best common model, the cluster's model), and
 * which hosts can take a VM (`ferry vm migrate NAME --dry-run` without --to).
 */
import path from 'node:path';
import { advertisedCpu, bestCommonModel, bestModelOf, cpuMisfit, CpuRestrictionError, defaultCpuModel, lacksClusterModelLine, lacksOf, readClusterCpuModel, writeClusterCpuModel, type HostCpu } from '../cluster/cpu.ts';
import { PASSTHROUGH_MODELS } from '../qemu/cpu-models.ts';
import type { HostRecord } from '../cluster/model.ts';
import { destinationsForDisks } from '../cluster/moves/plan.ts';
import { hostsTakingNoVm } from '../cluster/moves/records.ts';
import { probeHost } from '../qemu/host-probe.ts';
import { setHostHiddenFeatures } from '../qemu/cpu-models.ts';
import { ConfigError, type NodeConfig } from './config.ts';
import { requireVm, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { fields, NO_INPUT, NOTHING, pathOnly, VM } from './request-schema.ts';

/** Probes this host's CPU (cached per QEMU and kernel) and applies node.json's restriction; QEMUs started here hide what it hides. */
export async function advertiseHostCpu(node: NodeConfig): Promise<HostCpu> {
  const probe = await probeHost({ runDir: path.join(node.runDir, 'probe') });
  try {
    const cpu = advertisedCpu(probe.cpu, node.cpu);
    setHostHiddenFeatures(cpu.hidden);
    return cpu;
  } catch (err) {
    throw err instanceof CpuRestrictionError ? new ConfigError(err.message) : err;
  }
}

/** One line for the agent's log when it registers: what it runs, and what it lacks of the cluster's model. */
export async function describeJoin(ctx: AgentContext, record: HostRecord): Promise<string> {
  const cpu = record.cpu!;
  const recorded = await readClusterCpuModel(ctx.state.store);
  const best = bestModelOf(record);
  const head = `CPU: ${cpu.accel.toUpperCase()}, ${cpu.features.length} features${cpu.restriction ? ` (${cpu.restriction}: ${cpu.hidden.length} hidden)` : ''}, best model here ${best?.name ?? 'none'}`;
  if (!recorded) return head;
  const lacks = lacksOf(record, recorded.model) ?? [];
  return lacks.length ? `${head}; warning: ${lacksClusterModelLine(record.name, lacks, recorded.model)}` : `${head}; runs the cluster's CPU model ${recorded.model}`;
}

export interface CandidateHost {
  host: string;
  ok: boolean;
  /** Why not (empty when ok). */
  reasons: string[];
}

/** Every host as a live-migration destination of `vm`: can it take it, and if not, why. */
export async function candidateHosts(ctx: AgentContext, name: string): Promise<{ vm: string; from: string; cpuModel: string; hosts: CandidateHost[] }> {
  const vm = await requireVm(ctx, name);
  const [hosts, vms, pools, noVm] = await Promise.all([ctx.state.hosts(), ctx.state.vms(), ctx.state.pools(), hostsTakingNoVm(ctx.state.store)]);
  const from = hosts.find((h) => h.name === vm.owner);
  const reach = destinationsForDisks(vm, pools, vm.owner);
  const used = new Map<string, number>();
  for (const v of vms) used.set(v.owner, (used.get(v.owner) ?? 0) + v.spec.memoryMiB);
  const result = hosts
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((h) => {
      const reasons: string[] = [];
      if (h.name === vm.owner) reasons.push('it runs there now');
      else {
        const unavailable = noVm.get(h.name);
        if (unavailable) reasons.push(`it ${unavailable}`);
        const misfit = cpuMisfit(vm.spec, h, from);
        if (misfit) reasons.push(misfit);
        const free = h.memoryMiB - (used.get(h.name) ?? 0);
        if (free < vm.spec.memoryMiB) reasons.push(`${free} MiB free, it needs ${vm.spec.memoryMiB} MiB`);
        if ('reason' in reach) reasons.push(reach.reason);
        else if (reach.hosts && !reach.hosts.has(h.name)) reasons.push(`its replicated disks have no replica there (they are on ${[...reach.hosts].join(', ')})`);
      }
      return { host: h.name, ok: !reasons.length, reasons };
    });
  return { vm: name, from: vm.owner, cpuModel: vm.spec.cpuModel, hosts: result };
}

export function cpuRoutes(ctx: AgentContext): Route[] {
  const store = ctx.state.store;
  return [
    {
      method: 'GET',
      pattern: '/v1/cluster/cpu',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => {
        const [hosts, recorded, vms] = await Promise.all([ctx.state.hosts(), readClusterCpuModel(store), ctx.state.vms()]);
        hosts.sort((a, b) => a.name.localeCompare(b.name));
        return {
          hosts: hosts.map((h) => ({
            name: h.name,
            ...(h.cpu ? { accel: h.cpu.accel, features: h.cpu.features, hidden: h.cpu.hidden, ...(h.cpu.restriction ? { restriction: h.cpu.restriction } : {}), best: bestModelOf(h)?.name ?? null } : { unknown: true }),
            ...(recorded && h.cpu ? { lacksClusterModel: lacksOf(h, recorded.model) ?? [] } : {}),
          })),
          models: modelRows(hosts),
          best: bestCommonModel(hosts) ?? null,
          clusterModel: recorded ?? null,
          default: defaultCpuModel(hosts, recorded),
          inUse: [...new Set(vms.map((v) => v.spec.cpuModel))].sort(),
        };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/cpu',
      who: 'admin',
      input: {
        params: NOTHING,
        body: fields({ model: { type: ['string', 'null'], pattern: '^[A-Za-z][A-Za-z0-9._-]{0,63}$', description: "a CPU model name ('best' for the best every host runs), or null to unset it" } }, ['model']),
      },
      handler: async (_params, body, caller) => {
        const hosts = await ctx.state.hosts();
        if (body['model'] === null) {
          await writeClusterCpuModel(store, undefined);
          return { clusterModel: null, default: defaultCpuModel(hosts, undefined) };
        }
        let model = body['model'];
        if (model === 'best') model = bestCommonModel(hosts)?.name;
        if (typeof model !== 'string' || !/^[A-Za-z][A-Za-z0-9._-]{0,63}$/.test(model))
          throw new RefusedError(body['model'] === 'best' ? 'no model runs on every host (or no host says which it runs); see ferry cluster cpu' : "give a CPU model name ('best' for the best every host runs)");
        if (PASSTHROUGH_MODELS.includes(model)) throw new RefusedError(`'${model}' is each host's own CPU: a cluster model is one every host gives alike; name a model ('best' for the best every host runs)`);
        const known = hosts.filter((h) => h.cpu);
        if (!known.length) throw new RefusedError('no host says which CPU models it runs (agents from before CPU records); upgrade them first');
        const lacking = known.map((h) => ({ host: h.name, lacks: lacksOf(h, model) ?? [] })).filter((l) => l.lacks.length);
        if (lacking.length === known.length)
          throw new RefusedError(`no host runs '${model}': ${lacking.map((l) => `${l.host} lacks ${l.lacks.join(', ')}`).join('; ')}; see ferry cluster cpu`);
        const record = { model, setBy: caller.name, setAt: new Date().toISOString() };
        await writeClusterCpuModel(store, record);
        return { clusterModel: record, flagged: lacking };
      },
    },
    { method: 'GET', pattern: '/v1/vms/:name/candidates', who: 'admin', input: pathOnly({ name: VM }), handler: async ({ name }) => candidateHosts(ctx, name!) },
  ];
}

/** Per model (ISA levels, each host's best, the common best, and any a host cannot run): what each host lacks of it. */
function modelRows(hosts: HostRecord[]): Array<{ name: string; level: number; featureCount: number; lacks: Record<string, string[]> }> {
  const known = hosts.filter((h) => h.cpu);
  const names = new Set(known.flatMap((h) => h.cpu!.models.map((m) => m.name)));
  return [...names].sort().map((name) => {
    const m = known.map((h) => h.cpu!.models.find((x) => x.name === name)).find(Boolean)!;
    return { name, level: m.level, featureCount: m.featureCount, lacks: Object.fromEntries(known.map((h) => [h.name, lacksOf(h, name) ?? []])) };
  });
}
