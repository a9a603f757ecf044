/**
 * diskcheck (guest/src/diskcheck.c) with a real guest under TCG: it must see
 * its disk intact while writing, catch a torn block and a lost write planted
 * behind its back, and find the disk intact after live migrations, both with
 * shared storage (only RAM moves) and with local storage (the disk is mirrored
 * to the destination over NBD). Its table of completed writes lives in the
 * guest's RAM, so it moves with the guest and judges the destination's disk.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { migrate } from '../../src/migration/engine.ts';
import { LocalDestination, LocalSource } from '../../src/migration/local.ts';
import { ensureGuestImage, guestBoot } from '../../src/qemu/guest-image.ts';
import { VmInstance } from '../../src/qemu/instance.ts';
import { macFor, makeVmSpec, type VmSpec } from '../../src/qemu/spec.ts';
import { StorageCatalog } from '../../src/storage/registry.ts';
import { volumeOf } from '../../src/storage/types.ts';
import { openLab, type Lab } from '../helpers/guest.ts';

const DISK_MIB = 64;
const BLOCKS = DISK_MIB * 256;

describe('diskcheck: a guest proves its disk intact', () => {
  let lab: Lab;
  const running: VmInstance[] = [];

  before(async () => {
    lab = await openLab('dsk');
  });

  after(async () => {
    for (const vm of running) await vm.destroy().catch(() => undefined);
    await lab?.close();
  });

  /** One "host": a catalog with one pool named `pool` of the given type, in its own directory (local) or the lab's shared one. */
  async function hostStorage(host: string, type: 'shared-dir' | 'local'): Promise<StorageCatalog> {
    const dir = path.join(lab.runDir, type === 'shared-dir' ? 'shared' : `local-${host}`);
    await mkdir(dir, { recursive: true });
    return new StorageCatalog([{ name: 'pool', type, path: dir }], host);
  }

  async function bootWithDisk(name: string, ipIndex: number, storage: StorageCatalog, ratePerSec: number): Promise<{ vm: VmInstance; ip: string }> {
    const image = await ensureGuestImage();
    const uuid = crypto.randomUUID();
    const ip = lab.net.guestIp(ipIndex);
    const spec: VmSpec = makeVmSpec({
      name,
      uuid,
      memoryMiB: 256,
      accel: 'tcg',
      boot: guestBoot(image, { ip: `${ip}/24`, memcheckMiB: 8, diskcheck: { ratePerSec } }),
      nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: lab.net.bridge } }],
      disks: [{ id: 'disk0', pool: 'pool', volume: `${name}-root`, format: 'qcow2', sizeBytes: DISK_MIB * 2 ** 20 }],
    });
    await storage.get('pool').create(volumeOf(spec.disks[0]!));
    const vm = await VmInstance.launch({ spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, disks: storage.attach(spec) });
    running.push(vm);
    await vm.waitUntilReady(60_000);
    return { vm, ip };
  }

  async function assertIntact(ip: string, context: string) {
    const v = await lab.probe.diskcheckVerify(ip);
    assert.equal(v.blocks, BLOCKS);
    assert.deepEqual(
      { ok: v.ok, lost: v.lost, torn: v.torn, foreign: v.foreign, first: v.firstBadBlock },
      { ok: BLOCKS, lost: 0, torn: 0, foreign: 0, first: -1 },
      `${context}: diskcheck found bad blocks`,
    );
  }

  async function migrateWithDisks(vm: VmInstance, from: StorageCatalog, to: StorageCatalog): Promise<VmInstance> {
    const destination = new LocalDestination({ spec: vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, storage: to });
    const record = await migrate({ source: new LocalSource(vm, { storage: from }), destination });
    assert.equal(record.outcome, 'completed');
    running.push(destination.instance);
    return destination.instance;
  }

  /** Waits until the writer has completed `n` more writes than now. */
  async function writesGrow(ip: string, n: number) {
    const start = (await lab.probe.diskcheckStats(ip)).writes;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const stats = await lab.probe.diskcheckStats(ip);
      if (stats.writes >= start + n) return stats;
      assert.ok(Date.now() < deadline, `diskcheck completed only ${stats.writes - start} writes in 30 s (wanted ${n})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  it('writes and verifies, and catches a torn block and a lost write planted behind its back', async () => {
    const { ip } = await bootWithDisk('dsk1', 10, await hostStorage('a', 'shared-dir'), 200);
    const stats = await writesGrow(ip, 100);
    assert.equal(stats.blocks, BLOCKS);
    assert.equal(stats.errors, 0);
    assert.equal(stats.rate, 200);
    await assertIntact(ip, 'while writing');

    await lab.probe.diskcheckRate(ip, 0);
    await lab.probe.diskcheckDamage(ip, 'corrupt', 123);
    let v = await lab.probe.diskcheckVerify(ip);
    assert.deepEqual([v.torn, v.lost, v.foreign, v.firstBadBlock], [1, 0, 0, 123], 'a half-overwritten block must count as torn');
    await lab.probe.diskcheckDamage(ip, 'rewind', 77);
    v = await lab.probe.diskcheckVerify(ip);
    assert.deepEqual([v.torn, v.lost, v.foreign, v.firstBadBlock], [1, 1, 0, 77], 'an older version of a block must count as lost');
    assert.equal(v.ok, BLOCKS - 2);

    // fill rewrites every block with fresh versions: the damage is gone.
    const fill = await lab.probe.diskcheckFill(ip, DISK_MIB);
    assert.equal(fill.mib, DISK_MIB);
    await assertIntact(ip, 'after fill');
    const after = await lab.probe.diskcheckStats(ip);
    assert.equal(after.written, BLOCKS);
    await assert.rejects(lab.probe.diskcheckDamage(ip, 'corrupt', BLOCKS), /must be a number/);
    await lab.probe.diskcheckRate(ip, 200);
  });

  it('finds the disk intact after live migrations on shared storage, writing all along', async () => {
    const storage = await hostStorage('a', 'shared-dir');
    let vm = running.at(-1)!;
    const ip = lab.net.guestIp(10);
    for (let hop = 1; hop <= 2; hop++) {
      const before = (await writesGrow(ip, 20)).writes;
      vm = await migrateWithDisks(vm, storage, storage);
      const after = await writesGrow(ip, 20);
      assert.ok(after.writes > before, 'the writer must carry on after the migration');
      await assertIntact(ip, `after shared-storage hop ${hop}`);
    }
  });

  it('finds the disk intact after live migrations that mirror a local disk to the destination', async () => {
    const hostA = await hostStorage('a', 'local');
    const hostB = await hostStorage('b', 'local');
    let { vm, ip } = await bootWithDisk('dsk2', 11, hostA, 200);
    await lab.probe.diskcheckFill(ip, DISK_MIB / 2); // data for the mirror to copy, besides the writer's
    await writesGrow(ip, 50);
    await assertIntact(ip, 'before migrating');
    for (const [from, to, hop] of [[hostA, hostB, 1], [hostB, hostA, 2]] as const) {
      vm = await migrateWithDisks(vm, from, to);
      await writesGrow(ip, 20);
      await assertIntact(ip, `after mirrored hop ${hop}`);
    }
  });

  it('catches a migration whose destination opens a stale copy of the disk', async () => {
    // Two "shared" pools that are not: B holds a copy of A's image taken before the last writes.
    const hostA = await hostStorage('a', 'shared-dir');
    const stale = path.join(lab.runDir, 'stale');
    await mkdir(stale, { recursive: true });
    const hostB = new StorageCatalog([{ name: 'pool', type: 'shared-dir', path: stale }], 'b');
    const { vm, ip } = await bootWithDisk('dsk3', 12, hostA, 0);
    await lab.probe.diskcheckFill(ip, 4);
    await copyFile(path.join(lab.runDir, 'shared', 'dsk3-root.qcow2'), path.join(stale, 'dsk3-root.qcow2'));
    await lab.probe.diskcheckRate(ip, 200);
    await writesGrow(ip, 100);
    await assertIntact(ip, 'before migrating');
    await migrateWithDisks(vm, hostA, hostB);
    await lab.probe.diskcheckRate(ip, 0);
    const v = await lab.probe.diskcheckVerify(ip);
    assert.ok(v.lost >= 100, `the stale disk lost at least 100 completed writes, but diskcheck says lost=${v.lost}`);
    assert.equal(v.torn, 0);
  });
});
