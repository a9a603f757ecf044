/**
 * CPU models across the cluster: what each host advertises (its CPU, less what its admin hides),
 * which host can run which model and what it lacks for the others, the best model every host runs,
 * and the cluster's model — the default for new VMs, recorded once an admin sets it
 * (`ferry cluster cpu set`), against which a host that joins is checked.
 *
 * A live migration keeps the guest's CPU: the destination must give every feature of the VM's model
 * (QEMU's `enforce` refuses the start otherwise). A cold start (HA recovery) may use any host that
 * runs the model. A passthrough VM ("host"/"max") moves only to a host advertising the same features.
 */
import { isaLevelOf, LEGACY_LAX_MODELS, PASSTHROUGH_MODELS, PLAIN_MODEL, type CpuCatalog } from '../qemu/cpu-models.ts';
import type { Accel, VmSpec } from '../qemu/spec.ts';
import type { HostRecord } from './model.ts';
import type { Store } from './store/types.ts';

/** node.json "cpu": how an admin makes a host advertise less than it has (as for an older host). */
export interface CpuRestriction {
  /** Advertise only the features of this model. */
  maxModel?: string;
  /** Advertise none of these features. */
  hideFeatures?: string[];
}

export interface HostCpuModel {
  name: string;
  /** The x86-64 ISA level the model covers (0: below v1). */
  level: number;
  featureCount: number;
  /** What this host lacks of the model; empty: it runs here. */
  blockers: string[];
}

/** What a host's record says about its CPU. */
export interface HostCpu {
  accel: Accel;
  /** The features it advertises (its CPU's, less the hidden ones). */
  features: string[];
  /** Features its CPU has but its admin hides. */
  hidden: string[];
  /** The admin's restriction, in words ("at most Westmere-v1"). */
  restriction?: string;
  /** Every migratable model (versioned names and ISA levels), with what the host lacks of it. */
  models: HostCpuModel[];
  /** Unversioned names and the versioned model each stands for here. */
  aliases: Record<string, string>;
}

/** The model new VMs get, set by an admin. */
export interface ClusterCpuModel {
  model: string;
  setBy: string;
  setAt: string;
}

/** Under the HA prefix with the cluster's other operational records, which every host's etcd role may write already. */
export const CLUSTER_CPU_KEY = '/ferry/ha/cluster-cpu-model';

export class CpuRestrictionError extends Error {
  override name = 'CpuRestrictionError';
}

