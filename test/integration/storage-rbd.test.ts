/**
 * The `rbd` driver for real: a Ceph cluster (1 monitor, 3 memstore OSDs,
 * cephx) in the lab's storage namespace, QEMU opening RBD images through
 * librbd on each host, a VM whose diskcheck keeps writing migrated around.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { run } from '../../src/util/exec.ts';
import { migrateAroundOnSharedStorage, recoverAfterHostDeath, useLab } from '../helpers/lab.ts';

describe('rbd storage (Ceph in the lab, QEMU librbd)', () => {
  const suite = useLab('rbd', ['--storage', 'rbd']);
  const cli = suite.cli;
  const rbdLs = async () =>
    JSON.parse(await run('ip', ['netns', 'exec', suite.lab.sanNetns!, 'rbd', '-c', path.join(suite.dir, 'san', 'ceph', 'ceph.conf'), 'ls', 'rbd', '--format', 'json'])) as string[];

  it('every host reaches the rbd pool (cephx)', async () => {
    const list = await cli('storage', 'list');
    assert.equal(list.code, 0, list.stderr);
    for (const host of list.json.hosts) {
      const rbd = host.pools.find((p: { pool: string }) => p.pool === 'rbd');
      assert.ok(rbd?.reachable, `${host.host}: ${rbd?.error}`);
    }
  });

  it('a VM on an RBD image migrates around the hosts; only RAM moves, the disk verifies after every hop', async (t) => {
    const created = await cli('vm', 'create', 'r1', '--memory', '192', '--memcheck', '16', '--disk', '64M,storage=rbd', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.json.spec.disks[0].format, 'raw');
    assert.deepEqual(await rbdLs(), ['r1-disk0']);
    const ip = created.json.ip as string;
    await migrateAroundOnSharedStorage(suite, 'r1', ip, t);
  });

  it('its host dies: its RBD clients are blocklisted, the VM is recovered on another host from the same image, nothing the guest saw written is lost; back, the host lifts the blocklist', async (t) => {
    const conf = path.join(suite.dir, 'san', 'ceph', 'ceph.conf');
    const reachesPool = async (netns: string) =>
      run('ip', ['netns', 'exec', netns, 'timeout', '20', 'rbd', '-c', conf, 'ls', 'rbd']).then(
        () => true,
        () => false,
      );
    await recoverAfterHostDeath(suite, 'r1', 'h2', t, { pool: 'rbd', reachesPool });
    const blocklist = await run('ip', ['netns', 'exec', suite.lab.sanNetns!, 'ceph', '-c', conf, 'osd', 'blocklist', 'ls']);
    assert.doesNotMatch(blocklist, /10\.80\.0\.\d+:0\/0/, 'no host address is left on the blocklist');
  });

  it('volumes are RBD images: made, refused as qcow2, removed', async () => {
    assert.equal((await cli('volume', 'create', 'rv', '--pool', 'rbd', '--size', '32M')).code, 0);
    assert.ok((await rbdLs()).includes('rv'));
    const qcow2 = await cli('volume', 'create', 'rq', '--pool', 'rbd', '--size', '32M', '--format', 'qcow2');
    assert.notEqual(qcow2.code, 0);
    assert.match(qcow2.stderr, /RBD volumes are raw images/);
    assert.equal((await cli('volume', 'list')).json.some((v: { name: string }) => v.name === 'rq'), false, 'a refused volume leaves no record');
    assert.equal((await cli('volume', 'delete', 'rv', '--pool', 'rbd')).code, 0);
    assert.equal((await rbdLs()).includes('rv'), false);
  });
});
