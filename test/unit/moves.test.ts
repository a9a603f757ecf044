/**
 * Drains in the small: the plan (where each VM goes and why, what blocks it) and the runner that
 * carries it out (limits, progress, cancel, a new manager carrying on), against a real SQLite store.
 * The migrations themselves are the seam: a fake that swaps the owner as a finished migration does
 * (test/integration/drain.test.ts migrates real guests).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HA_KEYS } from '../../src/cluster/ha/records.ts';
import { ClusterState, KEYS, type HostRecord, type OwnedVm } from '../../src/cluster/model.ts';
import { planBalance, spreadOf } from '../../src/cluster/moves/balance.ts';
import { planDrain, replicaWarnings } from '../../src/cluster/moves/plan.ts';
import { predictorFrom } from '../../src/cluster/moves/predict.ts';
import { MoveRecords, type MoveJob } from '../../src/cluster/moves/records.ts';
import { MoveRunner, type MoveActions } from '../../src/cluster/moves/runner.ts';
import { notMoved } from '../../src/cli/moves.ts';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';
import type { StoragePoolConfig } from '../../src/storage/types.ts';

const pools: StoragePoolConfig[] = [
  { name: 'shared', type: 'shared-dir', path: '/s' },
  { name: 'local', type: 'local', path: '/l/%h' },
  { name: 'rep', type: 'replicated', path: '/r/%h' },
];
const hostRecord = (name: string, memoryMiB = 1024): HostRecord => ({ name, url: `https://${name}`, address: name, memoryMiB, startedAt: '' });
const spec = (name: string, memoryMiB: number, disks: Array<{ pool: string; replicas?: string[] }> = []) =>
  makeVmSpec({ name, memoryMiB, boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' }, disks: disks.map((d, i) => ({ id: `disk${i}`, pool: d.pool, volume: `${name}-${i}`, format: 'qcow2', sizeBytes: 1048576, ...(d.replicas ? { replicas: d.replicas } : {}) })) as never });
const owned = (name: string, owner: string, memoryMiB: number, disks: Array<{ pool: string; replicas?: string[] }> = [], desired: 'running' | 'stopped' = 'running'): OwnedVm => ({ spec: spec(name, memoryMiB, disks), owner, desired, token: 1 });

describe('the drain plan', () => {
  const hosts = [hostRecord('h1'), hostRecord('h2'), hostRecord('h3')];
  it('spreads the VMs, smallest first; a replicated disk goes to its other replica; what cannot move says why', () => {
    const vms = [
      owned('big', 'h1', 512, [{ pool: 'shared' }]),
      owned('small', 'h1', 128, [{ pool: 'local' }]),
      owned('rep1', 'h1', 256, [{ pool: 'rep', replicas: ['h1', 'h3'] }]),
      owned('off', 'h1', 128, [], 'stopped'),
      owned('huge', 'h1', 4096),
      owned('elsewhere', 'h2', 256),
    ];
    const plan = planDrain({ host: 'h1', vms, hosts, pools, rules: [], unavailable: new Map() });
    const by = new Map(plan.map((i) => [i.vm, i]));
    assert.deepEqual(plan.map((i) => i.vm), ['small', 'rep1', 'big', 'off', 'huge'], 'smallest first, the blocked last');
    assert.equal(by.get('rep1')!.to, 'h3');
    assert.match(by.get('rep1')!.why, /other replica/);
    assert.match(by.get('small')!.why, /local disks are copied/);
    assert.notEqual(by.get('big')!.to, '');
    assert.equal(by.get('off')!.progress.state, 'blocked');
    assert.match((by.get('off')!.progress as { reason: string }).reason, /it is stopped/);
    assert.match((by.get('huge')!.progress as { reason: string }).reason, /needs 4096 MiB/);
    assert.ok(!plan.some((i) => i.vm === 'elsewhere'), 'only the drained host\'s VMs');
  });

  it('never onto a host in maintenance, fenced, or outside --to; a replica whose other side is unavailable blocks', () => {
    const vms = [owned('a', 'h1', 128), owned('rep1', 'h1', 128, [{ pool: 'rep', replicas: ['h1', 'h3'] }])];
    const plan = planDrain({ host: 'h1', vms, hosts, pools, rules: [], unavailable: new Map([['h3', 'is in maintenance']]), to: ['h2', 'h3'] });
    assert.equal(plan.find((i) => i.vm === 'a')!.to, 'h2');
    const rep = plan.find((i) => i.vm === 'rep1')!;
    assert.equal(rep.progress.state, 'blocked');
    assert.match((rep.progress as { reason: string }).reason, /h3 is in maintenance/);
  });

  it('warns of VMs elsewhere that keep a replica on the drained host', () => {
    const vms = [owned('rep2', 'h3', 128, [{ pool: 'rep', replicas: ['h3', 'h1'] }]), owned('plain', 'h3', 128)];
    const warnings = replicaWarnings('h1', vms, pools);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /rep2 \(on h3\) keeps the other replica of rep\/rep2-0 on h1/);
  });

    it('keeps VMs apart that a rule keeps apart', () => {
    const vms = [owned('w1', 'h1', 128), owned('w2', 'h1', 128), owned('w3', 'h2', 128)];
    const plan = planDrain({ host: 'h1', vms, hosts, pools, rules: [{ name: 'web', kind: 'vms', vms: ['w1', 'w2', 'w3'], together: false }], unavailable: new Map() });
    assert.deepEqual(plan.map((i) => i.to).sort(), ['', 'h3'], 'one goes to h3; for the other no host is left (w3 is on h2)');
  });
});

describe('the balance plan', () => {
  const hosts = [hostRecord('h1'), hostRecord('h2'), hostRecord('h3')];
  it('moves from the fullest host until no move narrows the spread; the spread shrinks', () => {
    const vms = [owned('a', 'h1', 256), owned('b', 'h1', 256), owned('c', 'h1', 256), owned('d', 'h3', 256)];
    const plan = planBalance({ vms, hosts, pools, rules: [], unavailable: new Set() });
    assert.deepEqual(plan.map((i) => [i.from, i.to]), [['h1', 'h2']], 'one VM from h1 to h2: 512/256/256');
    const after = vms.map((v) => (v.spec.name === plan[0]!.vm ? { ...v, owner: 'h2' } : v));
    assert.equal(spreadOf(vms, hosts).spreadPoints, 75);
    assert.equal(spreadOf(after, hosts).spreadPoints, 25);
  });

  it('keeps the rules and the replicas, leaves hosts in maintenance out, and moves nothing when even', () => {
    const vms = [
      owned('w1', 'h1', 256),
      owned('w2', 'h1', 256),
      owned('r', 'h1', 256, [{ pool: 'rep', replicas: ['h1', 'h3'] }]),
      owned('w3', 'h2', 128),
    ];
    const rules = [{ name: 'web', kind: 'vms' as const, vms: ['w1', 'w2', 'w3'], together: false }];
    const plan = planBalance({ vms, hosts, pools, rules, unavailable: new Set() });
    for (const item of plan) {
      if (item.vm.startsWith('w')) assert.notEqual(item.to, 'h2', 'never beside w3');
      if (item.vm === 'r') assert.equal(item.to, 'h3', 'only to its other replica');
    }
    assert.ok(plan.length >= 1);
    assert.deepEqual(planBalance({ vms, hosts, pools, rules, unavailable: new Set(['h2', 'h3']) }), [], 'h1 alone: nothing to even out');
    assert.deepEqual(planBalance({ vms: [owned('x', 'h1', 128), owned('y', 'h2', 128), owned('z', 'h3', 128)], hosts, pools, rules: [], unavailable: new Set() }), []);
  });
});

describe('the move runner', () => {
  let dir: string;
  let store: SqliteStore;
  let state: ClusterState;
  let moves: MoveRecords;
  let token: number;
  const started: string[] = [];
  const cancelled: string[] = [];
  const finishing = new Map<string, 'succeed' | 'fail'>();
  const refuseOnce = new Set<string>();
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-moves-'));
    store = new SqliteStore(path.join(dir, 'state.db'));
    state = new ClusterState(store);
    moves = new MoveRecords(store);
    const lease = await store.grantLease(60);
    for (const h of ['h1', 'h2', 'h3']) await store.put(KEYS.host(h), JSON.stringify(hostRecord(h)), { lease });
    token = (await store.txn([], [{ type: 'put', key: HA_KEYS.manager, value: JSON.stringify({ host: 'h2', since: '' }) }])).revision;
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  // The migration as the source's agent would run it: a job record, then the owner swapped (or not).
  const actions: MoveActions = {
    async migrate(from, vm, to) {
      started.push(`${vm} ${from}→${to}`);
      if (refuseOnce.delete(vm)) throw new Error(`a migration of '${vm}' is already in flight`);
      const job = await state.newJob('migrate', vm, from);
      finishing.set(job.id, 'succeed');
      void to;
      return job.id;
    },
    async cancel(_from, vm, jobId) {
      cancelled.push(vm);
      finishing.set(jobId, 'fail');
    },
  };
  /** Ends the migrations under way as `finishing` says. */
  const finishMigrations = async () => {
    for (const job of await state.jobs()) {
      const how = finishing.get(job.id);
      if (job.state !== 'running' || !how) continue;
      const move = (await moves.jobs()).flatMap((m) => m.items).find((i) => i.progress.state === 'migrating' && i.progress.jobId === job.id)!;
      if (how === 'succeed') await state.updateVm((await state.vm(job.vm))!, { owner: move.to });
      await state.saveJob({ ...job, state: how === 'succeed' ? 'succeeded' : 'failed', ...(how === 'fail' ? { error: 'cancelled' } : {}) });
    }
  };
  const drainOf = async (vms: Array<[string, number]>, parallel: number): Promise<MoveJob> => {
    for (const [name, mib] of vms) await state.createVm({ spec: spec(name, mib), owner: 'h1', desired: 'running' });
    const all = await state.vms();
    const items = planDrain({ host: 'h1', vms: all, hosts: await state.hosts(), pools, rules: [], unavailable: new Map() });
    const job: MoveJob = { id: `drain-h1-${vms[0]![0]}`, kind: 'drain', host: 'h1', state: 'running', limits: { total: parallel, perSource: parallel, perDestination: 1 }, items, createdAt: new Date().toISOString(), by: 'admin' };
    await moves.createJob(job);
    return job;
  };

  it('starts no more than the limits allow, follows each migration to its end, and ends the job', async () => {
    const runner = new MoveRunner(store, actions, () => undefined);
    const job = await drainOf([['v1', 128], ['v2', 128], ['v3', 128]], 2);
    await runner.tick(token);
    assert.equal(started.length, 2, 'two at once (and one into each destination)');
    assert.notEqual(started[0]!.split('→')[1], started[1]!.split('→')[1]);
    await finishMigrations();
    await runner.tick(token);
    assert.equal(started.length, 3);
    await finishMigrations();
    await runner.tick(token);
    const ended = (await moves.job(job.id))!;
    assert.equal(ended.state, 'done');
    assert.deepEqual(ended.items.map((i) => i.progress.state), ['moved', 'moved', 'moved']);
    assert.equal((await state.vms()).filter((v) => v.owner === 'h1').length, 0, 'h1 is empty');
  });

  it('cancel: the migration under way rolls back, the finished one stays, the waiting one never starts', async () => {
    started.length = 0;
    const runner = new MoveRunner(store, actions, () => undefined);
    const job = await drainOf([['c1', 128], ['c2', 128], ['c3', 128]], 1);
    await runner.tick(token);
    await finishMigrations();
    await runner.tick(token); // c1 moved, c2 under way
    await moves.updateJob(job.id, (j) => ({ ...j, state: 'cancelling' }));
    await runner.tick(token);
    assert.deepEqual(cancelled, ['c2']);
    await finishMigrations();
    await runner.tick(token);
    const ended = (await moves.job(job.id))!;
    assert.equal(ended.state, 'cancelled');
    assert.deepEqual(ended.items.map((i) => [i.vm, i.progress.state]), [['c1', 'moved'], ['c2', 'failed'], ['c3', 'waiting']]);
    assert.equal(started.length, 2);
    assert.equal((await state.vm('c2'))!.owner, 'h1', 'rolled back: c2 runs where it was');
  });

  it('a refused start is tried again; a VM that left by other means is not this job\'s to move (and not a failure)', async () => {
    started.length = 0;
    const runner = new MoveRunner(store, actions, () => undefined);
    const job = await drainOf([['e1', 128], ['e2', 128]], 2);
    refuseOnce.add('e1');
    const elsewhere = job.items.find((i) => i.vm === 'e2')!.to === 'h2' ? 'h3' : 'h2';
    await state.updateVm((await state.vm('e2'))!, { owner: elsewhere }); // not where the plan sends it: the HA manager, an admin…
    for (let i = 0; i < 4 && (await moves.job(job.id))!.state !== 'done'; i++) {
      await runner.tick(token);
      await finishMigrations();
    }
    const ended = (await moves.job(job.id))!;
    assert.equal(ended.state, 'done');
    const by = new Map(ended.items.map((i) => [i.vm, i]));
    assert.deepEqual([by.get('e1')!.progress.state, by.get('e1')!.attempts], ['moved', 2], 'refused once, moved at the second try');
    assert.deepEqual(by.get('e2')!.progress, { state: 'elsewhere', owner: elsewhere });
    assert.deepEqual(notMoved(ended).map((i) => i.vm).filter((v) => v.startsWith('e')), []);
  });

  it('a runner whose manager key is gone writes nothing; a new manager carries the job on from the record', async () => {
    started.length = 0;
    const job = await drainOf([['r1', 128], ['r2', 128]], 1);
    const stale = new MoveRunner(store, actions, () => undefined);
    const newToken = (await store.txn([], [{ type: 'put', key: HA_KEYS.manager, value: JSON.stringify({ host: 'h3', since: '' }) }])).revision;
    assert.equal(await stale.tick(token), false, 'the old token: refused');
    assert.equal((await moves.job(job.id))!.items.every((i) => i.progress.state === 'waiting'), true, 'nothing written by it');
    const fresh = new MoveRunner(store, actions, () => undefined);
    for (let i = 0; i < 10 && (await moves.job(job.id))!.state !== 'done'; i++) {
      assert.equal(await fresh.tick(newToken), true);
      await finishMigrations();
    }
    assert.equal((await moves.job(job.id))!.state, 'done');
    token = newToken;
  });
});

