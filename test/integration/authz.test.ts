/**
 * Authorization by identity, tried as an attacker holding one certificate of the cluster CA would
 * (3-host lab, real agents): a host's certificate drives no user route and only its own
 * migrations' host-to-host routes; the admin's drives no host-to-host route; a store member's and a
 * certificate without a role drive nothing; an incoming migration is built from the store, not
 * from what the caller sends. Every refusal changes nothing: the VM runs on where it was.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AgentClient } from '../../src/agent/client.ts';
import { fingerprintOf } from '../../src/agent/revocation.ts';
import { createWebSocketStream } from 'ws';
import { rfbHandshake } from '../helpers/rfb.ts';
import { ApiError } from '../../src/agent/errors.ts';
import { issueCertificate, loadIdentity } from '../../src/cluster/pki.ts';
import { killAgent, startAgent } from '../../src/lab/lab.ts';
import { run } from '../../src/util/exec.ts';
import { useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('authorization by identity (3-host lab)', () => {
  const suite = useLab('authz');
  const cli = suite.cli;
  let pki: string;
  let ip: string;
  let boot: string;

  /** A client of `host`'s agent holding the certificate in `certDir`. */
  const as = async (certDir: string, host: string) => new AgentClient({ name: host, url: '', socket: path.join(suite.dir, 'hosts', host, 'agent.sock') }, await loadIdentity(certDir), 10_000);
  const hostCert = (h: string) => path.join(suite.dir, 'hosts', h, 'cert');
  const adminCert = () => path.join(suite.dir, 'admin');
  const forbidden = (message: RegExp) => (err: unknown) => {
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.status, 403, err.message);
    assert.match(err.message, message);
    return true;
  };

  /** What every refusal must leave: g1 on its owner, the same boot, one QEMU. */
  async function unchanged(owner: string) {
    assert.equal((await cli('vm', 'show', 'g1')).json.owner, owner);
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, 'the guest restarted');
    const copies = (await run('pgrep', ['-f', 'qemu-system-x86_64 -name guest=g1,']).catch(() => '')).split('\n').filter(Boolean);
    assert.equal(copies.length, 1, 'exactly one QEMU runs g1');
  }

  before(async () => {
    pki = await mkdtemp(path.join(os.tmpdir(), 'ferry-authz-'));
    const created = await cli('vm', 'create', 'g1', '--memory', '192', '--memcheck', '16', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    ip = created.json.ip;
    boot = (await suite.probe.gamesrv(ip, 60_000)).boot;
  });
  after(() => rm(pki, { recursive: true, force: true }));

  it("a host's certificate drives no user route: h3 cannot stop, destroy, migrate or read another host's VMs", async () => {
    const token = (await cli('vm', 'show', 'g1')).json.token as number;
    const h3 = await as(hostCert('h3'), 'h1');
    await assert.rejects(h3.call('POST', '/v1/vms/g1/stop', { token, force: true }), forbidden(/POST \/v1\/vms\/:name\/stop is for the admin; host 'h3' may not call it/));
    await assert.rejects(h3.call('DELETE', '/v1/vms/g1', { token }), forbidden(/is for the admin; host 'h3'/));
    await assert.rejects(h3.call('POST', '/v1/vms/g1/migrate', { to: 'h3', token }), forbidden(/is for the admin/));
    await assert.rejects(h3.call('GET', '/v1/cluster/vms'), forbidden(/GET \/v1\/cluster\/vms is for the admin/));
    await assert.rejects(h3.call('POST', '/v1/storage', { name: 'evil', type: 'local', path: '/etc' }), forbidden(/is for the admin/));
    await assert.rejects(h3.call('POST', '/v1/vms/g1/recover', {}), forbidden(/is for the admin/));
    await assert.rejects(h3.openDisplay('g1'), forbidden(/GET \/v1\/vms\/:name\/vnc is for the admin; host 'h3' may not call it/));
    await assert.rejects(h3.call('POST', '/v1/networks', { name: 'evil', bridge: 'br0' }), forbidden(/is for the admin/));
    await unchanged('h1');
    const pools = (await cli('storage', 'list')).json.hosts[0].pools.map((p: { pool: string }) => p.pool) as string[];
    assert.ok(pools.includes('local') && !pools.includes('evil'), `pools: ${pools.join(', ')}`);
  });

  it("the admin's certificate opens the VM's VNC display through its owner's agent (the test guest has no graphics card: the display says so in its size)", async () => {
    const ws = await (await as(adminCert(), 'h1')).openDisplay('g1');
    const screen = await rfbHandshake(createWebSocketStream(ws));
    assert.match(screen.name, /g1/);
    ws.terminate();
    await assert.rejects((await as(adminCert(), 'h2')).openDisplay('g1'), (err: unknown) => err instanceof ApiError && err.status === 404 && /not running on this host/.test(err.message));
  });

  it("the admin's certificate drives no host-to-host route", async () => {
    const admin = await as(adminCert(), 'h2');
    const vm = (await cli('vm', 'show', 'g1')).json;
    await assert.rejects(
      admin.call('POST', '/v1/incoming', { migrationId: 'x', source: 'h1', spec: vm.spec, accel: 'tcg', token: vm.token, capabilities: {}, disks: [] }),
      forbidden(/POST \/v1\/incoming is for the cluster's hosts; the admin may not call it/),
    );
    await assert.rejects(admin.send('/v1/sink', Buffer.alloc(16)), forbidden(/POST \/v1\/sink is for the cluster's hosts/));
    await unchanged('h1');
  });

  it("a store member's certificate and one without a role drive nothing", async () => {
    const clusterDir = path.join(suite.dir, 'cluster');
    await issueCertificate(clusterDir, path.join(pki, 'etcd9'), { name: 'etcd9', role: 'store' });
    await assert.rejects((await as(path.join(pki, 'etcd9'), 'h1')).call('GET', '/v1/health'), forbidden(/'etcd9' holds a store member's certificate/));
    // A certificate of the same CA made the old way, naming host h3 but no role.
    const legacy = path.join(pki, 'legacy');
    await run('mkdir', ['-p', legacy]);
    await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', path.join(legacy, 'key.pem'), '-out', path.join(legacy, 'req.csr'), '-subj', '/O=ferry/CN=h3']);
    await run('openssl', ['x509', '-req', '-in', path.join(legacy, 'req.csr'), '-CA', path.join(clusterDir, 'ca-cert.pem'), '-CAkey', path.join(clusterDir, 'ca-key.pem'), '-CAcreateserial', '-days', '1', '-out', path.join(legacy, 'cert.pem')]);
    await run('cp', [path.join(clusterDir, 'ca-cert.pem'), path.join(legacy, 'ca-cert.pem')]);
    await assert.rejects((await as(legacy, 'h1')).call('GET', '/v1/health'), forbidden(/the certificate of 'h3' names no role/));
    await unchanged('h1');
  });

  it('bad or oversized input is refused before it acts, and says what was wrong', async () => {
    const admin = await as(adminCert(), 'h1');
    const token = (await cli('vm', 'show', 'g1')).json.token as number;
    const status = (expected: number, message: RegExp) => (err: unknown) => {
      assert.ok(err instanceof ApiError, String(err));
      assert.equal(err.status, expected, err.message);
      assert.match(err.message, message);
      return true;
    };
    await assert.rejects(admin.call('POST', '/v1/vms/g1/migrate', { to: 'h2', token, params: { progressIntervalMs: 0 } }), status(422, /progressIntervalMs=0: must be a whole number from 50 to 10000/));
    await assert.rejects(admin.call('POST', '/v1/vms/g1/migrate', { to: 'h2', token, params: { romfile: '/etc/shadow' } }), status(422, /unknown migration parameter 'romfile'/));
    await assert.rejects(admin.call('POST', '/v1/vms/g1/migrate', { to: 'h2', token, params: { policy: 'fastest' } }), status(422, /policy="fastest": must be one of minimal-downtime, balanced, must-finish/));
    await assert.rejects(admin.call('POST', '/v1/vms', { name: 'x'.repeat(2 * 1024 * 1024) }), status(413, /larger than 1024 KiB/));
    // A guest address goes into the guest's kernel command line and onto the hosts' network.
    await assert.rejects(admin.call('POST', '/v1/vms', { name: 'g9', memoryMiB: 128, ip: '10.80.0.150 init=/bin/sh' }), status(422, /guest address '10.80.0.150 init=\/bin\/sh' is not an IPv4 address/));
    await assert.rejects(admin.call('POST', '/v1/vms', { name: 'g9', memoryMiB: 128, ip: '10.80.0.11' }), status(422, /guest address 10.80.0.11 is outside the cluster's guest range 10.80.0.100-199/));
    await assert.rejects(admin.call('POST', '/v1/vms', { name: 'g9', memoryMiB: 128, ip }), status(422, new RegExp(`guest address ${ip.replaceAll('.', '\\.')} is taken by another VM`)));
    assert.equal((await cli('vm', 'show', 'g9')).code === 0, false, 'no VM was created');
    const jobs = (await cli('job', 'list')).json as { kind: string }[];
    assert.equal(jobs.filter((j) => j.kind === 'migrate').length, 0, 'no migration job was started');
    await unchanged('h1');
  });

  it('an incoming migration: the source is the caller, it needs a migration the source began, and only that source may touch it', async () => {
    const vm = (await cli('vm', 'show', 'g1')).json;
    const request = (id: string, source: string) => ({ migrationId: id, source, spec: vm.spec, accel: 'tcg', token: vm.token, capabilities: {}, disks: [] });
    // h3 claims to be h1: the certificate decides.
    await assert.rejects((await as(hostCert('h3'), 'h2')).call('POST', '/v1/incoming', request('forged', 'h1')), forbidden(/host 'h3' asked for a migration from 'h1': a host can only migrate its own VMs/));
    // Nor may h3 probe h2's storage with a made-up disk: only the owner asks, about the stored disks.
    const probePath = { ...vm.spec, disks: [{ id: 'disk0', pool: 'local', volume: '../../../etc/shadow', format: 'raw', sizeBytes: 4096 }] };
    await assert.rejects(
      (await as(hostCert('h3'), 'h2')).call('POST', '/v1/incoming/check', { spec: probePath, disks: [] }),
      forbidden(/'g1' is owned by h1; host 'h3' may not ask about its disks/),
    );
    const asOwner = await (await as(hostCert('h1'), 'h2')).call<{ problems: string[] }>('POST', '/v1/incoming/check', { spec: probePath, disks: [] });
    assert.deepEqual(asOwner.problems, [], "the owner's answer is about g1's stored disks (none), not the sent path");
    // h1 owns g1 but began no migration: no paused QEMU is started on its say-so.
    await assert.rejects((await as(hostCert('h1'), 'h2')).call('POST', '/v1/incoming', request('made-up', 'h1')), /no migration made-up of 'g1' from h1 to h2 was begun/);
    await unchanged('h1');

    // A real migration, slowed down so that others can try their hand while it runs.
    const migration = cli('vm', 'migrate', 'g1', '--to', 'h2', '--bandwidth', '8');
    let id: string | undefined;
    for (let i = 0; i < 100 && !id; i++) {
      await sleep(100);
      id = (await (await as(adminCert(), 'h1')).call<{ migration?: { id: string } }>('GET', '/v1/cluster/vms/g1')).migration?.id;
    }
    assert.ok(id, 'the migration never began');
    await sleep(500); // the destination is listening by now
    const h3 = await as(hostCert('h3'), 'h2');
    await assert.rejects(h3.call('POST', `/v1/incoming/${id}/abort`, {}), forbidden(new RegExp(`incoming migration ${id} belongs to a migration from 'h1'; host 'h3' may not act on it`)));
    await assert.rejects(h3.call('POST', `/v1/incoming/${id}/resume`, { token: vm.token }), forbidden(/host 'h3' may not act on it/));
    // The source itself cannot open a second incoming QEMU under the same id.
    await assert.rejects((await as(hostCert('h1'), 'h2')).call('POST', '/v1/incoming', request(id, 'h1')), /incoming migration .* exists already on h2/);
    const result = await migration;
    assert.equal(result.code, 0, `the real migration went on untouched: ${result.stderr}`);
    await unchanged('h2');
  });

  it('a host renewed (a new key and certificate): once its agent runs with the new one, the old one is refused everywhere', async () => {
    const owner = (await cli('vm', 'show', 'g1')).json.owner as string;
    const renewed = owner === 'h1' ? 'h2' : 'h1';
    const other = ['h1', 'h2', 'h3'].find((h) => h !== renewed)!;
    const oldCopy = path.join(pki, `${renewed}-old`);
    await run('cp', ['-a', hostCert(renewed), oldCopy]);
    await killAgent(suite.lab, renewed);
    const address = suite.lab.hosts.find((h) => h.name === renewed)!.address;
    await issueCertificate(path.join(suite.dir, 'cluster'), hostCert(renewed), { name: renewed, role: 'host', addresses: [address] });
    await startAgent(suite.lab, renewed);
    let refusal = '';
    for (let i = 0; i < 50 && !refusal; i++) {
      refusal = await (await as(oldCopy, other)).send('/v1/sink', Buffer.alloc(1024)).then(() => '', (err: Error) => err.message);
      if (!refusal) await sleep(100);
    }
    assert.match(refusal, new RegExp(`the certificate of '${renewed}' was revoked at .* \\(renewed: the host runs with a new certificate\\)`));
    await (await as(hostCert(renewed), other)).send('/v1/sink', Buffer.alloc(1024));
    const end = new Date((await run('openssl', ['x509', '-in', path.join(hostCert(renewed), 'cert.pem'), '-noout', '-enddate'])).split('=')[1]!.trim());
    const days = (end.getTime() - Date.now()) / 86_400_000;
    assert.ok(days > 179 && days <= 180, `a host certificate lasts 180 days, not ${days.toFixed(1)}`);
    await unchanged(owner);
  });

  it('ferry node remove: the host\'s certificate is refused everywhere within seconds and the host leaves; a host that owns a VM cannot be removed', async () => {
    const owner = (await cli('vm', 'show', 'g1')).json.owner as string;
    const busy = await cli('node', 'remove', owner);
    assert.notEqual(busy.code, 0);
    assert.match(busy.stderr, new RegExp(`host '${owner}' still owns 'g1': migrate them away`));
    const other = ['h1', 'h2', 'h3'].find((h) => h !== owner && h !== 'h3')!;
    const sink = async () => (await as(hostCert('h3'), other)).send('/v1/sink', Buffer.alloc(1024));
    await sink(); // a host route h3 may call, until it is removed
    const removed = await cli('node', 'remove', 'h3', '--reason', 'decommissioned');
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.json.fingerprint, /^[0-9a-f]{64}$/);
    let refusal = '';
    for (let i = 0; i < 50 && !refusal; i++) {
      refusal = await sink().then(() => '', (err: Error) => err.message);
      if (!refusal) await sleep(100);
    }
    assert.match(refusal, /the certificate of 'h3' was revoked at .* \(decommissioned\)/);
    let listed = true;
    for (let i = 0; i < 60 && listed; i++) {
      listed = ((await cli('node', 'list')).json.hosts as { name: string }[]).some((h) => h.name === 'h3');
      if (listed) await sleep(500);
    }
    assert.equal(listed, false, 'h3 left the list');
    // h3's agent notices at its next renewal (every third of the lease) and stops taking part: it
    // does not register again.
    const removedLine = /host 'h3' was removed from the cluster .* its certificate is revoked/;
    let log = '';
    for (let i = 0; i < 40 && !removedLine.test(log); i++) {
      await sleep(250);
      log = await readFile(path.join(suite.dir, 'hosts', 'h3', 'agent.log'), 'utf8');
    }
    assert.match(log, removedLine);
    await sleep(4000); // past another renewal period
    assert.equal(((await cli('node', 'list')).json.hosts as { name: string }[]).some((h) => h.name === 'h3'), false, 'h3 did not come back');
    assert.match((await cli('node', 'remove', 'h3')).stderr, /no host 'h3' has joined this cluster \(or it was removed already\)/);
    await unchanged(owner);
  });

  it("ferry cert renew-admin: the CLI switches to a new admin certificate and the old one is refused everywhere; the admin cannot revoke its own or a host's", async () => {
    const oldCopy = path.join(pki, 'old-admin');
    await run('cp', ['-r', adminCert(), oldCopy]);
    const old = await loadIdentity(oldCopy);
    const owner = (await cli('vm', 'show', 'g1')).json.owner as string;
    const admin = await as(adminCert(), owner);
    const own = fingerprintOf(old.cert);
    await assert.rejects(admin.call('POST', '/v1/cluster/certificates/revoke', { fingerprint: own }), /revoking it would lock the admin out/);
    const h1 = fingerprintOf(await readFile(path.join(hostCert('h1'), 'cert.pem'), 'utf8'));
    await assert.rejects(admin.call('POST', '/v1/cluster/certificates/revoke', { fingerprint: h1 }), /that is host 'h1''s certificate/);
    const renewed = await cli('cert', 'renew-admin');
    assert.equal(renewed.code, 0, renewed.stderr);
    assert.equal(renewed.json.revoked, own);
    assert.notEqual(renewed.json.certificate, own);
    // The CLI works with the new one; the old one is refused by every agent within seconds.
    assert.equal((await cli('vm', 'show', 'g1')).code, 0);
    for (const host of ['h1', 'h2']) {
      const stale = new AgentClient({ name: host, url: '', socket: path.join(suite.dir, 'hosts', host, 'agent.sock') }, old, 10_000);
      const deadline = Date.now() + 10_000;
      for (;;) {
        const refused = await stale.call('GET', '/v1/cluster/vms').then(() => undefined, (err: Error) => err);
        if (refused) {
          assert.match(refused.message, /the certificate of 'admin' was revoked at .* \(renewed: ferry cert renew-admin\)/);
          break;
        }
        assert.ok(Date.now() < deadline, `${host} still accepts the old admin certificate`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    await unchanged(owner);
  });
});
