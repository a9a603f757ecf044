/**
 * The host probe on this machine's real QEMU, and accel=auto: whatever KVM does
 * here, a guest started with accel=auto must come up, and when KVM is not used
 * the user is told why.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureGuestImage, guestBoot } from '../../src/qemu/guest-image.ts';
import { probeHost, resolveAccel, type HostProbe } from '../../src/qemu/host-probe.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';
import { setHostHiddenFeatures } from '../../src/qemu/cpu-models.ts';
import { CpuModelRefusedError } from '../../src/qemu/errors.ts';
import { startVm } from '../../src/qemu/start.ts';
import { ferry } from '../helpers/cli.ts';

describe('host probe', () => {
  let cacheDir: string;
  let probe: HostProbe;

  before(async () => {
    await ensureGuestImage();
    cacheDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-probe-'));
    probe = await probeHost({ cacheDir });
  });
  after(() => rm(cacheDir, { recursive: true, force: true }));

  it('reads the QEMU version and migration capabilities', () => {
    assert.match(probe.qemuVersion, /^\d+\.\d+\.\d+$/);
    for (const cap of ['xbzrle', 'auto-converge', 'postcopy-ram', 'events', 'return-path', 'multifd'])
      assert.ok(probe.migrationCapabilities.includes(cap), `capability ${cap} missing from ${probe.migrationCapabilities.join(',')}`);
  });

  it('says whether this QEMU has the TCG dirty-tracking fix (setup installs QEMU >= 9.0), and its machine types', () => {
    assert.equal(probe.tcgDirtyTrackingFixed, Number(probe.qemuVersion.split('.')[0]) >= 9);
    assert.equal(probe.tcgDirtyTrackingFixed, true, `QEMU ${probe.qemuVersion}: setup should have installed QEMU >= 9.0`);
    const [major, minor] = probe.qemuVersion.split('.');
    assert.equal(probe.machineTypes[0], `pc-q35-${major}.${minor}`, 'the newest machine type is this QEMU\'s own');
  });

  it('lists CPU models with their features and what this host lacks of them, and the ISA levels', () => {
    const model = (name: string) => probe.cpu.models.find((m) => m.name === name);
    assert.equal(probe.cpu.accel, probe.accelerators.kvm.usable ? 'kvm' : 'tcg', 'probed under the accelerator VMs use');
    assert.ok(probe.cpu.hostFeatures.includes('sse2'), 'the host\'s own feature set, canonical names');
    assert.equal(model('qemu64')?.aliasOf, 'qemu64-v1');
    assert.deepEqual(model('kvm64-v1')?.unavailableFeatures, [], 'kvm64 runs everywhere');
    assert.ok(model('Nehalem-v1')?.features.includes('sse4.2'), model('Nehalem-v1')?.features.join(','));
    assert.ok(!model('Nehalem-v1')?.features.includes('sse4_2'), 'no aliases of feature names');
    assert.equal(model('x86-64-v2')?.isaLevel, 2);
    assert.ok(model('x86-64-v3')?.features.includes('avx2'));
    if (probe.cpu.accel === 'tcg') {
      assert.deepEqual(model('x86-64-v3')?.unavailableFeatures, [], 'TCG in QEMU >= 7.2 has AVX2');
      assert.ok(model('Skylake-Server-v4')?.unavailableFeatures.includes('avx512f'), 'TCG has no AVX-512');
      assert.deepEqual(model('x86-64-v4')?.unavailableFeatures.sort(), ['avx512bw', 'avx512cd', 'avx512dq', 'avx512f', 'avx512vl']);
    }
  });

  it("starts a VM with 'enforce': a model this host cannot give is refused at start with QEMU's own words", async () => {
    const runDir = path.join(cacheDir, 'run');
    const blocked = probe.cpu.models.find((m) => m.name === 'Skylake-Server-v4' && m.unavailableFeatures.length) ?? probe.cpu.models.find((m) => !m.aliasOf && m.unavailableFeatures.length);
    assert.ok(blocked, 'some model must need what this host lacks');
    const spec = makeVmSpec({ name: 'enforced', memoryMiB: 128, accel: probe.cpu.accel, cpuModel: blocked.name, boot: guestBoot(await ensureGuestImage(), { memcheckMiB: 0 }) });
    const refused = await startVm(spec, { runDir, probe }).then(
      async (vm) => {
        await vm.destroy();
        return undefined;
      },
      (err: Error) => err,
    );
    assert.ok(refused instanceof CpuModelRefusedError, `expected a refusal, got ${refused?.message ?? 'a running VM'}`);
    assert.deepEqual([...refused.features].sort(), [...blocked.unavailableFeatures].sort(), 'QEMU names what the probe said');
    assert.match(refused.message, new RegExp(`cannot run CPU model '${blocked.name}': it lacks .*${blocked.unavailableFeatures[0]}`));
    assert.match(refused.message, /QEMU said: .*(doesn't support requested feature|support requested features)/s);
  });

  it('an ISA level starts as its flags (the vCPU has them), and a passthrough model loses the features its host hides', async () => {
    const runDir = path.join(cacheDir, 'run');
    const image = await ensureGuestImage();
    const vcpuHas = async (vm: Awaited<ReturnType<typeof startVm>>, feature: string) => {
      const [cpu] = await vm.qmp.execute<{ 'qom-path': string }[]>('query-cpus-fast');
      return vm.qmp.execute<boolean>('qom-get', { path: cpu!['qom-path'], property: feature });
    };
    const level = makeVmSpec({ name: 'isa3', memoryMiB: 128, accel: probe.cpu.accel, cpuModel: 'x86-64-v3', boot: guestBoot(image, { memcheckMiB: 0 }) });
    const v3 = await startVm(level, { runDir, probe });
    try {
      assert.equal(await vcpuHas(v3, 'avx2'), true);
      assert.equal(await vcpuHas(v3, 'svm'), false, 'built on kvm64, not on qemu64');
    } finally {
      await v3.destroy();
    }
    setHostHiddenFeatures(['avx2']);
    try {
      const max = makeVmSpec({ name: 'pass1', memoryMiB: 128, accel: probe.cpu.accel, cpuModel: 'max', cpuPassthrough: true, boot: guestBoot(image, { memcheckMiB: 0 }) });
      const vm = await startVm(max, { runDir, probe });
      try {
        assert.equal(await vcpuHas(vm, 'avx2'), false, 'hidden by the host');
        assert.equal(await vcpuHas(vm, 'avx'), true);
      } finally {
        await vm.destroy();
      }
    } finally {
      setHostHiddenFeatures([]);
    }
  });

  it('judges KVM by booting a guest, and says why when it is not used', () => {
    assert.equal(probe.accelerators.tcg.usable, true);
    assert.ok(probe.accelerators.kvm.reason.length > 10);
    const auto = resolveAccel('auto', probe);
    if (probe.accelerators.kvm.usable) {
      assert.equal(auto.accel, 'kvm');
      assert.match(probe.accelerators.kvm.reason, /booted under KVM/);
    } else {
      assert.equal(auto.accel, 'tcg');
      assert.match(auto.warning ?? '', /accel=auto uses TCG/);
      assert.match(auto.warning ?? '', new RegExp(probe.accelerators.kvm.reason.slice(0, 20).replace(/[/.]/g, '\\$&')));
    }
  });

  it('ferry host probe prints the same facts, for a person and as JSON', async () => {
    const json = await ferry({}, 'host', 'probe', '--json');
    assert.equal(json.code, 0, json.stderr);
    assert.equal(json.json.qemuVersion, probe.qemuVersion);
    assert.deepEqual(json.json.machineTypes, probe.machineTypes);
    const human = await ferry({}, 'host', 'probe');
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`^QEMU ${probe.qemuVersion.replaceAll('.', '\\.')} on Linux`, 'm'));
    assert.match(human.stdout, probe.tcgDirtyTrackingFixed ? /TCG dirty tracking: sound/ : /TCG dirty tracking: LOSES PAGES/);
    assert.match(human.stdout, new RegExp(`machine types: newest ${probe.machineTypes[0]}`));
    assert.match(human.stdout, /accel=auto uses (kvm|tcg)/);
    const wrong = await ferry({}, 'host', 'inspect');
    assert.equal(wrong.code, 2, 'a usage error');
    assert.match(wrong.stderr, /usage: ferry host probe/);
  });

  it('answers from its cache the second time', async () => {
    const started = Date.now();
    const again = await probeHost({ cacheDir });
    assert.equal(again.probedAt, probe.probedAt);
    assert.ok(Date.now() - started < 2000);
  });

  it('a guest with accel=auto comes up, on the accelerator the probe chose', async () => {
    const runDir = path.join(cacheDir, 'run');
    const warnings: string[] = [];
    const spec = makeVmSpec({ name: 'auto1', memoryMiB: 128, accel: 'auto', boot: guestBoot(await ensureGuestImage(), { memcheckMiB: 0 }) });
    const vm = await startVm(spec, { runDir, probe, onWarning: (w) => warnings.push(w) });
    try {
      const expected = resolveAccel('auto', probe);
      assert.equal(vm.accel, expected.accel);
      assert.equal(warnings.length, expected.warning ? 1 : 0);
      const status = await vm.qmp.execute<{ status: string }>('query-status');
      assert.equal(status.status, 'running');
    } finally {
      await vm.destroy();
    }
  });
});
