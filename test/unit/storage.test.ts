/** Storage drivers on real directories and real qemu-img images; the refusals a user meets, with their messages. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { diskSerial } from '../../src/qemu/argv.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';
import { checkIncomingStorage } from '../../src/migration/storage-check.ts';
import { VolumeExistsError } from '../../src/storage/errors.ts';
import { LocalDirDriver, SharedLocalPoolError } from '../../src/storage/local.ts';
import { StorageCatalog } from '../../src/storage/registry.ts';
import { imageInfo } from '../../src/storage/qemu-img.ts';
import { NotAReplicaHostError, peerOf } from '../../src/storage/replicated.ts';
import { volumeOf } from '../../src/storage/types.ts';

const MiB = 2 ** 20;

describe('storage drivers', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-storage-'));
    for (const d of ['h1', 'h2', 'shared']) await mkdir(path.join(dir, d));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  const catalog = (host: string) =>
    new StorageCatalog(
      [
        { name: 'local', type: 'local', path: path.join(dir, '%h') },
        { name: 'shared', type: 'shared-dir', path: path.join(dir, 'shared') },
      ],
      host,
    );
  const vol = (name: string, pool = 'local') => ({ pool, name, format: 'qcow2' as const, sizeBytes: 64 * MiB });

  it('creates a qcow2 volume of the asked size, refuses a second one of the same name, deletes it', async () => {
    const local = catalog('h1').get('local');
    await local.create(vol('a'));
    const info = await imageInfo(path.join(dir, 'h1', 'a.qcow2'));
    assert.equal(info.format, 'qcow2');
    assert.equal(info.virtualSize, 64 * MiB);
    await assert.rejects(local.create(vol('a')), VolumeExistsError);
    assert.equal((await imageInfo(path.join(dir, 'h1', 'a.qcow2'))).virtualSize, 64 * MiB, 'the refused create must not have touched the image');
    await local.delete(vol('a'));
    assert.equal(existsSync(path.join(dir, 'h1', 'a.qcow2')), false);
  });

  it("expands '%h' per host, and the blockdev names the host's own file", () => {
    const blockdev = catalog('h2').get('local').blockdev(vol('b')) as { driver: string; file: { filename: string } };
    assert.equal(blockdev.driver, 'qcow2');
    assert.equal(blockdev.file.filename, path.join(dir, 'h2', 'b.qcow2'));
  });

  it('an unreachable pool is refused naming the host and the pool', async () => {
    const missing = new StorageCatalog([{ name: 'nfs1', type: 'shared-dir', path: path.join(dir, 'not-mounted') }], 'h7');
    await assert.rejects(missing.get('nfs1').status(), /host 'h7' cannot reach storage pool 'nfs1': .*not-mounted does not exist/);
    await assert.rejects(missing.get('nfs1').create(vol('c', 'nfs1')), /cannot reach/);
    assert.throws(() => missing.get('other'), /storage pool 'other' is not configured \(known: nfs1\)/);
  });

  it('a local pool whose directory another host also uses is caught before it can cost data', async () => {
    await writeFile(path.join(dir, 'h2', '.ferry-local-pool-host'), 'h2\n');
    const wrong = new LocalDirDriver({ name: 'local', type: 'local', path: path.join(dir, 'h2') }, 'h3');
    await assert.rejects(wrong.status(), SharedLocalPoolError);
    await assert.rejects(wrong.delete(vol('anything')), /also belongs to host 'h2'.*put '%h' in its path/);
  });

  it('the destination check reports each problem: pool unreachable, leftover file, no room (sizes in the message)', async () => {
    const spec = makeVmSpec({
      name: 'vm1',
      boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' },
      disks: [
        { id: 'disk0', pool: 'local', volume: 'vm1-disk0', format: 'qcow2', sizeBytes: 64 * MiB },
        { id: 'disk1', pool: 'shared', volume: 'vm1-disk1', format: 'qcow2', sizeBytes: 64 * MiB },
      ],
    });
    // The shared volume is missing, and the local copy would need far more than any disk here has.
    const huge = [{ id: 'disk0', allocatedBytes: 2 ** 60 }];
    const problems = await checkIncomingStorage(spec, catalog('h1'), huge);
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.match(problems[0]!, /pool 'local' on host 'h1' has .* free, but the copy of the disks needs .*GiB/);
    assert.match(problems[1]!, /volume 'vm1-disk1' is not visible in pool 'shared' on host 'h1'/);
    // A leftover file of the volume on the destination is named, not overwritten.
    await catalog('h1').get('local').create(vol('vm1-disk0'));
    const leftover = await checkIncomingStorage(spec, catalog('h1'), [{ id: 'disk0', allocatedBytes: MiB }]);
    assert.match(leftover[0]!, /host 'h1' already has a file for volume 'vm1-disk0'/);
    assert.deepEqual(await checkIncomingStorage(spec, undefined, []), [`the destination has no storage configured for the disks of 'vm1'`]);
  });

  it('replicated: only the two replica hosts can take the VM (nothing to copy); the others are refused naming both', async () => {
    const pools = [{ name: 'r', type: 'replicated' as const, path: path.join(dir, '%h') }];
    const disk = { id: 'disk0', pool: 'r', volume: 'vm2-disk0', format: 'qcow2' as const, sizeBytes: 64 * MiB, replicas: ['h1', 'h2'] };
    const spec = makeVmSpec({ name: 'vm2', boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' }, disks: [disk] });
    for (const host of ['h1', 'h2']) await new StorageCatalog(pools, host).get('r').create(volumeOf(disk));
    assert.deepEqual(await checkIncomingStorage(spec, new StorageCatalog(pools, 'h2'), [{ id: 'disk0', allocatedBytes: 2 ** 60 }]), []);
    assert.equal(await new StorageCatalog(pools, 'h2').get('r').prepareIncoming(volumeOf(disk), 0), 'replica');
    await mkdir(path.join(dir, 'h3'), { recursive: true });
    const elsewhere = await checkIncomingStorage(spec, new StorageCatalog(pools, 'h3'), []);
    assert.match(elsewhere[0]!, /volume 'vm2-disk0' of pool 'r' is replicated on 'h1' and 'h2', not on 'h3'/);
    await assert.rejects(new StorageCatalog(pools, 'h3').get('r').prepareIncoming(volumeOf(disk), 0), NotAReplicaHostError);
    assert.equal(peerOf(volumeOf(disk), 'h1'), 'h2');
    assert.throws(() => peerOf(volumeOf(disk), 'h3'), /host 'h3' keeps no replica of volume 'vm2-disk0'/);
    assert.throws(() => peerOf({ name: 'x' }, 'h1'), /has no replica hosts recorded/);
  });

  it('disk serials stay unique within 20 characters', () => {
    assert.equal(diskSerial('web1-disk0'), 'web1-disk0');
    const a = diskSerial('a-very-long-vm-name-disk0');
    const b = diskSerial('a-very-long-vm-name-disk1');
    assert.ok(a.length <= 20 && b.length <= 20);
    assert.notEqual(a, b);
  });
});
