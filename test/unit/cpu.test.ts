/**
 * CPU models in the small: what a host advertises under a restriction, which host runs which model,
 * the best common model, and every placement (drain, balance, HA) keeping a VM off a host that lacks
 * a feature of its model. The catalog is a seam: a small one written here (the real QEMU's catalog
 * and `enforce` are exercised in test/integration/host.test.ts and cpu.test.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { advertisedCpu, bestCommonModel, cpuMisfit, CpuRestrictionError, defaultCpuModel, type CpuRestriction } from '../../src/cluster/cpu.ts';
import { placeVms } from '../../src/cluster/ha/placement.ts';
import type { HostRecord, OwnedVm } from '../../src/cluster/model.ts';
import { planBalance } from '../../src/cluster/moves/balance.ts';
import { planDrain } from '../../src/cluster/moves/plan.ts';
import { cpuArgument, isaLevelOf, refusedFeatures, withIsaLevels, type CpuCatalog } from '../../src/qemu/cpu-models.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';

const BASE = ['cmov', 'cx8', 'fpu', 'fxsr', 'mmx', 'syscall', 'sse', 'sse2', 'cx16', 'pni', 'lm'];
const OLD = [...BASE, 'lahf-lm', 'popcnt', 'sse4.1', 'sse4.2', 'ssse3'];
const NEW = [...OLD, 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave', 'xsaveopt', 'aes'];
const WIDE = [...NEW, 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'];

const catalog: CpuCatalog = withIsaLevels({
  accel: 'tcg',
  hostFeatures: [...NEW, 'extra1'],
  models: [
    { name: 'kvm64-v1', migrationSafe: true, unavailableFeatures: [], features: BASE },
    { name: 'Old-v1', migrationSafe: true, unavailableFeatures: [], features: OLD },
    { name: 'Old', aliasOf: 'Old-v1', migrationSafe: true, unavailableFeatures: [], features: [] },
    { name: 'New-v1', migrationSafe: true, unavailableFeatures: [], features: NEW },
    { name: 'Wide-v1', migrationSafe: true, unavailableFeatures: ['avx512bw', 'avx512cd', 'avx512dq', 'avx512f', 'avx512vl'], features: WIDE },
    { name: 'max', migrationSafe: false, unavailableFeatures: [], features: [...NEW, 'extra1'] },
  ],
});
const host = (name: string, restriction?: CpuRestriction, memoryMiB = 1024): HostRecord => ({ name, url: '', address: name, memoryMiB, startedAt: '', cpu: advertisedCpu(catalog, restriction) });
const vm = (name: string, owner: string, cpuModel: string, memoryMiB = 128): OwnedVm => ({
  spec: makeVmSpec({ name, memoryMiB, cpuModel, ...(cpuModel === 'max' ? { cpuPassthrough: true } : {}), boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } }),
  owner,
  desired: 'running',
  token: 1,
});
const blockers = (h: HostRecord, model: string) => h.cpu!.models.find((m) => m.name === model)!.blockers;

describe('what a host advertises', () => {
  it('unrestricted: every model it has the features for runs; the ISA levels are judged like models', () => {
    const h = host('h1');
    assert.deepEqual(blockers(h, 'New-v1'), []);
    assert.deepEqual(blockers(h, 'Wide-v1'), ['avx512bw', 'avx512cd', 'avx512dq', 'avx512f', 'avx512vl']);
    assert.deepEqual(blockers(h, 'x86-64-v3'), []);
    assert.deepEqual(blockers(h, 'x86-64-v4'), ['avx512bw', 'avx512cd', 'avx512dq', 'avx512f', 'avx512vl'].sort());
    assert.deepEqual(h.cpu!.models.map((m) => [m.name, m.level]).filter(([n]) => String(n).startsWith('x86')), [['x86-64-v1', 1], ['x86-64-v2', 2], ['x86-64-v3', 3], ['x86-64-v4', 4]]);
    assert.ok(!h.cpu!.models.some((m) => m.name === 'max' || m.name === 'Old'), 'passthrough models and aliases are not in the list');
    assert.equal(h.cpu!.aliases['Old'], 'Old-v1');
  });

  it('a maximum model hides every feature beyond it; newer models then lack them', () => {
    const h = host('h3', { maxModel: 'Old' });
    assert.deepEqual(h.cpu!.features, OLD);
    assert.ok(h.cpu!.hidden.includes('avx2') && h.cpu!.hidden.includes('extra1'));
    assert.equal(h.cpu!.restriction, 'at most Old-v1');
    assert.deepEqual(blockers(h, 'Old-v1'), []);
    assert.deepEqual(blockers(h, 'x86-64-v2'), []);
    assert.deepEqual(blockers(h, 'New-v1'), ['abm', 'aes', 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'movbe', 'xsave', 'xsaveopt']);
  });

  it('hidden features; a model or feature QEMU does not know is a configuration error', () => {
    const h = host('h2', { hideFeatures: ['avx2'] });
    assert.deepEqual(blockers(h, 'x86-64-v3'), ['avx2']);
    assert.deepEqual(blockers(h, 'x86-64-v2'), []);
    assert.throws(() => advertisedCpu(catalog, { hideFeatures: ['avx3'] }), (err: Error) => err instanceof CpuRestrictionError && /avx3 is not a CPU feature/.test(err.message));
    assert.throws(() => advertisedCpu(catalog, { maxModel: 'Pentium9' }), /'Pentium9' is not a CPU model of this QEMU/);
    assert.throws(() => advertisedCpu(catalog, { maxModel: 'max' }), CpuRestrictionError);
  });
});

describe('the cluster model', () => {
  it('the best model every host runs: a higher ISA level first, then more features, a named model before a level of the same features', () => {
    assert.equal(bestCommonModel([host('h1'), host('h2')])?.name, 'New-v1');
    assert.equal(bestCommonModel([host('h1'), host('h2'), host('h3', { maxModel: 'Old' })])?.name, 'Old-v1', 'drops to what the older host runs');
    assert.equal(bestCommonModel([host('h1'), host('h2', { hideFeatures: ['aes'] })])?.name, 'x86-64-v3', 'without aes, New-v1 is out; the level stays');
    assert.equal(bestCommonModel([]), undefined);
  });

  it('new VMs get the recorded model, else the best common one, else the plainest level when no host says', () => {
    const hosts = [host('h1'), host('h3', { maxModel: 'Old' })];
    assert.equal(defaultCpuModel(hosts, { model: 'New-v1', setBy: 'admin', setAt: '' }).model, 'New-v1');
    assert.equal(defaultCpuModel(hosts, undefined).model, 'Old-v1');
    assert.equal(defaultCpuModel([{ ...hosts[0]!, cpu: undefined }], undefined).model, 'x86-64-v1');
  });
});

describe('which host can take a VM', () => {
  const h1 = host('h1');
  const h2 = host('h2');
  const h3 = host('h3', { maxModel: 'Old' });

  it('names the features a host lacks, and when its restriction hides them', () => {
    assert.equal(cpuMisfit({ cpuModel: 'New-v1' }, h1), undefined);
    assert.equal(cpuMisfit({ cpuModel: 'Old' }, h3), undefined, 'an alias is its versioned model');
    const why = cpuMisfit({ cpuModel: 'New-v1' }, h3);
    assert.match(why ?? '', /^h3 cannot run its CPU model New-v1: it lacks abm, aes, avx, avx2, .*\(hidden by its restriction: at most Old-v1\)$/);
    assert.match(cpuMisfit({ cpuModel: 'Wide-v1' }, h1) ?? '', /it lacks avx512bw, .*avx512vl$/);
    assert.match(cpuMisfit({ cpuModel: 'Nope-v9' }, h1) ?? '', /has no CPU model 'Nope-v9'/);
    assert.equal(cpuMisfit({ cpuModel: 'Wide-v1' }, { ...h1, cpu: undefined }), undefined, 'a host that does not say is not judged (enforce guards it)');
  });

  it('a passthrough VM moves live only between hosts with the same features; a cold start goes anywhere', () => {
    assert.equal(cpuMisfit({ cpuModel: 'max' }, h2, h1), undefined);
    assert.match(cpuMisfit({ cpuModel: 'max' }, h3, h1) ?? '', /its CPU is h1's own \('max' passed through\), and h3 lacks avx, avx2, bmi1/);
    assert.match(cpuMisfit({ cpuModel: 'max' }, h1, h3) ?? '', /h1 has avx, .* more/);
    assert.equal(cpuMisfit({ cpuModel: 'max' }, h3), undefined);
    assert.match(cpuMisfit({ cpuModel: 'max' }, { ...h2, cpu: undefined }, h1) ?? '', /h2 does not say which CPU features it has/, 'unknown is not the same');
  });

  it("qemu64, ferry's default before CPU checks, keeps its lax start and is not judged (KVM on Intel drops its svm)", () => {
    assert.equal(cpuArgument({ cpuModel: 'qemu64' }), 'qemu64');
    assert.equal(cpuMisfit({ cpuModel: 'qemu64' }, host('h3', { hideFeatures: ['sse2'] })), undefined);
    assert.equal(cpuArgument(makeVmSpec({ name: 'plain', boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } })), 'kvm64-v1,enforce', 'a new spec gets a vendor-neutral, checked model');
  });

  it('HA placement, drains and balance leave out hosts that cannot run the model', () => {
    const [placed] = placeVms([{ vm: 'n1', memoryMiB: 128, exclude: new Set(), cpuMisfits: new Map([['h3', 'h3 lacks avx']]) }], [
      { name: 'h3', memoryMiB: 4096, usedMiB: 0 },
      { name: 'h2', memoryMiB: 1024, usedMiB: 512 },
    ]);
    assert.deepEqual(placed, { vm: 'n1', host: 'h2' }, 'the roomier host lacks a feature');
    const [none] = placeVms([{ vm: 'n1', memoryMiB: 128, exclude: new Set(), cpuMisfits: new Map([['h3', 'h3 lacks avx']]) }], [{ name: 'h3', memoryMiB: 4096, usedMiB: 0 }]);
    assert.deepEqual(none, { vm: 'n1', reason: 'no host it could use runs its CPU: h3 lacks avx' });

    const vms = [vm('n1', 'h1', 'New-v1'), vm('o1', 'h1', 'Old-v1')];
    const plan = planDrain({ host: 'h1', vms, hosts: [h1, h3], pools: [], rules: [], unavailable: new Map() });
    const by = new Map(plan.map((i) => [i.vm, i]));
    assert.equal(by.get('o1')!.to, 'h3');
    assert.equal(by.get('n1')!.progress.state, 'blocked');
    assert.match((by.get('n1')!.progress as { reason: string }).reason, /h3 cannot run its CPU model New-v1: it lacks abm/);
    const spread = planDrain({ host: 'h1', vms, hosts: [h1, h2, h3], pools: [], rules: [], unavailable: new Map() });
    assert.equal(spread.find((i) => i.vm === 'n1')!.to, 'h2');

    const full = [vm('a', 'h1', 'New-v1', 256), vm('b', 'h1', 'New-v1', 256), vm('c', 'h1', 'Old-v1', 128)];
    const moves = planBalance({ vms: full, hosts: [h1, h3], pools: [], rules: [], unavailable: new Set() });
    assert.deepEqual(moves.map((m) => [m.vm, m.to]), [['c', 'h3']], 'only the VM whose model h3 runs moves there');
  });
});

describe('the -cpu argument', () => {
  it('an ISA level is its base and flags; a passthrough model loses what the host hides; always enforce', () => {
    assert.equal(cpuArgument({ cpuModel: 'Westmere-v1' }), 'Westmere-v1,enforce');
    assert.equal(cpuArgument({ cpuModel: 'x86-64-v2' }), 'kvm64-v1,+cx16,+lahf-lm,+popcnt,+pni,+sse4.1,+sse4.2,+ssse3,enforce');
    assert.match(cpuArgument({ cpuModel: 'x86-64-v3' }), /^kvm64-v1,.*\+avx2,.*\+xsaveopt,enforce$/);
    assert.equal(cpuArgument({ cpuModel: 'max' }, ['avx2', 'bmi2']), 'max,-avx2,-bmi2,enforce');
    assert.equal(cpuArgument({ cpuModel: 'Westmere-v1' }, ['avx2']), 'Westmere-v1,enforce', 'a named model is refused where it lacks a feature, never trimmed');
    assert.equal(isaLevelOf(new Set(OLD)), 2);
    assert.equal(isaLevelOf(new Set(NEW)), 3);
  });

  it("reads the features QEMU's enforce refused", () => {
    const stderr = [
      "qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.07H:EBX.avx512f [bit 16]",
      "qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.tsc-deadline [bit 24]",
      "qemu-system-x86_64: TCG doesn't support requested features",
    ].join('\n');
    assert.deepEqual(refusedFeatures(stderr), ['avx512f', 'tsc-deadline']);
    assert.deepEqual(refusedFeatures('qemu-system-x86_64: -drive: no such file'), []);
  });
});
