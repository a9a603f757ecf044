/** QEMU versions and the defects ferry works around; the machine type a cluster of mixed QEMUs agrees on. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compareQemuVersions, lostPagesDefect, parseQemuVersion, QemuVersionFormatError, tcgDirtyTrackingSound } from '../../src/qemu/version.ts';
import { versionedQ35 } from '../../src/qemu/host-probe.ts';
import { newestCommonMachineType } from '../../src/cluster/compatibility.ts';
import type { HostRecord } from '../../src/cluster/model.ts';

describe('QEMU versions', () => {
  it('parses what QEMU and QMP say, and orders versions', () => {
    assert.deepEqual(parseQemuVersion('10.0.2'), { major: 10, minor: 0, micro: 2 });
    assert.deepEqual(parseQemuVersion('7.2'), { major: 7, minor: 2, micro: 0 });
    assert.ok(compareQemuVersions(parseQemuVersion('9.0.0'), parseQemuVersion('10.0.0')) < 0, 'numeric, not lexical');
    assert.ok(compareQemuVersions(parseQemuVersion('7.2.19'), parseQemuVersion('7.2.3')) > 0);
    assert.throws(() => parseQemuVersion('ten'), QemuVersionFormatError);
  });

  it('knows where TCG loses dirty pages: before 9.0, under TCG only', () => {
    assert.equal(tcgDirtyTrackingSound(parseQemuVersion('8.2.9')), false);
    assert.equal(tcgDirtyTrackingSound(parseQemuVersion('9.0.0')), true);
    const defect = lostPagesDefect(parseQemuVersion('7.2.0'), 'tcg');
    assert.match(defect ?? '', /QEMU 7\.2\.0 under TCG loses dirty pages.*03bfc2188f06.*bookworm-backports/);
    assert.equal(lostPagesDefect(parseQemuVersion('7.2.0'), 'kvm'), undefined);
    assert.equal(lostPagesDefect(parseQemuVersion('10.0.2'), 'tcg'), undefined);
  });
});

describe('machine types', () => {
  it('reads the versioned q35 types of `-machine help`, newest first', () => {
    const help = [
      'Supported machines are:',
      'pc-q35-9.2           Standard PC (Q35 + ICH9, 2009)',
      'pc-q35-4.0.1         Standard PC (Q35 + ICH9, 2009) (deprecated)',
      'q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)',
      'pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)',
      'pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)',
      'pc-q35-2.12          Standard PC (Q35 + ICH9, 2009) (deprecated)',
    ].join('\n');
    assert.deepEqual(versionedQ35(help), ['pc-q35-10.0', 'pc-q35-9.2', 'pc-q35-2.12']);
  });

  const host = (name: string, machineTypes?: string[]): HostRecord => ({
    name, url: '', address: '', memoryMiB: 1024, startedAt: '',
    ...(machineTypes ? { qemu: { version: '?', machineTypes } } : {}),
  });

  it('a new VM gets the newest type every host provides (a rolling upgrade half done: the old QEMU decides)', () => {
    const upgraded = host('h1', ['pc-q35-10.0', 'pc-q35-9.2', 'pc-q35-7.2', 'pc-q35-7.1']);
    const old = host('h2', ['pc-q35-7.2', 'pc-q35-7.1']);
    assert.equal(newestCommonMachineType([upgraded, old]), 'pc-q35-7.2');
    assert.equal(newestCommonMachineType([upgraded]), 'pc-q35-10.0');
    assert.equal(newestCommonMachineType([upgraded, host('h3')]), 'pc-q35-10.0', 'a host that does not say is left out');
    assert.equal(newestCommonMachineType([host('h3')]), undefined);
    assert.equal(newestCommonMachineType([upgraded, host('h4', ['pc-q35-2.4'])]), undefined);
  });
});
