/** ferry cluster cpu [--all] | set MODEL|best | unset: which host runs which CPU model, and the cluster's model. */
import { lacksClusterModelLine, type ClusterCpuModel, type HostCpuModel } from '../cluster/cpu.ts';
import type { AgentClient } from '../agent/client.ts';
import { table } from './format.ts';

interface CpuHostRow {
  name: string;
  accel?: string;
  features?: string[];
  hidden?: string[];
  restriction?: string;
  best?: string | null;
  unknown?: true;
  lacksClusterModel?: string[];
}

export interface ClusterCpuView {
  hosts: CpuHostRow[];
  models: Array<{ name: string; level: number; featureCount: number; lacks: Record<string, string[]> }>;
  best: HostCpuModel | null;
  clusterModel: ClusterCpuModel | null;
  default: { model: string; why: string };
  inUse: string[];
}

const MAX_NAMED = 4;

/** "runs", or what the host lacks (the first few named; JSON has them all). */
function cell(lacks: string[]): string {
  if (!lacks.length) return 'runs';
  return `lacks ${lacks.slice(0, MAX_NAMED).join(',')}${lacks.length > MAX_NAMED ? ` +${lacks.length - MAX_NAMED}` : ''}`;
}

export function formatClusterCpu(view: ClusterCpuView, all: boolean): string {
  const known = view.hosts.filter((h) => !h.unknown);
  const lines: string[] = [];
  lines.push(
    view.clusterModel
      ? `cluster CPU model: ${view.clusterModel.model} (set by ${view.clusterModel.setBy} at ${view.clusterModel.setAt}); new VMs get it`
      : `cluster CPU model: not set ('ferry cluster cpu set best' records one); new VMs get ${view.default.model}: ${view.default.why}`,
  );
  lines.push(view.best ? `best model every host runs: ${view.best.name} (x86-64-v${view.best.level}, ${view.best.featureCount} features)` : 'best model every host runs: none');
  lines.push('');
  lines.push(
    table(
      ['host', 'accel', 'features', 'restriction', 'best model here', view.clusterModel ? `cluster model ${view.clusterModel.model}` : 'cluster model'],
      view.hosts.map((h) =>
        h.unknown
          ? [h.name, '?', '?', '-', 'not said (agent from before CPU records)', '-']
          : [h.name, h.accel!.toUpperCase(), String(h.features!.length), h.restriction ?? '-', h.best ?? 'none', view.clusterModel ? cell(h.lacksClusterModel ?? []) : '-'],
      ),
    ),
  );
  const wanted = new Set([view.best?.name, view.clusterModel?.model, ...view.inUse, ...known.map((h) => h.best)].filter((n): n is string => !!n));
  const rows = view.models.filter((m) => all || m.name.startsWith('x86-64-v') || wanted.has(m.name));
  lines.push('');
  lines.push(all ? 'every model:' : "models (the ISA levels, each host's best, the common best, the cluster's, those VMs use; --all for every model):");
  lines.push(
    table(
      ['model', 'level', 'features', ...known.map((h) => h.name)],
      rows.map((m) => [m.name, m.level ? `v${m.level}` : '-', String(m.featureCount), ...known.map((h) => cell(m.lacks[h.name] ?? []))]),
    ),
  );
  for (const h of view.hosts)
    if (h.lacksClusterModel?.length)
      lines.push(`warning: ${lacksClusterModelLine(h.name, h.lacksClusterModel, view.clusterModel!.model)}`);
  return lines.join('\n');
}

export async function clusterCpu(agent: AgentClient, verb: string | undefined, model: string | undefined, options: { json: boolean; all: boolean }): Promise<string> {
  const json = (doc: unknown) => JSON.stringify(doc, null, 2);
  if (verb === 'set' || verb === 'unset') {
    const result = await agent.call<{ clusterModel: ClusterCpuModel | null; flagged?: Array<{ host: string; lacks: string[] }>; default?: { model: string; why: string } }>(
      'POST',
      '/v1/cluster/cpu',
      { model: verb === 'set' ? model : null },
    );
    if (options.json) return json(result);
    if (!result.clusterModel) return `cluster CPU model unset; new VMs get ${result.default!.model}: ${result.default!.why}`;
    return [
      `cluster CPU model: ${result.clusterModel.model}; new VMs get it (VMs made before keep theirs)`,
      ...(result.flagged ?? []).map((f) => `warning: ${lacksClusterModelLine(f.host, f.lacks, result.clusterModel!.model)}`),
    ].join('\n');
  }
  const view = await agent.call<ClusterCpuView>('GET', '/v1/cluster/cpu');
  return options.json ? json(view) : formatClusterCpu(view, options.all);
}
