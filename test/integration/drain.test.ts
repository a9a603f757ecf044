/**
 * Drain and maintenance in a 3-host lab, with real guests: `ferry node drain` with a VM that cannot
 * move (the plan names it, the others move, the job ends with it listed); a drain cancelled in the
 * middle; the source's agent killed in the middle of a drain and started again (the drain goes on,
 * every VM runs exactly once); `ferry node maintenance on|off` returning every VM to its host. Each
 * guest is checked as a user would: it answers from the same boot (a live migration, never a
 * restart), from exactly one QEMU on the machine.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { injectFault, qemuPidsOf, startAgent } from '../../src/lab/lab.ts';
import { run } from '../../src/util/exec.ts';
import { useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


interface MoveJobView {
  id: string;
  state: string;
  items: Array<{ vm: string; from: string; to: string; attempts?: number; progress: { state: string; reason?: string } }>;
}

describe('drain and maintenance (3-host lab)', () => {
  const suite = useLab('drain');
  const cli = suite.cli;
  const boots = new Map<string, { ip: string; boot: string }>();

  const create = async (name: string, host: string) => {
    const created = await cli('vm', 'create', name, '--memory', '128', '--host', host);
    assert.equal(created.code, 0, created.stderr);
    const ip = created.json.ip as string;
    boots.set(name, { ip, boot: (await suite.probe.gamesrv(ip)).boot });
  };
  /** The guest answers from the same boot, from one QEMU; where it runs. */
  const sameGuest = async (name: string): Promise<string> => {
    const { ip, boot } = boots.get(name)!;
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, `${name} answers from the same boot: moved live, never restarted`);
    assert.equal((await qemuPidsOf(name)).length, 1, `one QEMU runs ${name}`);
    return (await cli('vm', 'show', name)).json.owner as string;
  };
  const moveJob = async (id: string) => (await cli('job', 'show', id)).json as MoveJobView;
  const until = async (what: string, ok: () => Promise<boolean>, timeoutMs = 120_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
      await sleep(500);
    }
  };

  it('drain: the plan first (a stopped VM blocked, with why); then the others move live, and the job ends with the blocked one listed', async (t) => {
    for (const name of ['d1', 'd2', 'd3']) await create(name, 'h1');
    assert.equal((await cli('vm', 'stop', 'd3')).code, 0);
    const dry = await cli('node', 'drain', 'h1', '--dry-run');
    assert.equal(dry.code, 0, dry.stderr);
    const plan = dry.json.plan as MoveJobView['items'];
    assert.deepEqual(plan.map((i) => i.vm), ['d1', 'd2', 'd3']);
    assert.deepEqual(plan.filter((i) => i.progress.state === 'waiting').map((i) => i.to).sort(), ['h2', 'h3'], 'spread over both other hosts');
    assert.match(plan.find((i) => i.vm === 'd3')!.progress.reason!, /it is stopped/);
    assert.equal(await sameGuest('d1'), 'h1', '--dry-run moves nothing');
    const started = Date.now();
    const badPolicy = await cli('node', 'drain', 'h1', '--policy', 'fastest');
    assert.notEqual(badPolicy.code, 0);
    assert.match(badPolicy.stderr, /policy/);
    const drained = await cli('node', 'drain', 'h1', '--policy', 'must-finish');
    t.diagnostic(`drain of h1 (2 VMs of 128 MiB, 1 blocked): ${Date.now() - started} ms`);
    assert.equal(drained.code, 3, `exits 3: a VM did not move\n${drained.stderr}`);
    assert.match(drained.stderr, /not moved: d3 \(it is stopped/);
    const job = drained.json.job as MoveJobView;
    assert.equal(job.state, 'done');
    for (const name of ['d1', 'd2']) assert.notEqual(await sameGuest(name), 'h1');
    assert.equal((await cli('vm', 'show', 'd3')).json.owner, 'h1', 'the stopped VM stays');
  });

  it('cancel in the middle: the migration under way rolls back or ends, the waiting ones never start; every VM runs once', async (t) => {
    // d1 is on h2 or h3 now; two more VMs there, drained one at a time.
    const host = (await cli('vm', 'show', 'd1')).json.owner as string;
    for (const name of ['c1', 'c2']) await create(name, host);
    const started = await cli('node', 'drain', host, '--parallel', '1', '--no-wait');
    assert.equal(started.code, 0, started.stderr);
    const id = started.json.job.id as string;
    await until('a migration is under way', async () => (await moveJob(id)).items.some((i) => i.progress.state === 'migrating' || i.progress.state === 'moved'));
    const cancel = await cli('job', 'cancel', id);
    assert.equal(cancel.code, 0, cancel.stderr);
    await until('the drain is cancelled', async () => (await moveJob(id)).state === 'cancelled');
    const job = await moveJob(id);
    t.diagnostic(`drain of ${host} cancelled: ${job.items.map((i) => `${i.vm} ${i.progress.state}`).join(', ')}`);
    assert.ok(job.items.some((i) => i.progress.state === 'waiting'), `the last VM never started: ${job.items.map((i) => `${i.vm} ${i.progress.state}`).join(', ')}`);
    for (const item of job.items) {
      const owner = await sameGuest(item.vm);
      assert.equal(owner, item.progress.state === 'moved' ? item.to : host, `${item.vm}: ${item.progress.state}`);
    }
  });

  it('the source\'s agent crashes in the middle of a migration and is started again: the drain goes on, every VM runs exactly once', async (t) => {
    const host = 'h2';
    for (const name of ['k1', 'k2']) await create(name, host);
    const leaving = ((await cli('vm', 'list')).json as Array<{ spec: { name: string }; owner: string }>).filter((v) => v.owner === host).map((v) => v.spec.name);
    // The agent dies (SIGKILL) in k1's switchover, its RAM sent, before the ownership swap: mid-migration, every time.
    await injectFault(suite.lab, host, 'before-ownership-swap', 'crash', 'k1');
    const pid = suite.lab.hosts.find((h) => h.name === host)!.pid!;
    const started = await cli('node', 'drain', host, '--parallel', '1', '--no-wait');
    assert.equal(started.code, 0, started.stderr);
    const id = started.json.job.id as string;
    await until(`${host}'s agent crashed in k1's migration`, async () => !(await run('kill', ['-0', String(pid)]).then(() => true, () => false)));
    await startAgent(suite.lab, host);
    await until('the drain has ended', async () => (await moveJob(id)).state === 'done', 240_000);
    const job = await moveJob(id);
    t.diagnostic(`drain of ${host}, its agent crashed in k1's switchover and started again: ${job.items.map((i) => `${i.vm} ${i.progress.state} after ${i.attempts ?? 0} tries`).join(', ')}`);
    assert.ok((job.items.find((i) => i.vm === 'k1')!.attempts ?? 0) >= 2, 'k1\'s interrupted migration was tried again');
    for (const vm of leaving) {
      const item = job.items.find((i) => i.vm === vm)!;
      assert.equal(item.progress.state, 'moved', `${vm}: ${item.progress.reason ?? ''}`);
      assert.notEqual(await sameGuest(vm), host);
    }
  });

  it('maintenance on: no new VM on the host, its VMs leave; off: they come back to it', async (t) => {
    for (const name of ['m1', 'm2']) await create(name, 'h3');
    const before = ((await cli('vm', 'list')).json as Array<{ spec: { name: string }; owner: string }>).filter((v) => v.owner === 'h3' && v.spec.name !== 'd3').map((v) => v.spec.name);
    const on = await cli('node', 'maintenance', 'on', 'h3');
    assert.equal(on.code === 0 || on.code === 3, true, on.stderr);
    const nodes = (await cli('node', 'list')).json as { hosts: Array<{ name: string; state: string }> };
    assert.match(nodes.hosts.find((h) => h.name === 'h3')!.state, /maintenance/);
    const refused = await cli('vm', 'create', 'late', '--memory', '128', '--host', 'h3');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /host 'h3' is in maintenance since .*: it takes no new VM/);
    const migrateIn = await cli('vm', 'migrate', 'd1', '--to', 'h3');
    if ((await cli('vm', 'show', 'd1')).json.owner !== 'h3') {
      assert.notEqual(migrateIn.code, 0);
      assert.match(migrateIn.stderr, /is in maintenance/);
    }
    for (const vm of before) {
      const item = (on.json.job as MoveJobView).items.find((i) => i.vm === vm);
      if (item?.progress.state !== 'blocked') assert.notEqual(await sameGuest(vm), 'h3', `${vm} left h3`);
    }
    // The README's rolling upgrade: the empty host's agent stopped and started again while in maintenance.
    assert.equal((await cli('lab', 'kill-agent', 'h3')).code, 0);
    assert.equal((await cli('lab', 'start-agent', 'h3')).code, 0);
    await until('h3 is back', async () => ((await cli('node', 'list')).json as { hosts: Array<{ name: string; state: string }> }).hosts.some((h) => h.name === 'h3' && /maintenance/.test(h.state)));
    const off = await cli('node', 'maintenance', 'off', 'h3');
    assert.equal(off.code, 0, off.stderr);
    t.diagnostic(`maintenance of h3: ${before.join(', ')} left and came back`);
    for (const vm of before) {
      const item = (on.json.job as MoveJobView).items.find((i) => i.vm === vm);
      if (item?.progress.state === 'moved') assert.equal(await sameGuest(vm), 'h3', `${vm} came back to h3`);
    }
    assert.doesNotMatch(((await cli('node', 'list')).json as { hosts: Array<{ name: string; state: string }> }).hosts.find((h) => h.name === 'h3')!.state, /maintenance/);
  });

  it('cluster balance: the plan narrows the spread of memory use, the moves are live, and the spread after is the one planned', async (t) => {
    const { hosts } = (await cli('node', 'list')).json as { hosts: Array<{ name: string; freeMemoryMiB: number }> };
    const roomiest = [...hosts].sort((a, b) => b.freeMemoryMiB - a.freeMemoryMiB)[0]!.name;
    for (const name of ['b1', 'b2']) await create(name, roomiest);
    const dry = await cli('cluster', 'balance', '--dry-run');
    assert.equal(dry.code, 0, dry.stderr);
    assert.ok(dry.json.plan.length >= 1, `b1 and b2 on ${roomiest} unbalance the cluster: ${dry.stderr}`);
    assert.ok(dry.json.predicted.spreadPoints < dry.json.before.spreadPoints);
    const balanced = await cli('cluster', 'balance');
    assert.equal(balanced.code, 0, balanced.stderr);
    t.diagnostic(`balance: ${balanced.json.plan.length} move(s), spread ${balanced.json.before.spreadPoints} → ${balanced.json.after.spreadPoints} points (planned ${balanced.json.predicted.spreadPoints})`);
    assert.equal(balanced.json.after.spreadPoints, balanced.json.predicted.spreadPoints);
    for (const item of balanced.json.plan as MoveJobView['items']) assert.equal(await sameGuest(item.vm), item.to);
  });
});
