/**
 * CPU models as QEMU sees them on this host: every model with the features it needs and what the
 * host lacks of them, the host's own feature set, the x86-64 ISA levels (spelled out as flags on a
 * plain base model, as Proxmox does), and the `-cpu` argument a VM starts with (always `enforce`).
 *
 * Feature names are QEMU's canonical property names (`query-cpu-model-expansion` type "static":
 * "sse4.2", "lahf-lm"; never the aliases "sse4_2", "lahf_lm").
 */
import type { Accel, VmSpec } from './spec.ts';
import type { QmpClient } from './qmp.ts';

export interface QemuCpuModel {
  name: string;
  /** An unversioned name's versioned model ("Haswell" → "Haswell-v1"). */
  aliasOf?: string;
  migrationSafe: boolean;
  /** What this host cannot provide of the model under the accelerator probed (QEMU's own verdict). */
  unavailableFeatures: string[];
  /** Every feature the model turns on (empty for aliases: see aliasOf). */
  features: string[];
  /** An ISA level of ferry's (x86-64-vN), not one of QEMU's named models. */
  isaLevel?: number;
}

/** What QEMU offers on this host under one accelerator. */
export interface CpuCatalog {
  accel: Accel;
  /** The host's full feature set: `host` under KVM, `max` under TCG. */
  hostFeatures: string[];
  models: QemuCpuModel[];
}

/** Models that pass the host's own CPU through: a VM on them moves only between hosts with the same features. */
export const PASSTHROUGH_MODELS: readonly string[] = ['host', 'max'];

/**
 * ferry's default before CPU models were checked. qemu64 has AMD's svm, which KVM on an Intel host
 * drops: with `enforce` such a VM would no longer start there. Its VMs keep QEMU's lax start and are
 * not judged by their features; new VMs get a checked model.
 */
export const LEGACY_LAX_MODELS: readonly string[] = ['qemu64', 'qemu64-v1'];

/** The plainest checked model: what a VM gets when nothing better is known. */
export const PLAIN_MODEL = 'x86-64-v1';

/** The plain model the ISA levels are built on (no vendor extras such as svm or lahf-lm). */
export const ISA_BASE_MODEL = 'kvm64-v1';

/** x86-64 micro-architecture levels (the psABI's), each adding to the one before. */
const ISA_LEVEL_ADDS: readonly (readonly string[])[] = [
  ['cmov', 'cx8', 'fpu', 'fxsr', 'mmx', 'syscall', 'sse', 'sse2'],
  ['cx16', 'lahf-lm', 'popcnt', 'pni', 'sse4.1', 'sse4.2', 'ssse3'],
  // xsaveopt is not in the psABI's v3, but every CPU with AVX2 has it, and Linux guests under TCG
  // (QEMU 10) hang at boot on xsave without it.
  ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave', 'xsaveopt'],
  ['avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'],
];

export function isaLevelName(level: number): string {
  return `x86-64-v${level}`;
}

/** The features an ISA level requires, beyond nothing (cumulative). */
export function isaLevelFeatures(level: number): string[] {
  return ISA_LEVEL_ADDS.slice(0, level).flat();
}

