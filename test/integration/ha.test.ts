/**
 * High availability in a 3-host lab (SQLite, then etcd store): a VM whose QEMU dies on a live host is
 * started again there. A VM on shared storage and one on a replicated volume under HA, and their host
 * dies — every process of it SIGKILLed, the agent and the guest's QEMU. Nobody types anything: the
 * HA manager waits for the host's lease to expire and the fencing margin, and starts the VM on
 * another host. Checked as a user would: the guest answers again (a new boot), from exactly one QEMU
 * on the machine, the store says where, the disk holds every write the guest saw complete and nothing
 * torn or foreign; the dead host comes back without a second copy. Its agent frozen instead (its
 * QEMU keeps running): the watchdog outside the host kills the guest before the lease expires, so
 * the copy started elsewhere is the only one. Then the manager's own host dies with the VM on it:
 * another agent becomes the manager and brings the VM back all the same.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { killAgent, qemuPidsOf as qemuOf, startAgent, switchPortName } from '../../src/lab/lab.ts';
import { run } from '../../src/util/exec.ts';
import { agentLogs, assertDiskVerifies, useLab, type SuiteLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


/** Kills every process of `host`: its agent, its guests' QEMUs, its replica server. When it happened (Date.now()). */
async function killHost(suite: SuiteLab, host: string): Promise<number> {
  const state = path.join(suite.dir, 'hosts', host, 'state');
  const guests = await Promise.all(
    (await readdir(path.join(state, 'instances'))).filter((f) => f.endsWith('.running.json')).map(async (f) => (JSON.parse(await readFile(path.join(state, 'instances', f), 'utf8')) as { pid: number }).pid),
  );
  const replicaServer = Number((await readFile(path.join(state, 'replica-server', 'pid'), 'utf8').catch(() => '')).trim());
  await killAgent(suite.lab, host);
  for (const pid of [...guests, ...(replicaServer > 0 ? [replicaServer] : [])]) process.kill(pid, 'SIGKILL');
  return Date.now();
}

