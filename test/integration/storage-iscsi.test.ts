/**
 * The `iscsi` driver for real: tgt in the lab's storage namespace, QEMU's own
 * initiator (libiscsi) on each host, one LUN per volume. iSCSI has no notion
 * of two writers, so the test also checks that no other agent opens the LUN
 * of a VM it does not own.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { AgentClient } from '../../src/agent/client.ts';
import { loadIdentity } from '../../src/cluster/pki.ts';
import { run } from '../../src/util/exec.ts';
import { migrateAroundOnSharedStorage, recoverAfterHostDeath, useLab } from '../helpers/lab.ts';

describe('iscsi storage (tgt in the lab, QEMU libiscsi)', () => {
  const suite = useLab('iscsi', ['--storage', 'iscsi']);
  const cli = suite.cli;
  const agent = async (host: string) =>
    new AgentClient({ name: host, url: '', socket: path.join(suite.dir, 'hosts', host, 'agent.sock') }, await loadIdentity(path.join(suite.dir, 'admin')));
  /** QEMU processes (any host) that have LUN `lun` of the lab's target open. */
  const openers = async (lun: string) =>
    (await run('pgrep', ['-f', `"driver":"iscsi".*"lun":${lun}[,}]`]).catch(() => '')).split('\n').filter(Boolean).length;

  let lun = '';
  it('a VM on a LUN migrates around the hosts; only RAM moves, the disk verifies after every hop, one QEMU has the LUN open', async (t) => {
    const created = await cli('vm', 'create', 'i1', '--memory', '192', '--memcheck', '16', '--disk', '64M,storage=iscsi', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    lun = created.json.spec.disks[0].location;
    assert.match(lun, /^[1-8]$/, 'the volume was given a LUN');
    const ip = created.json.ip as string;
    await migrateAroundOnSharedStorage(suite, 'i1', ip, t, async () => assert.equal(await openers(lun), 1, 'exactly one QEMU may have the LUN open'));
  });

  it('only the hosts may log in to the target, not other machines on the lab network (the guests)', async () => {
    const fromClient = await run('ip', ['netns', 'exec', suite.lab.clientNetns, 'qemu-img', 'info', `iscsi://10.80.0.8:3260/iqn.2026-11.org.ferry:${suite.lab.prefix}/1`]).then(
      () => 'logged in',
      (err: Error) => err.message,
    );
    assert.notEqual(fromClient, 'logged in');
    assert.match(fromClient, /login|authoriz|Failed to connect|not found|iSCSI/i);
  });

  it('no other agent opens the LUN of a VM it does not own', async () => {
    const vm = (await cli('vm', 'show', 'i1')).json;
    assert.equal(vm.owner, 'h1');
    // Start it on h2 with the current token: refused, the VM is h1's.
    await assert.rejects((await agent('h2')).call('POST', '/v1/vms/i1/start', { token: vm.token }), /owned by h1/);
    // An incoming migration to h3 that h1 never began, asked by h2 with its host certificate (stale
    // token, then a VM it does not own): refused before any QEMU starts. (The admin may not ask at all.)
    const asH2 = new AgentClient({ name: 'h3', url: '', socket: path.join(suite.dir, 'hosts', 'h3', 'agent.sock') }, await loadIdentity(path.join(suite.dir, 'hosts', 'h2', 'cert')));
    await assert.rejects(
      asH2.call('POST', '/v1/incoming', { migrationId: 'forged', source: 'h2', spec: vm.spec, accel: 'tcg', token: vm.token - 1, capabilities: {}, disks: [] }),
      /stale fencing token/,
    );
    await assert.rejects(
      asH2.call('POST', '/v1/incoming', { migrationId: 'forged2', source: 'h2', spec: vm.spec, accel: 'tcg', token: vm.token, capabilities: {}, disks: [] }),
      /owned by h1, not by h2/,
    );
    await assert.rejects((await agent('h3')).call('POST', '/v1/incoming', { migrationId: 'forged3', source: 'h1', spec: vm.spec, accel: 'tcg', token: vm.token, capabilities: {}, disks: [] }), /is for the cluster's hosts/);
    assert.equal(await openers(lun), 1, 'still exactly one QEMU with the LUN open');
  });

  it('each volume gets its own LUN; a deleted volume gives its LUN back, zeroed', async () => {
    const a = await cli('volume', 'create', 'ia', '--pool', 'iscsi', '--size', '128M', '--format', 'qcow2');
    assert.equal(a.code, 0, a.stderr);
    assert.notEqual(a.json.location, lun, 'a LUN in use is never handed out again');
    const tooBig = await cli('volume', 'create', 'ib', '--pool', 'iscsi', '--size', '1G');
    assert.notEqual(tooBig.code, 0);
    assert.match(tooBig.stderr, /storage pool 'iscsi' .* needs 1.00 GiB/);
    const backing = path.join(suite.dir, 'san', 'iscsi', `lun${a.json.location}.img`);
    assert.equal((await readFile(backing)).subarray(0, 4).toString('latin1'), 'QFI\xfb', 'the new volume is a qcow2 image on its LUN');
    assert.equal((await cli('volume', 'delete', 'ia', '--pool', 'iscsi')).code, 0);
    assert.ok((await readFile(backing)).subarray(0, 1024 * 1024).every((b) => b === 0), 'a deleted volume leaves its LUN zeroed');
    const again = await cli('volume', 'create', 'ic', '--pool', 'iscsi', '--size', '128M');
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.json.location, a.json.location, 'the freed LUN is used again');
  });

  it('its host dies: its initiator is withdrawn from the target, the VM is recovered on another host from the same LUN, nothing the guest saw written is lost; back, the host may log in again', async (t) => {
    const portal = (await cli('storage', 'list')).json.pools.find((p: { name: string }) => p.name === 'iscsi').portal as string;
    // iscsi-ls logs in and lists the target's LUNs: a withdrawn initiator sees none.
    const reachesPool = async (netns: string) => /Lun:\d+\s+Type:DIRECT_ACCESS/.test(await run('ip', ['netns', 'exec', netns, 'timeout', '15', 'iscsi-ls', '-s', `iscsi://${portal}/`]).catch(() => ''));
    await recoverAfterHostDeath(suite, 'i1', 'h3', t, { pool: 'iscsi', reachesPool });
    assert.equal(await openers(lun), 1, 'exactly one QEMU has the LUN open after the recovery');
  });
});
