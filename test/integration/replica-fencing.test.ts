/**
 * The primary of a replicated volume loses its peer and the store at once (3-host lab, 3-member
 * etcd store): h1's routes to the etcd members are blackholed, then h2's replica server is killed
 * with h2's agent frozen. h1 cannot write down that h2's replica is outdated, so its guest must not
 * run on writing what only h1 has: it stays paused (DRBD's fencing), h1 fences itself before its
 * lease expires, and the VM recovered on h2 — with no outdated mark to stop it — has every write
 * the guest reported complete. Without the pause the guest would have written on alone for the
 * seconds until self-fencing, and the recovery would have lost those writes without a word.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { run } from '../../src/util/exec.ts';
import { qemuPidsOf as qemuOf } from '../../src/lab/lab.ts';
import { assertDiskVerifies, useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


describe('replicated volumes: the primary loses its peer and the store at once (3-host lab, etcd store)', () => {
  const suite = useLab('fence', ['--store', 'etcd']);
  const cli = suite.cli;
  const host = (name: string) => suite.lab.hosts.find((h) => h.name === name)!;
  const agentLog = (name: string) => readFile(path.join(suite.dir, 'hosts', name, 'agent.log'), 'utf8');

  async function replication(): Promise<{ state: string; primary?: string; outdated?: { outdated: string } }> {
    const shown = await cli('volume', 'show', 'f1-disk0', '--pool', 'r');
    assert.equal(shown.code, 0, shown.stderr);
    return shown.json.replication;
  }

  /** In sync, and the agent has seen it: no outdated mark left from the first copy. */
  async function waitInSync(timeoutMs: number): Promise<{ state: string; primary?: string }> {
    const deadline = Date.now() + timeoutMs;
    let last = await replication();
    while ((last.state !== 'in-sync' || last.outdated) && Date.now() < deadline) {
      await sleep(250);
      last = await replication();
    }
    assert.equal(last.state, 'in-sync', `replication of f1-disk0: ${JSON.stringify(last)}`);
    assert.equal(last.outdated, undefined, `replication of f1-disk0: ${JSON.stringify(last)}`);
    return last;
  }

  /** The etcd members' addresses, from the cluster's configuration. */
  async function storeAddresses(): Promise<string[]> {
    const node = JSON.parse(await readFile(host('h1').config, 'utf8')) as { clusterDir: string };
    const cluster = JSON.parse(await readFile(path.join(node.clusterDir, 'cluster.json'), 'utf8')) as { store: { endpoints: string[] } };
    return cluster.store.endpoints.map((e) => new URL(e).hostname);
  }

  it('the guest is paused, not left writing alone; h1 fences itself; recovered on h2, no write the guest saw complete is missing', async (t) => {
    for (const h of suite.lab.hosts) await mkdir(path.join(suite.dir, 'hosts', h.name, 'replicas'), { recursive: true });
    assert.equal((await cli('storage', 'add', 'r', '--type', 'replicated', '--path', path.join(suite.dir, 'hosts', '%h', 'replicas'))).code, 0);
    const created = await cli('vm', 'create', 'f1', '--memory', '128', '--memcheck', '8', '--disk', '32M,storage=r,peer=h2', '--diskcheck', '100', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const ip = (await cli('vm', 'show', 'f1')).json.ip as string;
    assert.equal((await waitInSync(60_000)).primary, 'h1');
    await assertDiskVerifies(suite, 'f1', 0, ip);
    let seen = (await suite.probe.diskcheckStats(ip)).seq;

    const members = await storeAddresses();
    assert.equal(members.length, 3);
    const h2Server = Number((await readFile(path.join(suite.dir, 'hosts', 'h2', 'state', 'replica-server', 'pid'), 'utf8')).trim());
    for (const address of members) await run('ip', ['-n', host('h1').netns, 'route', 'add', 'blackhole', `${address}/32`]);
    process.kill(host('h2').pid!, 'SIGSTOP');
    let answered = 0;
    try {
      process.kill(h2Server, 'SIGKILL');
      // What the guest reports complete from now on; it may report nothing at all (paused).
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && !/self-fencing/.test(await agentLog('h1'))) {
        try {
          const stats = await suite.probe.diskcheckStats(ip, 300);
          seen = Math.max(seen, stats.seq);
          answered++;
        } catch {
          /* no answer: paused */
        }
      }
      const log = await agentLog('h1');
      t.diagnostic(`after the cut the guest answered ${answered} stats requests; highest write seq it reported complete: ${seen}`);
      assert.match(log, /'f1' paused: a write missed h2; writing down that its replica of r\/f1-disk0 is outdated/);
      assert.match(log, /self-fencing: the host lease was not renewed/);
      for (const line of log.split('\n').filter((l) => /paused|fencing|replication of/.test(l))) t.diagnostic(line.replace(/^\S+ /, ''));
      // Fenced means stopped, not a log line: h1's QEMU for f1 is gone, and the guest answers no one.
      let left = await qemuOf('f1');
      for (let i = 0; i < 50 && left.length; i++) {
        await sleep(100);
        left = await qemuOf('f1');
      }
      assert.deepEqual(left, [], 'the fenced host still runs the guest\'s QEMU');
      await assert.rejects(suite.probe.gamesrv(ip, 1500), 'the fenced guest must not answer');
      await assert.rejects(suite.probe.diskcheckStats(ip, 1500), 'nor write');
    } finally {
      process.kill(host('h2').pid!, 'SIGCONT');
    }

    // h1's lease runs out; then the VM is recovered on h2 — nothing says h2's replica is outdated.
    let recovered = await cli('vm', 'recover', 'f1', '--to', 'h2');
    for (let i = 0; i < 60 && recovered.code !== 0; i++) {
      assert.match(recovered.stderr, /lease|grace|still/, recovered.stderr);
      await sleep(1000);
      recovered = await cli('vm', 'recover', 'f1', '--to', 'h2');
    }
    assert.equal(recovered.code, 0, recovered.stderr);
    const startup = await suite.probe.diskcheckStartup(ip, 90_000);
    t.diagnostic(`h2's replica: highest seq ${startup.maxseq}, ${startup.valid} valid blocks, ${startup.torn} torn, ${startup.foreign} foreign`);
    assert.deepEqual({ torn: startup.torn, foreign: startup.foreign }, { torn: 0, foreign: 0 });
    // QEMU completes the write that failed to reach h2 before the guest can be paused: at most that one.
    assert.ok(startup.maxseq >= seen - 1, `the guest reported write seq ${seen} complete; h2's replica holds up to ${startup.maxseq}`);
    await assertDiskVerifies(suite, 'f1', 0, ip);

    // h1 rejoins the store: it keeps its guest stopped, serves its replica, and h2 copies the disk over it.
    for (const address of members) await run('ip', ['-n', host('h1').netns, 'route', 'del', 'blackhole', `${address}/32`]);
    const synced = await waitInSync(120_000);
    assert.equal(synced.primary, 'h2');
    await assertDiskVerifies(suite, 'f1', 0, ip);
  });
});
