/**
 * `replicated` volumes end to end in a 3-host lab (real QEMU, real qemu-nbd,
 * mutual TLS): every guest write reaches both replicas before it completes;
 * the VM migrates between its two replica hosts moving only RAM; the peer goes
 * away and comes back and only the blocks written meanwhile are copied; the
 * primary dies mid-write and the peer's replica holds every completed write.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { killAgent, startAgent } from '../../src/lab/lab.ts';
import { run } from '../../src/util/exec.ts';
import { assertDiskVerifies, useLab } from '../helpers/lab.ts';

const BLOCK = 4096;
const GRANULE = 4096;
const VOLUME = 'r1-disk0';

describe('replicated volumes (3-host lab, NBD with TLS between the replicas)', () => {
  const suite = useLab('replicated', []);
  const cli = suite.cli;
  const replicaFile = (host: string) => path.join(suite.dir, 'hosts', host, 'replicas', `${VOLUME}.qcow2`);
  const agentPid = (host: string) => suite.lab.hosts.find((h) => h.name === host)!.pid!;

  async function replication(): Promise<{ state: string; primary?: string; copiedBytes: number; pendingBytes: number; outdated?: { outdated: string } }> {
    const shown = await cli('volume', 'show', VOLUME, '--pool', 'r');
    assert.equal(shown.code, 0, shown.stderr);
    return shown.json.replication;
  }

  async function waitFor(state: string, timeoutMs = 30_000): Promise<{ state: string; primary?: string; copiedBytes: number; pendingBytes: number }> {
    const deadline = Date.now() + timeoutMs;
    let last = await replication();
    while (last.state !== state && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      last = await replication();
    }
    if (last.state !== state) {
      const logs = await Promise.all(['h1', 'h2'].map(async (h) => `--- ${h} agent log (end) ---\n${(await readFile(path.join(suite.dir, 'hosts', h, 'agent.log'), 'utf8')).slice(-1500)}`));
      assert.fail(`replication of ${VOLUME} is ${JSON.stringify(last)}, expected ${state}\n${logs.join('\n')}`);
    }
    return last;
  }

  /** With the writer idle and the replication in sync, both replica files hold the same disk. */
  async function assertReplicasEqual(ip: string): Promise<void> {
    await suite.probe.diskcheckRate(ip, 0);
    try {
      await waitFor('in-sync');
      const compared = await run('qemu-img', ['compare', '-U', replicaFile('h1'), replicaFile('h2')]).catch((err: Error) => err.message);
      assert.match(compared, /Images are identical/, 'the two replicas differ');
    } finally {
      await suite.probe.diskcheckRate(ip, 40);
    }
  }

  it('a replicated pool: the VM writes to both replica hosts; it migrates between them moving only RAM, and the replicas stay equal', async (t) => {
    for (const h of suite.lab.hosts) await mkdir(path.join(suite.dir, 'hosts', h.name, 'replicas'), { recursive: true });
    const added = await cli('storage', 'add', 'r', '--type', 'replicated', '--path', path.join(suite.dir, 'hosts', '%h', 'replicas'));
    assert.equal(added.code, 0, added.stderr);
    const created = await cli('vm', 'create', 'r1', '--memory', '192', '--memcheck', '16', '--disk', '64M,storage=r,peer=h2', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const ip = (await cli('vm', 'show', 'r1')).json.ip as string;
    assert.ok(existsSync(replicaFile('h1')) && existsSync(replicaFile('h2')), 'a replica on each of h1 and h2');
    assert.equal(existsSync(replicaFile('h3')), false);
    assert.equal((await waitFor('in-sync')).primary, 'h1');
    let writes = await assertDiskVerifies(suite, 'r1', 0, ip);
    await assertReplicasEqual(ip);

    for (const to of ['h2', 'h1']) {
      const result = await cli('vm', 'migrate', 'r1', '--to', to);
      assert.equal(result.code, 0, result.stderr + result.stdout);
      assert.deepEqual(result.json.disks, [{ id: 'disk0', mode: 'replica' }]);
      assert.equal(result.json.diskBytes, 0, 'between replica hosts only RAM moves');
      writes = await assertDiskVerifies(suite, 'r1', writes, ip);
      const after = await waitFor('in-sync');
      assert.equal(after.primary, to, 'the new host writes to both replicas');
      await assertReplicasEqual(ip);
      const destinationLog = (await readFile(path.join(suite.dir, 'hosts', to, 'agent.log'), 'utf8')).split('\n');
      const handover = [destinationLog.filter((l) => /handed over/.test(l)).pop(), destinationLog.filter((l) => /cont took/.test(l)).pop()].map((l) => l?.replace(/^.*?h\d: /, '')).join('; ');
      t.diagnostic(`-> ${to}: total ${result.json.totalMs} ms, downtime ${result.json.downtimeMs} ms, blackout ${result.json.blackoutMs} ms; ${handover}`);
    }

    // A migration cancelled mid-stream: the VM stays on h1 and goes on writing to both replicas.
    const slow = cli('vm', 'migrate', 'r1', '--to', 'h2', '--bandwidth', '4');
    let job: { id: string } | undefined;
    for (let i = 0; i < 100 && !job; i++) {
      await new Promise((r) => setTimeout(r, 100));
      job = ((await cli('job', 'list')).json as { id: string; kind: string; vm: string; state: string }[] | undefined)?.find((j) => j.kind === 'migrate' && j.vm === 'r1' && j.state === 'running');
    }
    assert.ok(job, 'the slow migration shows as a running job');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await cli('job', 'cancel', job.id)).code, 0);
    const cancelled = await slow;
    assert.notEqual(cancelled.code, 0, 'a cancelled migration does not report success');
    assert.equal((await cli('vm', 'show', 'r1')).json.owner, 'h1');
    writes = await assertDiskVerifies(suite, 'r1', writes, ip);
    assert.equal((await waitFor('in-sync')).primary, 'h1');
    await assertReplicasEqual(ip);

    // Only the volume's peer gets into a replica server: from h1's namespace, h1's certificate opens
    // h2's export; h3's (a host, but no replica host of any volume here) and the admin's, signed by
    // the same cluster CA, are refused.
    const h1 = suite.lab.hosts.find((h) => h.name === 'h1')!;
    const h2 = suite.lab.hosts.find((h) => h.name === 'h2')!;
    const port = (await readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'port'), 'utf8')).trim();
    const openExport = (certDir: string) =>
      run('ip', [
        'netns', 'exec', h1.netns, 'qemu-img', 'info', '--object', `tls-creds-x509,id=t,dir=${certDir},endpoint=client`,
        `json:${JSON.stringify({ driver: 'nbd', server: { type: 'inet', host: h2.address, port }, export: 'r/r1-disk0', 'tls-creds': 't', 'tls-hostname': h2.address })}`,
      ]).then(() => 'opened', (err: Error) => err.message);
    assert.equal(await openExport(path.join(suite.dir, 'hosts', 'h1', 'cert')), 'opened');
    assert.match(await openExport(path.join(suite.dir, 'admin')), /TLS|connection abort/i);
    assert.match(await openExport(path.join(suite.dir, 'hosts', 'h3', 'cert')), /TLS|connection abort/i);
    const daemonLog = await readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'daemon.log'), 'utf8');
    assert.match(daemonLog, /authz check for O=ferry,OU=admin,CN=admin is denied/);
    assert.match(daemonLog, /authz check for O=ferry,OU=host,CN=h3 is denied/);

    const elsewhere = await cli('vm', 'migrate', 'r1', '--to', 'h3');
    assert.notEqual(elsewhere.code, 0, 'h3 keeps no replica');
    assert.match(elsewhere.stderr + (elsewhere.json?.error ?? ''), /replicated on 'h1' and 'h2', not on 'h3'/);
    assert.equal((await cli('vm', 'show', 'r1')).json.owner, 'h1');
    await assertDiskVerifies(suite, 'r1', writes, ip);
  });

  it('the peer goes away mid-write: the guest writes on (degraded); when it is back only the blocks written meanwhile are copied', async (t) => {
    const ip = (await cli('vm', 'show', 'r1')).json.ip as string;
    await waitFor('in-sync');
    const before = await replication();
    const writesBefore = (await suite.probe.diskcheckStats(ip)).writes;
    // The peer's agent frozen (it would restart its replica server) and the server killed: h2 is away.
    const exportPid = Number((await readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'pid'), 'utf8')).trim());
    process.kill(agentPid('h2'), 'SIGSTOP');
    let writesDuring: number;
    try {
      process.kill(exportPid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 4000));
      const degraded = await replication();
      assert.equal(degraded.state, 'degraded', `with the peer away the volume must say degraded: ${JSON.stringify(degraded)}`);
      assert.equal(degraded.outdated?.outdated, 'h2', "h2's replica is written down as outdated (a recovery there would be refused)");
      const stats = await suite.probe.diskcheckStats(ip);
      assert.equal(stats.errors, 0, 'the guest\'s writes do not fail while the peer is away');
      writesDuring = stats.writes - writesBefore;
      assert.ok(writesDuring > 20, `the guest kept writing while the peer was away (${writesDuring} writes)`);
      // Out of sync, the peer's replica lacks writes: a migration there is refused, and nothing moves.
      const owner = (await cli('vm', 'show', 'r1')).json.owner as string;
      const refused = await cli('vm', 'migrate', 'r1', '--to', 'h2');
      assert.notEqual(refused.code, 0, 'a migration onto an outdated replica must be refused');
      assert.match(refused.stderr + (refused.json?.error ?? ''), /the replication of r\/r1-disk0 is degraded: the replica on the other host lacks recent writes; wait until 'ferry volume show r1-disk0 --pool r' says in-sync/);
      assert.equal((await cli('vm', 'show', 'r1')).json.owner, owner, 'the refused migration moved nothing');
      assert.equal((await suite.probe.diskcheckStats(ip)).errors, 0);
    } finally {
      process.kill(agentPid('h2'), 'SIGCONT');
    }
    const synced = await waitFor('in-sync');
    // The agent clears the mark at its next pass (once a second) after the job is in sync.
    let outdated = (await replication()).outdated;
    for (let i = 0; i < 20 && outdated; i++) {
      await new Promise((r) => setTimeout(r, 250));
      outdated = (await replication()).outdated;
    }
    assert.equal(outdated, undefined, 'in sync again: nothing is outdated');
    const resynced = synced.copiedBytes - before.copiedBytes;
    // Every write is one 4 KiB block, and the resync works in 4 KiB blocks; the job's count also
    // has the writes made after the peer came back (copied as they happen).
    const writesUntilSynced = (await suite.probe.diskcheckStats(ip)).writes - writesBefore;
    t.diagnostic(`peer away about 4 s: ${writesDuring} guest writes; resync copied ${(resynced / 1024).toFixed(0)} KiB (${resynced / GRANULE} blocks of 4 KiB, ${writesUntilSynced} guest writes until in sync) of a 64 MiB disk`);
    assert.ok(resynced >= writesDuring * GRANULE * 0.9, `the blocks written meanwhile were copied: ${resynced} bytes for ${writesDuring} writes while away`);
    // (+2: a write copied by the job a moment before diskcheck counts it)
    assert.ok(resynced <= (writesUntilSynced + 2) * GRANULE, `only changed blocks are copied: ${resynced} bytes for ${writesUntilSynced} writes`);
    assert.ok(resynced < 64 * 2 ** 20 / 8, 'far less than the disk');
    await assertReplicasEqual(ip);
    await assertDiskVerifies(suite, 'r1', 0, ip);
  });

  it('the network to the peer is cut mid-write: the guest\'s writes are held at most a few seconds, then go on (degraded); after the cut the replicas resync and compare equal', async (t) => {
    const ip = (await cli('vm', 'show', 'r1')).json.ip as string;
    await waitFor('in-sync');
    const h2 = suite.lab.hosts.find((h) => h.name === 'h2')!;
    const switchPort = `s-${h2.netns.slice(-9)}`.slice(0, 15);
    const writesBefore = (await suite.probe.diskcheckStats(ip)).writes;
    const cutAt = Date.now();
    await run('ip', ['-n', suite.lab.switchNetns, 'link', 'set', switchPort, 'down']);
    try {
      await new Promise((r) => setTimeout(r, 8000));
      const during = await replication();
      assert.equal(during.state, 'degraded', `with the network to the peer cut the volume must say degraded: ${JSON.stringify(during)}`);
      const stats = await suite.probe.diskcheckStats(ip);
      assert.equal(stats.errors, 0);
      // 40 writes/s for 8 s: the guest wrote on for most of the cut instead of hanging on TCP.
      assert.ok(stats.writes - writesBefore > 120, `the guest's writes were held during the cut (${stats.writes - writesBefore} writes in 8 s)`);
    } finally {
      await run('ip', ['-n', suite.lab.switchNetns, 'link', 'set', switchPort, 'up']);
    }
    const healedAt = Date.now();
    await waitFor('in-sync', 90_000);
    t.diagnostic(`cut 8 s (${Math.round((healedAt - cutAt) / 1000)} s): in sync again ${((Date.now() - healedAt) / 1000).toFixed(1)} s after the network came back`);
    await assertReplicasEqual(ip);
    await assertDiskVerifies(suite, 'r1', 0, ip);
  });

  it('both agents restart: the replication goes on untouched (the job lives in QEMU, the replica server is adopted)', async () => {
    const ip = (await cli('vm', 'show', 'r1')).json.ip as string;
    await waitFor('in-sync');
    const serverPid = () => readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'pid'), 'utf8').then((p) => Number(p.trim()));
    const before = await serverPid();
    const copiedBefore = (await replication()).copiedBytes;
    for (const h of ['h1', 'h2']) await killAgent(suite.lab, h);
    for (const h of ['h1', 'h2']) await startAgent(suite.lab, h);
    assert.equal(await serverPid(), before, "h2's replica server was adopted, not restarted");
    await new Promise((r) => setTimeout(r, 2500));
    const after = await waitFor('in-sync');
    assert.equal(after.primary, 'h1');
    // A new job would have copied the whole allocated disk (tens of MiB); the same job only the guest's new writes.
    assert.ok(after.copiedBytes >= copiedBefore && after.copiedBytes - copiedBefore < 8 * 2 ** 20, `the same job goes on: ${copiedBefore} -> ${after.copiedBytes} bytes copied`);
    await assertReplicasEqual(ip);
    await assertDiskVerifies(suite, 'r1', 0, ip);
  });

  it('the primary host dies mid-write: the peer\'s replica holds every write the guest saw complete; the VM is recovered there, and the returning host resyncs', async (t) => {
    const ip = (await cli('vm', 'show', 'r1')).json.ip as string;
    await waitFor('in-sync');
    await suite.probe.diskcheckRate(ip, 200);
    await new Promise((r) => setTimeout(r, 1500));
    // h1's agent dies first; its QEMU goes on (QEMUs outlive their agent) and writes to both replicas.
    await killAgent(suite.lab, 'h1');
    const early = await cli('vm', 'recover', 'r1', '--to', 'h2');
    assert.notEqual(early.code, 0, 'refused while h1\'s lease is current');
    assert.match(early.stderr, /host 'h1' is alive \(its lease is current\)/);
    for (let i = 0; i < 60 && (await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === 'h1'); i++) await new Promise((r) => setTimeout(r, 500));
    const twoWriters = await cli('vm', 'recover', 'r1', '--to', 'h2');
    assert.notEqual(twoWriters.code, 0, 'refused while the guest still writes from h1');
    assert.match(twoWriters.stderr, /'r1' still writes to r\/r1-disk0 from 'h1': its QEMU runs although its agent is gone/);
    const wrongHost = await cli('vm', 'recover', 'r1', '--to', 'h3');
    assert.notEqual(wrongHost.code, 0);
    assert.match(wrongHost.stderr, /replicated on h1 and h2; recover the VM on 'h2'/);

    // Now the host dies for good: its QEMU (the moment of the crash), then its replica server.
    const lastSeen = await suite.probe.diskcheckStats(ip);
    const instance = JSON.parse(await readFile(path.join(suite.dir, 'hosts', 'h1', 'state', 'instances', 'r1.running.json'), 'utf8')) as { pid: number };
    process.kill(instance.pid, 'SIGKILL');
    const h1Server = Number((await readFile(path.join(suite.dir, 'hosts', 'h1', 'state', 'replica-server', 'pid'), 'utf8').catch(() => '')).trim());
    if (h1Server > 0) process.kill(h1Server, 'SIGKILL');

    // h1's replica has every write QEMU completed (and a write can be on h1 only while in flight);
    // diskcheck writes one block at a time, so at most one block may differ.
    const differing = await differingBlocks(replicaFile('h1'), replicaFile('h2'), path.join(suite.dir, 'compare'));
    assert.ok(differing.length <= 1, `${differing.length} blocks differ between the replicas (first: ${differing.slice(0, 5).join(', ')})`);

    const recovered = await cli('vm', 'recover', 'r1', '--to', 'h2');
    assert.equal(recovered.code, 0, recovered.stderr);
    assert.equal((await cli('vm', 'show', 'r1')).json.owner, 'h2');

    // The guest booted from h2's replica; diskcheck took the disk as it found it.
    const startup = await suite.probe.diskcheckStartup(ip, 90_000);
    t.diagnostic(`before the crash the guest had completed write seq ${lastSeen.seq}; h2's replica: ${startup.valid} valid blocks, highest seq ${startup.maxseq}, ${startup.torn} torn, ${startup.foreign} foreign; ${differing.length} block(s) differed from h1's`);
    assert.deepEqual({ torn: startup.torn, foreign: startup.foreign }, { torn: 0, foreign: 0 });
    assert.ok(startup.maxseq >= lastSeen.seq, `a write the guest saw complete (seq ${lastSeen.seq}) is missing: the replica's newest is ${startup.maxseq}`);
    await suite.probe.diskcheckRate(ip, 40);
    await assertDiskVerifies(suite, 'r1', 0, ip);

    // h1 comes back: it serves its (stale) replica, and h2 copies the disk over it.
    await startAgent(suite.lab, 'h1');
    const synced = await waitFor('in-sync', 90_000);
    assert.equal(synced.primary, 'h2');
    await assertReplicasEqual(ip);

    assert.equal((await cli('vm', 'destroy', 'r1')).code, 0);
    const deleted = await cli('volume', 'delete', VOLUME, '--pool', 'r');
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(existsSync(replicaFile('h1')) || existsSync(replicaFile('h2')), false, 'both replicas are removed');
  });

  it('the primary dies while its peer was away: recovering from the outdated replica is refused, unless the admin accepts the loss', async () => {
    const created = await cli('vm', 'create', 'r2', '--memory', '128', '--memcheck', '8', '--disk', '32M,storage=r,peer=h2', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const ip = (await cli('vm', 'show', 'r2')).json.ip as string;
    const show = async () => (await cli('volume', 'show', 'r2-disk0', '--pool', 'r')).json.replication as { state: string; outdated?: { outdated: string } };
    let state = (await show()).state;
    for (let i = 0; i < 120 && state !== 'in-sync'; i++) {
      await new Promise((r) => setTimeout(r, 250));
      state = (await show()).state;
    }
    assert.equal(state, 'in-sync');
    await assertDiskVerifies(suite, 'r2', 0, ip);
    // h2 goes away (agent frozen, server killed); h1 writes on alone, then h1 dies too.
    const h2Server = Number((await readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'pid'), 'utf8')).trim());
    process.kill(agentPid('h2'), 'SIGSTOP');
    try {
      process.kill(h2Server, 'SIGKILL');
      for (let i = 0; i < 40 && (await show()).outdated?.outdated !== 'h2'; i++) await new Promise((r) => setTimeout(r, 250));
      assert.equal((await show()).outdated?.outdated, 'h2');
      const instance = JSON.parse(await readFile(path.join(suite.dir, 'hosts', 'h1', 'state', 'instances', 'r2.running.json'), 'utf8')) as { pid: number };
      process.kill(instance.pid, 'SIGKILL');
      await killAgent(suite.lab, 'h1');
    } finally {
      process.kill(agentPid('h2'), 'SIGCONT');
    }
    for (let i = 0; i < 60 && (await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === 'h1'); i++) await new Promise((r) => setTimeout(r, 500));
    const refused = await cli('vm', 'recover', 'r2', '--to', 'h2');
    assert.notEqual(refused.code, 0, 'an outdated replica must not be booted silently');
    assert.match(refused.stderr, /the replica of r\/r2-disk0 on h2 is outdated: 'h1' wrote without it since .*--accept-data-loss/);
    assert.equal((await cli('vm', 'show', 'r2')).json.owner, 'h1', 'nothing changed');
    const accepted = await cli('vm', 'recover', 'r2', '--to', 'h2', '--accept-data-loss');
    assert.equal(accepted.code, 0, accepted.stderr);
    await suite.probe.diskcheckStartup(ip, 90_000); // the guest booted on h2 from what h2 has
    await startAgent(suite.lab, 'h1');
    assert.equal((await cli('vm', 'destroy', 'r2')).code, 0);
    assert.equal((await cli('volume', 'delete', 'r2-disk0', '--pool', 'r')).code, 0);
  });
});