/** The CPU a host advertises: QEMU's catalog less what the admin's restriction hides. */
export function advertisedCpu(catalog: CpuCatalog, restriction: CpuRestriction = {}): HostCpu {
  const has = new Set(catalog.hostFeatures);
  const hidden = new Set<string>();
  const said: string[] = [];
  const byName = new Map(catalog.models.map((m) => [m.name, m]));
  if (restriction.maxModel !== undefined && typeof restriction.maxModel !== 'string')
    throw new CpuRestrictionError('node.json cpu.maxModel must be a model name, as "Westmere-v1"');
  if (restriction.hideFeatures !== undefined && (!Array.isArray(restriction.hideFeatures) || restriction.hideFeatures.some((f) => typeof f !== 'string')))
    throw new CpuRestrictionError('node.json cpu.hideFeatures must be a list of feature names, as ["avx2", "fma"]');
  if (restriction.maxModel !== undefined) {
    const named = byName.get(restriction.maxModel);
    const model = named?.aliasOf ? byName.get(named.aliasOf) : named;
    if (!model || PASSTHROUGH_MODELS.includes(model.name) || model.name === 'base')
      throw new CpuRestrictionError(`node.json cpu.maxModel '${restriction.maxModel}' is not a CPU model of this QEMU; name one such as Westmere-v1 or x86-64-v2 ('ferry host probe' lists them)`);
    const keep = new Set(model.features);
    for (const f of has) if (!keep.has(f)) hidden.add(f);
    said.push(`at most ${model.name}`);
  }
  if (restriction.hideFeatures?.length) {
    const known = new Set([...has, ...catalog.models.flatMap((m) => m.features)]);
    const unknown = restriction.hideFeatures.filter((f) => !known.has(f));
    if (unknown.length) throw new CpuRestrictionError(`node.json cpu.hideFeatures: ${unknown.join(', ')} ${unknown.length > 1 ? 'are not CPU features' : 'is not a CPU feature'} QEMU knows (names as in 'avx2', 'sse4.2', 'lahf-lm')`);
    for (const f of restriction.hideFeatures) if (has.has(f)) hidden.add(f);
    said.push(`without ${restriction.hideFeatures.join(', ')}`);
  }
  const features = catalog.hostFeatures.filter((f) => !hidden.has(f));
  const advertised = new Set(features);
  const models = catalog.models
    .filter((m) => !m.aliasOf && m.migrationSafe && !PASSTHROUGH_MODELS.includes(m.name) && m.name !== 'base')
    .map((m) => ({
      name: m.name,
      level: isaLevelOf(new Set(m.features)),
      featureCount: m.features.length,
      blockers: [...new Set([...m.unavailableFeatures, ...m.features.filter((f) => !advertised.has(f))])].sort(),
    }));
  const aliases = Object.fromEntries(catalog.models.filter((m) => m.aliasOf).map((m) => [m.name, m.aliasOf!]));
  return { accel: catalog.accel, features, hidden: [...hidden].sort(), ...(said.length ? { restriction: said.join(', ') } : {}), models, aliases };
}

/** The versioned name a model goes by on a host ("qemu64" → "qemu64-v1"). */
function modelOn(cpu: HostCpu, name: string): HostCpuModel | undefined {
  const versioned = cpu.aliases[name] ?? name;
  return cpu.models.find((m) => m.name === versioned);
}

/** What `host` lacks of `model`; undefined when its record does not say (an agent from before CPU records). */
export function lacksOf(host: HostRecord, model: string): string[] | undefined {
  if (!host.cpu) return undefined;
  const m = modelOn(host.cpu, model);
  return m ? m.blockers : [`the model itself (its QEMU has no '${model}')`];
}

/** The warning every view gives of a host that lacks features of the cluster's model. */
export function lacksClusterModelLine(host: string, lacks: string[], model: string): string {
  return `${host} lacks ${lacks.join(', ')} of the cluster's CPU model ${model}: VMs of that model are not placed there (ferry cluster cpu)`;
}

/**
 * Why `to` cannot run `spec`'s CPU, or undefined when it can (or cannot tell: a host record without
 * CPU facts is not judged; QEMU's `enforce` still guards the start there). `from`: the host a live
 * migration leaves, for a passthrough VM, whose features must be the same on both.
 */
export function cpuMisfit(spec: Pick<VmSpec, 'cpuModel'>, to: HostRecord, from?: HostRecord): string | undefined {
  if (LEGACY_LAX_MODELS.includes(spec.cpuModel)) return undefined; // started without enforce (cpu-models.ts)
  if (PASSTHROUGH_MODELS.includes(spec.cpuModel)) {
    if (!from || from.name === to.name) return undefined;
    const unknown = [from, to].filter((h) => !h.cpu).map((h) => h.name);
    if (unknown.length) return `its CPU is ${from.name}'s own ('${spec.cpuModel}' passed through), and ${unknown.join(' and ')} ${unknown.length > 1 ? 'do' : 'does'} not say which CPU features ${unknown.length > 1 ? 'they have' : 'it has'} (an agent from before CPU records)`;
    if (!from.cpu || !to.cpu) return undefined;
    const there = new Set(to.cpu.features);
    const here = new Set(from.cpu.features);
    const lacks = from.cpu.features.filter((f) => !there.has(f));
    const more = to.cpu.features.filter((f) => !here.has(f));
    if (!lacks.length && !more.length && to.cpu.accel === from.cpu.accel) return undefined;
    const diff = [lacks.length ? `lacks ${some(lacks)}` : '', more.length ? `has ${some(more)} more` : '', to.cpu.accel !== from.cpu.accel ? `runs ${to.cpu.accel}, not ${from.cpu.accel}` : ''].filter(Boolean);
    return `its CPU is ${from.name}'s own ('${spec.cpuModel}' passed through), and ${to.name} ${diff.join('; ')}`;
  }
  if (!to.cpu) return undefined;
  const model = modelOn(to.cpu, spec.cpuModel);
  if (!model) return `the QEMU${to.qemu ? ` ${to.qemu.version}` : ''} of ${to.name} has no CPU model '${spec.cpuModel}'`;
  if (!model.blockers.length) return undefined;
  const hidden = new Set(to.cpu.hidden);
  const byAdmin = model.blockers.some((f) => hidden.has(f));
  return `${to.name} cannot run its CPU model ${spec.cpuModel}: it lacks ${model.blockers.join(', ')}${byAdmin ? ` (hidden by its restriction: ${to.cpu.restriction})` : ''}`;
}

