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

  it('lists CPU models with the features this host lacks for them', () => {
    const qemu64 = probe.cpuModels.find((m) => m.name === 'qemu64');
    assert.ok(qemu64, 'qemu64 must be listed');
    assert.deepEqual(qemu64.unavailableFeatures, [], 'qemu64 runs everywhere under TCG');
    assert.ok(probe.cpuModels.some((m) => m.unavailableFeatures.length > 0), 'some models must need features TCG lacks');
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