/** Polls the guest until it answers with a boot id other than `oldBoot`; the time of that first reply. */
async function firstReplyOfNewBoot(suite: SuiteLab, ip: string, oldBoot: string, timeoutMs: number): Promise<{ at: number; boot: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const reply = await suite.probe.gamesrv(ip, 250);
      if (reply.boot !== oldBoot) return { at: Date.now(), boot: reply.boot };
    } catch {
      /* not answering yet */
    }
    if (Date.now() > deadline) throw new Error(`the guest at ${ip} did not answer from a new boot within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/**
 * Waits for the guest's first reply from a new boot, counting every 100 ms meanwhile the QEMUs that
 * run it on the machine (two at once is a double run); `undo` ends the fault whatever happens.
 */
async function backCountingCopies(suite: SuiteLab, vm: string, ip: string, oldBoot: string, undo: () => Promise<void>): Promise<{ back: { at: number; boot: string }; copies: number[] }> {
  const copies: number[] = [];
  let recovered = false;
  try {
    const sampling = (async () => {
      while (!recovered) {
        copies.push((await qemuOf(vm)).length);
        await sleep(100);
      }
    })();
    const back = await firstReplyOfNewBoot(suite, ip, oldBoot, 60_000).finally(() => (recovered = true));
    await sampling;
    return { back, copies };
  } finally {
    await undo();
  }
}

for (const store of ['sqlite', 'etcd'] as const)
describe(`high availability: a dead host's VMs come back on other hosts by themselves (3-host lab, ${store} store)`, () => {
  const suite = useLab(`ha${store[0]}`, ['--store', store]);
  const cli = suite.cli;
  let ip: string;
  let replicatedIp: string;

  it('ha add refuses what it cannot keep, and shows the manager and the timing chain', async () => {
    const created = await cli('vm', 'create', 'a1', '--memory', '128', '--disk', '32M,storage=shared', '--diskcheck', '40', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    ip = (await cli('vm', 'show', 'a1')).json.ip as string;
    const ghost = await cli('ha', 'add', 'ghost');
    assert.notEqual(ghost.code, 0);
    assert.match(ghost.stderr, /no VM named 'ghost'/);
    const bad = await cli('ha', 'add', 'a1', '--state', 'sometimes');
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--state sometimes: choose started, stopped, disabled, ignored/);
    assert.equal((await cli('ha', 'list')).json.resources.length, 0, 'a refused add records nothing');
    const added = await cli('ha', 'add', 'a1');
    assert.equal(added.code, 0, added.stderr);
    assert.equal((await cli('ha', 'add', 'a1')).code === 0, false, 'added twice: refused');
    let status = (await cli('ha', 'status')).json;
    for (let i = 0; i < 20 && !status.statuses.some((s: { vm: string; actual: string }) => s.vm === 'a1' && s.actual === 'running'); i++) {
      await sleep(500);
      status = (await cli('ha', 'status')).json;
    }
    assert.match(status.manager.host, /^h[123]$/);
    assert.match(status.timing, /renew every .* < self-fence at .* < watchdog at .* < lease TTL 10 s < recovery after/);
    assert.equal(status.statuses.find((s: { vm: string }) => s.vm === 'a1')?.actual, 'running');

    // A second HA VM, on a replicated volume kept on h1 and h2: only h2 can take it over.
    for (const h of suite.lab.hosts) await mkdir(path.join(suite.dir, 'hosts', h.name, 'replicas'), { recursive: true });
    assert.equal((await cli('storage', 'add', 'r', '--type', 'replicated', '--path', path.join(suite.dir, 'hosts', '%h', 'replicas'))).code, 0);
    const replicated = await cli('vm', 'create', 'r1', '--memory', '128', '--disk', '32M,storage=r,peer=h2', '--diskcheck', '40', '--host', 'h1');
    assert.equal(replicated.code, 0, replicated.stderr);
    replicatedIp = (await cli('vm', 'show', 'r1')).json.ip as string;
    // In sync, and no outdated mark left from the first copy (h2's replica would be refused as the source of a recovery).
    const replication = async () => (await cli('volume', 'show', 'r1-disk0', '--pool', 'r')).json.replication as { state: string; outdated?: unknown };
    // Three readings in a row, a second apart: the first copy can say in-sync before its job has started.
    for (let i = 0, steady = 0; i < 120 && steady < 3; i++) {
      const r = await replication();
      steady = r?.state === 'in-sync' && !r.outdated ? steady + 1 : 0;
      await sleep(1000);
    }
    assert.deepEqual(await replication().then((r) => ({ state: r.state, outdated: r.outdated })), { state: 'in-sync', outdated: undefined });
    assert.equal((await cli('ha', 'add', 'r1')).code, 0);

    // A placement rule: a1 prefers h3 when its host dies. A rule about a VM that does not exist is refused.
    const ghostRule = await cli('ha', 'rule', 'add', 'g', '--vms', 'ghost', '--nodes', 'h3');
    assert.notEqual(ghostRule.code, 0);
    assert.match(ghostRule.stderr, /no VM named 'ghost'/);
    const rule = await cli('ha', 'rule', 'add', 'a1-on-h3', '--vms', 'a1', '--nodes', 'h3:2');
    assert.equal(rule.code, 0, rule.stderr);
    assert.deepEqual((await cli('ha', 'rule', 'list')).json.rules.map((r: { name: string }) => r.name), ['a1-on-h3']);

    // By hand, the admin would fight the manager: refused, with what to do instead, and nothing changes.
    const stop = await cli('vm', 'stop', 'a1');
    assert.notEqual(stop.code, 0);
    assert.match(stop.stderr, /under HA, asked to be started.*ferry ha set a1 --state stopped/);
    const destroy = await cli('vm', 'destroy', 'a1');
    assert.notEqual(destroy.code, 0);
    assert.match(destroy.stderr, /under HA.*ferry ha remove a1/);
    assert.equal((await qemuOf('a1')).length, 1);
    await suite.probe.gamesrv(ip);
  });

  it('its QEMU dies on a live host: the manager starts it again there', async (t) => {
    const before = await suite.probe.gamesrv(ip);
    const [pid] = await qemuOf('a1');
    process.kill(Number(pid), 'SIGKILL');
    const killed = Date.now();
    const back = await firstReplyOfNewBoot(suite, ip, before.boot, 60_000);
    t.diagnostic(`a1's QEMU killed on h1: the guest answered again ${back.at - killed} ms later`);
    assert.equal((await cli('vm', 'show', 'a1')).json.owner, 'h1');
    assert.equal((await qemuOf('a1')).length, 1);
    const status = (await cli('ha', 'status')).json.statuses.find((s: { vm: string }) => s.vm === 'a1');
    assert.match(status.lastAction.what, /start a1 on its host h1 \(HA requests it started\) — done/);
    const jobs = (await cli('job', 'list')).json as Array<{ kind: string; vm: string; state: string; log: string[] }>;
    assert.ok(jobs.some((j) => j.kind === 'start' && j.vm === 'a1' && j.state === 'succeeded' && /the HA manager starts a1 on h1/.test(j.log[0] ?? '')), 'the start is in the job log');
  });

  it('its host killed (agent, QEMUs, replica server): both guests answer from other hosts, once, with every completed write', async (t) => {
    const before = await suite.probe.gamesrv(ip);
    const beforeReplicated = await suite.probe.gamesrv(replicatedIp);
    const lastSeen = await suite.probe.diskcheckStats(ip);
    const lastSeenReplicated = await suite.probe.diskcheckStats(replicatedIp);
    const died = await killHost(suite, 'h1');
    let back: { at: number; boot: string };
    let backReplicated: { at: number; boot: string };
    try {
      [back, backReplicated] = await Promise.all([firstReplyOfNewBoot(suite, ip, before.boot, 60_000), firstReplyOfNewBoot(suite, replicatedIp, beforeReplicated.boot, 60_000)]);
    } catch (err) {
      (err as Error).message += `\n${await agentLogs(suite, ['h2', 'h3'])}`;
      throw err;
    }
    const shown = (await cli('vm', 'show', 'a1')).json;
    t.diagnostic(`h1 killed: a1 answered from ${shown.owner} ${back.at - died} ms later, r1 from h2 ${backReplicated.at - died} ms later (lease TTL 10 s, includes the guests' boots)`);
    assert.equal(shown.owner, 'h3', 'a1 goes where its rule prefers');
    assert.equal((await cli('vm', 'show', 'r1')).json.owner, 'h2', 'the replicated VM goes to the other replica\'s host');
    assert.ok(back.at - died < 45_000, `back after ${back.at - died} ms`);
    for (const [vm, address, seen] of [['a1', ip, lastSeen], ['r1', replicatedIp, lastSeenReplicated]] as const) {
      assert.equal((await qemuOf(vm)).length, 1, `one QEMU runs ${vm}`);
      const startup = await suite.probe.diskcheckStartup(address, 60_000);
      assert.deepEqual({ torn: startup.torn, foreign: startup.foreign }, { torn: 0, foreign: 0 }, vm);
      assert.ok(startup.maxseq >= seen.seq, `${vm}: a write the guest saw complete (seq ${seen.seq}) is missing: the disk's newest is ${startup.maxseq}`);
      await assertDiskVerifies(suite, vm, 0, address);
    }
    const status = (await cli('ha', 'status')).json.statuses.find((s: { vm: string }) => s.vm === 'a1');
    assert.equal(status.actual, 'running');
    assert.match(status.lastAction.what, new RegExp(`start a1 on ${shown.owner}: its host 'h1' is gone — done`));
    const jobs = (await cli('job', 'list')).json as Array<{ kind: string; vm: string; state: string; log: string[] }>;
    assert.ok(jobs.some((j) => j.kind === 'recover' && j.vm === 'a1' && j.state === 'succeeded' && j.log.some((l) => /the HA manager recovers a1/.test(l))), 'the recovery is in the job log');

    await startAgent(suite.lab, 'h1');
    for (let i = 0; i < 40 && !(await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === 'h1'); i++) await sleep(500);
    await sleep(2000);
    assert.equal((await qemuOf('a1')).length, 1, 'h1 came back without a second copy');
    assert.equal((await qemuOf('r1')).length, 1, 'nor of r1');
    // The tests below are about a1 alone.
    assert.equal((await cli('ha', 'remove', 'r1')).code, 0);
    assert.equal((await cli('vm', 'stop', 'r1', '--force')).code, 0);
    assert.equal((await suite.probe.gamesrv(ip)).boot, back.boot, 'and the guest was not restarted again');
  });

  for (const frozenPart of ['agent', 'whole host'] as const)
  it(`its ${frozenPart} frozen (SIGSTOP${frozenPart === 'whole host' ? ': agent and QEMU, thawed after the VM runs elsewhere' : ''}): the watchdog outside it kills the guest before the VM starts elsewhere; never two copies`, async (t) => {
    const owner = (await cli('vm', 'show', 'a1')).json.owner as string;
    const host = suite.lab.hosts.find((h) => h.name === owner)!;
    const before = await suite.probe.gamesrv(ip);
    const [original] = await qemuOf('a1');
    process.kill(host.pid!, 'SIGSTOP');
    if (frozenPart === 'whole host') process.kill(Number(original), 'SIGSTOP');
    const frozen = Date.now();
    // Never two QEMUs for a1 on the machine, sampled all along the recovery.
    const { back, copies: copiesWhileFrozen } = await backCountingCopies(suite, 'a1', ip, before.boot, async () => {
      process.kill(host.pid!, 'SIGCONT');
      if (frozenPart === 'whole host') {
        try {
          process.kill(Number(original), 'SIGCONT');
        } catch {
          /* the watchdog killed it: what it is meant to do */
        }
      }
    });
    const watchdogLog = await readFile(path.join(suite.dir, 'hosts', owner, 'watchdog.log'), 'utf8');
    const shown = (await cli('vm', 'show', 'a1')).json;
    t.diagnostic(`a1: ${owner}'s ${frozenPart} frozen; the guest answered from ${shown.owner} ${back.at - frozen} ms later; QEMU copies sampled ${copiesWhileFrozen.length} times, most at once: ${Math.max(...copiesWhileFrozen)}`);
    assert.match(watchdogLog, new RegExp(`killed the guests' QEMUs ${original}`), 'the watchdog killed the frozen host\'s guest');
    assert.ok(Math.max(...copiesWhileFrozen) <= 1, `two QEMUs ran a1 at once: ${copiesWhileFrozen.join(',')}`);
    assert.notEqual(shown.owner, owner);
    await sleep(3000); // the thawed agent finds it lost its lease and the VM
    assert.equal((await qemuOf('a1')).length, 1, 'the thawed host starts no second copy');
    assert.equal((await suite.probe.gamesrv(ip)).boot, back.boot);
    await assertDiskVerifies(suite, 'a1', 0, ip);
  });

  // A partition cuts a host from the store and the other hosts. With SQLite the store is a file every
  // agent of the machine opens, which no cut link takes away: only the etcd lab can have one.
  if (store === 'etcd')
    it('its links cut (partition): it fences itself, the VM runs elsewhere, and healing brings no second copy', async (t) => {
      const owner = (await cli('vm', 'show', 'a1')).json.owner as string;
      const host = suite.lab.hosts.find((h) => h.name === owner)!;
      const uplink = switchPortName(host.netns);
      const before = await suite.probe.gamesrv(ip);
      await run('ip', ['-n', suite.lab.switchNetns, 'link', 'set', uplink, 'down']);
      const cut = Date.now();
      const { back, copies } = await backCountingCopies(suite, 'a1', ip, before.boot, async () => void (await run('ip', ['-n', suite.lab.switchNetns, 'link', 'set', uplink, 'up'])));
      const shown = (await cli('vm', 'show', 'a1')).json;
      t.diagnostic(`a1: ${owner} cut off; the guest answered from ${shown.owner} ${back.at - cut} ms later; QEMU copies sampled ${copies.length} times, most at once: ${Math.max(...copies)}`);
      assert.notEqual(shown.owner, owner);
      assert.ok(Math.max(...copies) <= 1, `two QEMUs ran a1 at once: ${copies.join(',')}`);
      assert.match(await readFile(path.join(suite.dir, 'hosts', owner, 'agent.log'), 'utf8'), /self-fencing: the host lease was not renewed/);
      for (let i = 0; i < 40 && !(await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === owner); i++) await sleep(500);
      await sleep(2000);
      assert.equal((await qemuOf('a1')).length, 1, 'the healed host starts no second copy');
      assert.equal((await suite.probe.gamesrv(ip)).boot, back.boot);
      await assertDiskVerifies(suite, 'a1', 0, ip);
    });

  it('the manager\'s own host dies with the VM on it: another agent takes over as manager and brings it back', async (t) => {
    const manager = (await cli('ha', 'status')).json.manager.host as string;
    const owner = (await cli('vm', 'show', 'a1')).json.owner as string;
    if (owner !== manager) {
      const moved = await cli('vm', 'migrate', 'a1', '--to', manager, '--no-probe');
      assert.equal(moved.code, 0, moved.stderr);
    }
    const before = await suite.probe.gamesrv(ip);
    const died = await killHost(suite, manager);
    const back = await firstReplyOfNewBoot(suite, ip, before.boot, 60_000);
    const view = (await cli('ha', 'status')).json;
    const shown = (await cli('vm', 'show', 'a1')).json;
    t.diagnostic(`a1: ${manager} (the manager, and a1's host) killed; ${view.manager?.host} took over, the guest answered from ${shown.owner} ${back.at - died} ms later`);
    assert.notEqual(view.manager.host, manager);
    assert.notEqual(shown.owner, manager);
    assert.equal((await qemuOf('a1')).length, 1);
    await assertDiskVerifies(suite, 'a1', 0, ip);
    await startAgent(suite.lab, manager);
  });

  it('failback: a rule that prefers the host it left brings the VM back by live migration once that host is up (the guest keeps running)', async (t) => {
    const owner = (await cli('vm', 'show', 'a1')).json.owner as string;
    const home = suite.lab.hosts.map((h) => h.name).find((h) => h !== owner)!;
    for (let i = 0; i < 40 && !(await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === home); i++) await sleep(500);
    const before = await suite.probe.gamesrv(ip);
    const added = await cli('ha', 'rule', 'add', 'a1-home', '--vms', 'a1', '--nodes', `${home}:2`, '--failback');
    assert.equal(added.code, 0, added.stderr);
    const asked = Date.now();
    let now = owner;
    for (let i = 0; i < 120 && now !== home; i++) {
      await sleep(500);
      now = (await cli('vm', 'show', 'a1')).json.owner as string;
    }
    t.diagnostic(`a1 went back from ${owner} to ${home} ${Date.now() - asked} ms after the rule was added`);
    assert.equal(now, home, `a1 failed back to ${home}`);
    assert.equal((await suite.probe.gamesrv(ip)).boot, before.boot, 'by live migration: the same boot, never restarted');
    assert.equal((await qemuOf('a1')).length, 1);
    let job: { state: string } | undefined;
    for (let i = 0; i < 20 && job?.state !== 'succeeded'; i++) {
      job = ((await cli('job', 'list')).json as Array<{ kind: string; vm: string; state: string }>).filter((j) => j.kind === 'migrate' && j.vm === 'a1').at(-1);
      if (job?.state !== 'succeeded') await sleep(500);
    }
    assert.equal(job?.state, 'succeeded', 'the failback is a migration job like any other');
    assert.match((await cli('ha', 'status')).json.statuses.find((s: { vm: string }) => s.vm === 'a1').lastAction.what, /fail back a1 to/);
    assert.equal((await cli('ha', 'rule', 'remove', 'a1-home')).code, 0);
  });

  it('cluster maintenance: an agent stopped meanwhile lets its guest run unguarded; a host killed meanwhile is recovered only once maintenance is off', async (t) => {
    const on = await cli('cluster', 'maintenance', 'on', '--reason', 'upgrading the agents');
    assert.equal(on.code, 0, on.stderr);
    assert.equal((await cli('ha', 'status')).json.maintenance.reason, 'upgrading the agents');
    assert.equal((await cli('node', 'list')).json.clusterMaintenance.by, 'admin', 'node list shows it');
    const owner = (await cli('vm', 'show', 'a1')).json.owner as string;
    const before = await suite.probe.gamesrv(ip);
    await killAgent(suite.lab, owner, 'SIGTERM'); // an upgrade: the agent stops cleanly
    await sleep(12_000); // past the watchdog's deadline and the lease's expiry
    assert.equal((await suite.probe.gamesrv(ip)).boot, before.boot, 'the guest ran on while its agent was away');
    assert.equal((await qemuOf('a1')).length, 1);
    assert.match(await readFile(path.join(suite.dir, 'hosts', owner, 'agent.log'), 'utf8'), /cluster maintenance: the watchdog is disarmed while this agent is away/);
    await startAgent(suite.lab, owner);
    for (let i = 0; i < 40 && !(await cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === owner); i++) await sleep(500);
    await sleep(4000); // its first renewal: the guest adopted and guarded again
    assert.equal((await suite.probe.gamesrv(ip)).boot, before.boot, 'the agent back adopted the guest');
    const died = await killHost(suite, owner);
    await sleep(16_000); // lease TTL, margin and more
    assert.equal((await qemuOf('a1')).length, 0, 'in maintenance, the dead host\'s VM is not recovered');
    assert.equal((await cli('vm', 'show', 'a1')).json.owner, owner);
    const off = await cli('cluster', 'maintenance', 'off');
    assert.equal(off.code, 0, off.stderr);
    const offAt = Date.now();
    const back = await firstReplyOfNewBoot(suite, ip, before.boot, 60_000);
    t.diagnostic(`a1: ${owner} killed during maintenance; nothing for ${offAt - died} ms; maintenance off, the guest answered from ${(await cli('vm', 'show', 'a1')).json.owner} ${back.at - offAt} ms later`);
    assert.equal((await qemuOf('a1')).length, 1);
    await assertDiskVerifies(suite, 'a1', 0, ip);
    await startAgent(suite.lab, owner);
  });
});