/** Indexes of the 4 KiB blocks in which two images differ (read as raw). */
async function differingBlocks(a: string, b: string, scratch: string): Promise<number[]> {
  await mkdir(scratch, { recursive: true });
  const rawA = path.join(scratch, 'a.raw');
  const rawB = path.join(scratch, 'b.raw');
  await run('qemu-img', ['convert', '-U', '-O', 'raw', a, rawA], { timeoutMs: 60_000 });
  await run('qemu-img', ['convert', '-U', '-O', 'raw', b, rawB], { timeoutMs: 60_000 });
  const [fa, fb] = [await open(rawA), await open(rawB)];
  const out: number[] = [];
  try {
    const chunk = 4 * 2 ** 20;
    const bufA = Buffer.alloc(chunk);
    const bufB = Buffer.alloc(chunk);
    for (let offset = 0; ; offset += chunk) {
      const [ra, rb] = await Promise.all([fa.read(bufA, 0, chunk, offset), fb.read(bufB, 0, chunk, offset)]);
      if (ra.bytesRead !== rb.bytesRead) throw new Error(`the replicas differ in size at ${offset}`);
      if (ra.bytesRead === 0) break;
      for (let i = 0; i < ra.bytesRead; i += BLOCK) if (bufA.compare(bufB, i, i + BLOCK, i, i + BLOCK) !== 0) out.push((offset + i) / BLOCK);
    }
  } finally {
    await fa.close();
    await fb.close();
    await rm(scratch, { recursive: true, force: true });
  }
  return out;
}