describe('expected move times', () => {
  const record = (vm: string, totalMs: number, mib: number, startedAt: string) => ({
    id: `j-${vm}-${startedAt}`,
    kind: 'migrate' as const,
    vm,
    host: 'h1',
    state: 'succeeded' as const,
    createdAt: startedAt,
    updatedAt: startedAt,
    log: [],
    result: { vm, outcome: 'completed', startedAt, totalMs, bytes: mib * 2 ** 20 } as never,
  });
  it('from the VM\'s last migration, else its memory at the cluster\'s median rate, else none; the drain goes shortest first', () => {
    const predict = predictorFrom([record('slow', 9000, 128, '2026-11-30T10:00:00Z'), record('slow', 8000, 128, '2026-11-30T11:00:00Z'), record('other', 1000, 100, '2026-11-30T09:00:00Z')]);
    assert.deepEqual(predict('slow', 128), { seconds: 8, basis: 'its last migration (2026-11-30 11:00)' });
    assert.equal(predict('new', 256)!.seconds, 16, '256 MiB at the median 16 MiB/s of 3');
    assert.equal(predictorFrom([])('new', 256), undefined);
    const hosts = [hostRecord('h1'), hostRecord('h2'), hostRecord('h3')];
    const plan = planDrain({ host: 'h1', vms: [owned('slow', 'h1', 128), owned('new', 'h1', 256), owned('tiny', 'h1', 64)], hosts, pools, rules: [], unavailable: new Map(), predict });
    assert.deepEqual(plan.map((i) => [i.vm, i.predicted?.seconds]), [['tiny', 4], ['slow', 8], ['new', 16]]);
  });
});
