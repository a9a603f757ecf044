/**
 * The `rbd` driver for real: a Ceph cluster (1 monitor, 3 memstore OSDs,
 * cephx) in the lab's storage namespace, QEMU opening RBD images through
 * librbd on each host, a VM whose diskcheck keeps writing migrated around.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readLab, type LabRecord } from '../../src/lab/lab.ts';
import { Probe } from '../../src/lab/probe.ts';
import { run } from '../../src/util/exec.ts';
import { ferry } from '../helpers/cli.ts';

describe('rbd storage (Ceph in the lab, QEMU librbd)', () => {
  let dir: string;
  let env: Record<string, string>;
  let lab: LabRecord;
  let probe: Probe;
  const cli = (...args: string[]) => ferry(env, ...args, '--json');
  const rbdLs = async () =>
    JSON.parse(await run('ip', ['netns', 'exec', lab.sanNetns!, 'rbd', '-c', path.join(dir, 'san', 'ceph', 'ceph.conf'), 'ls', 'rbd', '--format', 'json'])) as string[];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-lab-rbd-'));
    env = { FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fr${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '768' };
    const up = await cli('lab', 'up', '--hosts', '3', '--storage', 'rbd');
    assert.equal(up.code, 0, up.stderr);
    lab = (await readLab(dir))!;
    probe = await Probe.start(lab.clientNetns);
  });

  after(async () => {
    await probe?.close();
    const down = await ferry(env, 'lab', 'down');
    assert.equal(down.code, 0, down.stderr);
    await rm(dir, { recursive: true, force: true });
  });

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
    let writes = 0;
    for (const to of ['h2', 'h3', 'h1']) {
      const result = await cli('vm', 'migrate', 'r1', '--to', to);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(result.json.disks, [{ id: 'disk0', mode: 'shared' }]);
      const stats = await probe.diskcheckStats(ip);
      assert.equal(stats.errors, 0);
      assert.ok(stats.writes > writes);
      writes = stats.writes;
      const verdict = await probe.diskcheckVerify(ip);
      assert.deepEqual({ lost: verdict.lost, torn: verdict.torn, foreign: verdict.foreign }, { lost: 0, torn: 0, foreign: 0 });
      t.diagnostic(`-> ${to}: total ${result.json.totalMs} ms, downtime ${result.json.downtimeMs} ms, blackout ${result.json.blackoutMs} ms`);
    }
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
