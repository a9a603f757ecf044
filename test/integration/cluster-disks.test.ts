/**
 * Disks end to end through the `ferry` command in a 3-host lab (agents under
 * mutual TLS, real QEMU, the lab's `local` and `shared` pools): volumes made
 * with the VM, copied over NBD with TLS between host namespaces, verified by
 * the guest's diskcheck after every hop; the refusals a user can run into.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, rename } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageInfo } from '../../src/storage/qemu-img.ts';
import { run } from '../../src/util/exec.ts';
import { agentLogs, assertDiskVerifies as diskVerifies, recoverAfterHostDeath, useLab } from '../helpers/lab.ts';

describe('disks end to end (3-host lab, sqlite store)', () => {
  const suite = useLab('disks', []);
  const cli = suite.cli;
  const images = (host: string) => path.join(suite.dir, 'hosts', host, 'images');

  async function assertDiskVerifies(vm: string, writesBefore: number): Promise<number> {
    return diskVerifies(suite, vm, writesBefore);
  }

  it('the lab has a shared and a local pool that every host reaches', async () => {
    const list = await cli('storage', 'list');
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(list.json.pools.map((p: { name: string; type: string }) => `${p.name}:${p.type}`).sort(), ['local:local', 'shared:shared-dir']);
    for (const host of list.json.hosts) for (const pool of host.pools) assert.equal(pool.reachable, true, `${host.host} cannot reach ${pool.pool}: ${pool.error}`);
  });

  it('a VM with a local disk migrates around the hosts; the disk is copied with TLS, verifies after every hop, and follows the VM', async (t) => {
    const created = await cli('vm', 'create', 'd1', '--memory', '192', '--memcheck', '16', '--disk', '64M,storage=local', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    assert.ok(existsSync(path.join(images('h1'), 'd1-disk0.qcow2')));
    let writes = await assertDiskVerifies('d1', 0);
    for (const [from, to] of [['h1', 'h2'], ['h2', 'h3'], ['h3', 'h1']] as const) {
      const result = await cli('vm', 'migrate', 'd1', '--to', to);
      if (result.code !== 0) assert.fail(`${result.stderr}${result.stdout}\n${await agentLogs(suite, [from, to])}`);
      assert.equal(result.json.status, 'completed');
      assert.equal(result.json.attempts, 1, `one attempt, none rolled back: ${JSON.stringify(result.json.earlierAttempts)}`);
      assert.deepEqual(result.json.disks, [{ id: 'disk0', mode: 'copy' }]);
      assert.ok(result.json.diskBytes >= 64 * 2 ** 20);
      writes = await assertDiskVerifies('d1', writes);
      assert.ok(existsSync(path.join(images(to), 'd1-disk0.qcow2')), `the volume is not on ${to}`);
      // The stale copy is removed right after the migration completed.
      const staleGone = async () => (await readdir(images(from))).filter((f) => !f.startsWith('.')).length === 0;
      for (let i = 0; i < 50 && !(await staleGone()); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(await staleGone(), `${from} kept a stale copy`);
      const job = (await cli('job', 'show', result.json.job)).json;
      assert.ok(job.log.some((l: string) => /copied to the destination over NBD with TLS/.test(l)), 'the task log must say the disk went over NBD with TLS');
      t.diagnostic(`${from} -> ${to}: total ${result.json.totalMs} ms, downtime ${result.json.downtimeMs} ms, blackout ${result.json.blackoutMs} ms, disk ${(result.json.diskBytes / 2 ** 20).toFixed(0)} MiB`);
    }
    const volumes = (await cli('volume', 'list')).json;
    assert.deepEqual(volumes.map((v: { name: string; vm?: string }) => `${v.name}@${v.vm}`), ['d1-disk0@d1']);
  });

  it('a VM with a shared disk moves only its RAM', async () => {
    const created = await cli('vm', 'create', 's1', '--memory', '192', '--memcheck', '16', '--disk', '32M,storage=shared', '--diskcheck', '40', '--host', 'h2');
    assert.equal(created.code, 0, created.stderr);
    const writes = await assertDiskVerifies('s1', 0);
    const result = await cli('vm', 'migrate', 's1', '--to', 'h3');
    if (result.code !== 0) assert.fail(`${result.stderr}${result.stdout}\n${await agentLogs(suite, ['h2', 'h3'])}`);
    assert.deepEqual(result.json.disks, [{ id: 'disk0', mode: 'shared' }]);
    assert.equal(result.json.diskBytes, 0);
    await assertDiskVerifies('s1', writes);
  });

  it('the shared disk\'s host dies: the VM is recovered on another host from the same image, nothing the guest saw written is lost', async (t) => {
    await recoverAfterHostDeath(suite, 's1', 'h1', t);
  });

  it('refuses what a user can get wrong about storage, with a message, a non-zero exit and nothing changed', async () => {
    const inUse = await cli('volume', 'delete', 'd1-disk0', '--pool', 'local');
    assert.notEqual(inUse.code, 0);
    assert.match(inUse.stderr, /volume 'd1-disk0' is attached to VM 'd1'/);

    assert.equal((await cli('storage', 'add', 'ghost', '--type', 'local', '--path', '/nonexistent/ferry-%h')).code, 0);
    const twin = await cli('storage', 'add', 'twin', '--type', 'local', '--path', path.join(suite.dir, 'hosts', '%h', 'images'));
    assert.notEqual(twin.code, 0);
    assert.match(twin.stderr, /storage pool 'local' already stores its volumes in/);
    const unreachable = await cli('vm', 'create', 'x1', '--memory', '128', '--disk', '16M,storage=ghost', '--host', 'h2');
    assert.notEqual(unreachable.code, 0);
    assert.match(unreachable.stderr, /host 'h2' cannot reach storage pool 'ghost'/);
    assert.equal((await cli('vm', 'show', 'x1')).code === 0, false, 'no VM record may stay behind');
    assert.equal((await cli('volume', 'list')).json.some((v: { name: string }) => v.name === 'x1-disk0'), false, 'no volume record may stay behind');

    const badSize = await cli('vm', 'create', 'x2', '--disk', '10Q,storage=local');
    assert.notEqual(badSize.code, 0);
    assert.match(badSize.stderr, /give a size like 512M/);

    // The destination's pool directory is gone (a failed mount): refused in begin, naming host and pool.
    await rename(images('h3'), `${images('h3')}.away`);
    try {
      const refused = await cli('vm', 'migrate', 'd1', '--to', 'h3');
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr + (refused.json?.error ?? ''), /host 'h3' cannot reach storage pool 'local'/);
      assert.equal((await cli('vm', 'show', 'd1')).json.owner, 'h1');
      // The dry run says so too, and counts the disk it would copy.
      // What it counts is the source image's allocation at that moment (the guest writes on, so it
      // can only grow): bracketed by reads before and after.
      const allocated = async () => (await imageInfo(path.join(images('h1'), 'd1-disk0.qcow2'))).actualSize;
      const before = await allocated();
      const dry = await cli('vm', 'migrate', 'd1', '--to', 'h3', '--dry-run');
      const after = await allocated();
      assert.equal(dry.code, 0, dry.stderr);
      const counted = dry.json.inputs.diskCopyBytes;
      assert.equal(dry.json.basis.diskCopyBytes.basis, 'measured');
      assert.ok(before > 0 && counted >= before && counted <= after, `the local disk is counted in the prediction: ${counted} bytes, the image held ${before}..${after}`);
      assert.match(dry.json.destinationProblems.join('\n'), /host 'h3' cannot reach storage pool 'local'/);
    } finally {
      await rename(`${images('h3')}.away`, images('h3'));
    }
    await assertDiskVerifies('d1', 0);

    // A destination without room: h2's pool directory becomes a 32 MiB filesystem, mounted where
    // h2's agent (and the QEMUs it starts) see it: in its own mount namespace.
    const h2 = suite.lab.hosts.find((h) => h.name === 'h2')!.pid!;
    const inH2 = (...argv: string[]) => run('nsenter', ['--target', String(h2), '--mount', ...argv]);
    await inH2('mount', '-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', images('h2'));
    try {
      const full = await cli('vm', 'migrate', 'd1', '--to', 'h2');
      assert.notEqual(full.code, 0, 'a destination without room must be refused');
      assert.match(full.stderr + (full.json?.error ?? ''), /pool 'local' on host 'h2' has 3\d\.\d MiB free, but the copy of the disks needs \d+\.\d MiB/);
      assert.equal((await cli('vm', 'show', 'd1')).json.owner, 'h1');
      assert.deepEqual((await inH2('ls', images('h2'))).split('\n').filter(Boolean), [], 'nothing was written to the full pool');
    } finally {
      await inH2('umount', images('h2'));
    }
    await assertDiskVerifies('d1', 0);
  });

  it('volumes: create on a host, delete; destroying a VM keeps its volume, detached', async () => {
    const made = await cli('volume', 'create', 'v1', '--pool', 'local', '--size', '16M', '--host', 'h2');
    assert.equal(made.code, 0, made.stderr);
    assert.ok(existsSync(path.join(images('h2'), 'v1.qcow2')));
    const twice = await cli('volume', 'create', 'v1', '--pool', 'local', '--size', '16M', '--host', 'h2');
    assert.notEqual(twice.code, 0);
    assert.match(twice.stderr, /already exists/);
    assert.equal((await cli('volume', 'delete', 'v1', '--pool', 'local')).code, 0);
    assert.equal(existsSync(path.join(images('h2'), 'v1.qcow2')), false);

    assert.equal((await cli('vm', 'destroy', 's1')).code, 0);
    const kept = (await cli('volume', 'list')).json.find((v: { name: string }) => v.name === 's1-disk0');
    assert.ok(kept && kept.vm === undefined, 's1-disk0 must stay, detached');
    assert.equal((await cli('volume', 'delete', 's1-disk0', '--pool', 'shared')).code, 0);
  });
});
