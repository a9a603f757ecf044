/**
 * The `nfs` driver for real: NFS-Ganesha in the lab's storage namespace, QEMU
 * opening the images through its own NFS client (libnfs) from each host's
 * namespace, a VM whose diskcheck keeps writing migrated around the 3 hosts.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { NfsServer } from '../../src/lab/nfs-server.ts';
import { run } from '../../src/util/exec.ts';
import { migrateAroundOnSharedStorage, recoverAfterHostDeath, useLab } from '../helpers/lab.ts';

describe('nfs storage (NFS-Ganesha in the lab, QEMU libnfs)', () => {
  const suite = useLab('nfs', ['--storage', 'nfs']);
  const cli = suite.cli;

  it('every host reaches the nfs pool; other machines on the lab network (the guests) do not', async () => {
    const fromClient = await run('ip', ['netns', 'exec', suite.lab.clientNetns, path.join(process.cwd(), 'tools', 'out', 'ferry-nfs'), 'statvfs', '10.80.0.8', path.join(suite.dir, 'san', 'nfs', 'export')]).then(
      () => 'served',
      (err: Error) => err.message,
    );
    assert.match(fromClient, /MNT3ERR_ACCES|Permission denied/, 'the export must refuse addresses that are not hosts');
    const list = await cli('storage', 'list');
    assert.equal(list.code, 0, list.stderr);
    for (const host of list.json.hosts) {
      const nfs = host.pools.find((p: { pool: string }) => p.pool === 'nfs');
      assert.ok(nfs?.reachable, `${host.host}: ${nfs?.error}`);
      assert.ok(nfs.freeBytes > 0);
    }
  });

  it('a VM on nfs migrates around the hosts; only RAM moves, the disk verifies after every hop', async (t) => {
    const created = await cli('vm', 'create', 'n1', '--memory', '192', '--memcheck', '16', '--disk', '64M,storage=nfs', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    assert.ok(existsSync(path.join(suite.dir, 'san', 'nfs', 'export', 'n1-disk0.qcow2')), 'the image lives on the NFS server');
    const ip = created.json.ip as string;
    await migrateAroundOnSharedStorage(suite, 'n1', ip, t);
  });

  it('its host dies: the VM is recovered on another host from the same NFS image, nothing the guest saw written is lost', async (t) => {
    await recoverAfterHostDeath(suite, 'n1', 'h2', t);
  });

  it('volumes are made and removed on the server; a server that is down is reported per host', async () => {
    assert.equal((await cli('volume', 'create', 'nv', '--pool', 'nfs', '--size', '16M')).code, 0);
    assert.ok(existsSync(path.join(suite.dir, 'san', 'nfs', 'export', 'nv.qcow2')));
    assert.equal((await cli('volume', 'delete', 'nv', '--pool', 'nfs')).code, 0);
    assert.equal(existsSync(path.join(suite.dir, 'san', 'nfs', 'export', 'nv.qcow2')), false);

    await NfsServer.stop(path.join(suite.dir, 'san', 'nfs'), suite.lab.sanNetns!);
    const list = await cli('storage', 'list');
    for (const host of list.json.hosts) {
      const nfs = host.pools.find((p: { pool: string }) => p.pool === 'nfs');
      assert.equal(nfs.reachable, false);
      assert.match(nfs.error, new RegExp(`host '${host.host}' cannot reach storage pool 'nfs'`));
    }
    const refused = await cli('volume', 'create', 'nv2', '--pool', 'nfs', '--size', '16M');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /cannot reach storage pool 'nfs'/);
  });
});