/** 1..4 for "x86-64-vN"; undefined for any other name. */
export function parseIsaLevel(name: string): number | undefined {
  const m = /^x86-64-v([1-4])$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** The highest ISA level a feature set covers (0: not even x86-64-v1). */
export function isaLevelOf(features: ReadonlySet<string>): number {
  let level = 0;
  while (level < ISA_LEVEL_ADDS.length && isaLevelFeatures(level + 1).every((f) => features.has(f))) level++;
  return level;
}

/**
 * Every model of `query-cpu-definitions` with its features (one static expansion each), and the
 * host's features. `qmp` is a QEMU started with `-machine none -accel <accel>`.
 */
export async function queryCpuCatalog(qmp: QmpClient, accel: Accel): Promise<CpuCatalog> {
  type Definition = { name: string; 'alias-of'?: string; 'migration-safe'?: boolean; 'unavailable-features'?: string[] };
  const definitions = await qmp.execute<Definition[]>('query-cpu-definitions');
  const expand = async (name: string, props?: Record<string, boolean>): Promise<string[]> => {
    const result = await qmp.execute<{ model: { props?: Record<string, unknown> } }>('query-cpu-model-expansion', { type: 'static', model: { name, ...(props ? { props } : {}) } });
    return Object.entries(result.model.props ?? {})
      .filter(([, v]) => v === true)
      .map(([k]) => k)
      .sort();
  };
  const hostFeatures = await expand(accel === 'kvm' ? 'host' : 'max');
  const models: QemuCpuModel[] = [];
  for (const d of definitions) {
    if (d.name === 'host' && accel !== 'kvm') continue;
    const features = d['alias-of'] ? [] : await expand(d.name);
    models.push({
      name: d.name,
      ...(d['alias-of'] ? { aliasOf: d['alias-of'] } : {}),
      migrationSafe: d['migration-safe'] ?? false,
      unavailableFeatures: d['unavailable-features'] ?? [],
      features,
    });
  }
  return { accel, hostFeatures, models: models.sort((a, b) => a.name.localeCompare(b.name)) };
}

/**
 * The catalog with the ISA levels added, each judged from its base model and the host's features.
 * Applied to what QEMU said (also when read from the probe's cache): the levels are ferry's, not QEMU's.
 */
export function withIsaLevels(catalog: CpuCatalog): CpuCatalog {
  const models = catalog.models.filter((m) => m.isaLevel === undefined);
  const base = models.find((m) => m.name === ISA_BASE_MODEL);
  if (!base) return { ...catalog, models };
  const has = new Set(catalog.hostFeatures);
  for (let level = 1; level <= ISA_LEVEL_ADDS.length; level++) {
    const features = [...new Set([...base.features, ...isaLevelFeatures(level)])].sort();
    const lacking = [...new Set([...base.unavailableFeatures, ...isaLevelFeatures(level).filter((f) => !has.has(f))])];
    models.push({ name: isaLevelName(level), migrationSafe: true, unavailableFeatures: lacking, features, isaLevel: level });
  }
  return { ...catalog, models: models.sort((a, b) => a.name.localeCompare(b.name)) };
}

/**
 * The `-cpu` argument: the model (an ISA level spelled out as its base plus flags), the features the
 * host's admin hid taken away from a passthrough model, and `enforce` — a host that cannot give a
 * feature makes QEMU refuse to start, instead of dropping the feature and breaking a later migration.
 */
export function cpuArgument(spec: Pick<VmSpec, 'cpuModel'>, hiddenFeatures: readonly string[] = []): string {
  const level = parseIsaLevel(spec.cpuModel);
  const parts = level ? [ISA_BASE_MODEL, ...ISA_LEVEL_ADDS.slice(1, level).flat().map((f) => `+${f}`)] : [spec.cpuModel];
  if (PASSTHROUGH_MODELS.includes(spec.cpuModel)) parts.push(...hiddenFeatures.map((f) => `-${f}`));
  return [...parts, ...(LEGACY_LAX_MODELS.includes(spec.cpuModel) ? [] : ['enforce'])].join(',');
}

let hostHiddenFeatures: readonly string[] = [];

/**
 * The features this host's admin hid (node.json "cpu"), taken from passthrough VMs started here. Set
 * once by the agent, before it starts any VM (one host per agent process).
 */
export function setHostHiddenFeatures(features: readonly string[]): void {
  hostHiddenFeatures = [...features];
}

export function hiddenFeaturesOfThisHost(): readonly string[] {
  return hostHiddenFeatures;
}

/** The features QEMU named when `enforce` refused a model ("... requested feature: CPUID.07H:EBX.avx512f [bit 16]"). */
export function refusedFeatures(stderr: string): string[] {
  return [...stderr.matchAll(/requested feature: \S*?\.([A-Za-z0-9._-]+) \[bit/g)].map((m) => m[1]!);
}