/** A list of features, the first dozen named. */
function some(features: string[]): string {
  return features.length > 12 ? `${features.slice(0, 12).join(', ')} and ${features.length - 12} more` : features.join(', ');
}

/** The hosts among `hosts` that cannot run `spec`'s CPU, each with why (for placement). */
export function cpuMisfits(spec: Pick<VmSpec, 'cpuModel'>, hosts: HostRecord[], from?: HostRecord): Map<string, string> {
  const misfits = new Map<string, string>();
  for (const h of hosts) {
    const why = cpuMisfit(spec, h, from);
    if (why) misfits.set(h.name, why);
  }
  return misfits;
}

/** Better first: a higher ISA level, more features, a named QEMU model before an ISA level of the same features. */
function better(a: HostCpuModel, b: HostCpuModel): number {
  const isLevel = (m: HostCpuModel) => (m.name.startsWith('x86-64-v') ? 1 : 0);
  return b.level - a.level || b.featureCount - a.featureCount || isLevel(a) - isLevel(b) || a.name.localeCompare(b.name);
}

/** Every host with CPU facts runs it; undefined when there is none (or no host says). */
export function bestCommonModel(hosts: HostRecord[]): HostCpuModel | undefined {
  const known = hosts.filter((h) => h.cpu);
  if (!known.length) return undefined;
  const [first, ...rest] = known;
  return first!.cpu!.models
    .filter((m) => !m.blockers.length && rest.every((h) => lacksOf(h, m.name)?.length === 0))
    .sort(better)[0];
}

/** The best model one host runs (what an admin may compare with the cluster's). */
export function bestModelOf(host: HostRecord): HostCpuModel | undefined {
  return host.cpu?.models.filter((m) => !m.blockers.length).sort(better)[0];
}

/** The model a new VM gets when it names none, and why that one. */
export function defaultCpuModel(hosts: HostRecord[], recorded: ClusterCpuModel | undefined): { model: string; why: string } {
  if (recorded) return { model: recorded.model, why: `the cluster's CPU model (set by ${recorded.setBy})` };
  const best = bestCommonModel(hosts);
  if (best) return { model: best.name, why: `the best model every host runs (${hosts.filter((h) => h.cpu).length} hosts)` };
  return { model: PLAIN_MODEL, why: 'no host says which models it runs (agents from before CPU records): the plainest model' };
}

export async function readClusterCpuModel(store: Store): Promise<ClusterCpuModel | undefined> {
  const raw = await store.get(CLUSTER_CPU_KEY);
  return raw ? (JSON.parse(raw.value) as ClusterCpuModel) : undefined;
}

export async function writeClusterCpuModel(store: Store, record: ClusterCpuModel | undefined): Promise<void> {
  if (record) await store.put(CLUSTER_CPU_KEY, JSON.stringify(record));
  else await store.delete(CLUSTER_CPU_KEY);
}
