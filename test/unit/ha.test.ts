/**
 * The HA manager's rules on a real SQLite store: the timing chain, placement, waiting the margin,
 * one manager at a time, failed starts counted to `error`. The manager's requests to other hosts'
 * agents are the one seam faked here (recorded, and failing where a test says so); the integration
 * test (test/integration/ha.test.ts) has real agents answer them and real guests boot.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HaManager, type HaActions } from '../../src/cluster/ha/manager.ts';
import { placeVms, reachableHosts } from '../../src/cluster/ha/placement.ts';
import { HaRecords } from '../../src/cluster/ha/records.ts';
import { checkTimingChain, haTiming, TimingChainError } from '../../src/cluster/ha/timing.ts';
import { ClusterState, KEYS, type HostRecord } from '../../src/cluster/model.ts';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';
import { advertisedCpu } from '../../src/cluster/cpu.ts';
import type { CpuCatalog } from '../../src/qemu/cpu-models.ts';
import type { StoragePoolConfig } from '../../src/storage/types.ts';

describe('the timing chain', () => {
  it('orders renew < self-fence < watchdog < lease TTL < TTL + margin for the lab and production TTLs', () => {
    for (const ttl of [3, 6, 10, 30, 60]) {
      const t = haTiming(ttl);
      assert.ok(t.renewMs < t.selfFenceMs && t.selfFenceMs < t.watchdogMs && t.watchdogMs < t.leaseTtlMs && t.leaseTtlMs < t.leaseTtlMs + t.marginMs, `TTL ${ttl}`);
      assert.ok(t.selfFenceMs >= 2 * t.renewMs);
    }
  });

  it('refuses a chain where a dead host could still run its guests when another starts them', () => {
    const good = haTiming(10);
    assert.throws(() => checkTimingChain({ ...good, watchdogMs: good.leaseTtlMs + 1 }), (e: unknown) => e instanceof TimingChainError && /lease TTL/.test((e as Error).message));
    assert.throws(() => checkTimingChain({ ...good, selfFenceMs: good.renewMs }), TimingChainError);
    assert.throws(() => checkTimingChain({ ...good, marginMs: 0 }), TimingChainError);
  });
});

describe('HA placement', () => {
  const spec = (name: string, memoryMiB: number, disks: Array<{ pool: string; replicas?: string[] }> = []) =>
    makeVmSpec({ name, memoryMiB, boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' }, disks: disks.map((d, i) => ({ id: `disk${i}`, pool: d.pool, volume: `${name}-${i}`, format: 'qcow2', sizeBytes: 1048576, ...(d.replicas ? { replicas: d.replicas } : {}) })) as never });
  const pools = [
    { name: 'shared', type: 'shared-dir', path: '/x' },
    { name: 'local', type: 'local', path: '/y/%h' },
    { name: 'repl', type: 'replicated', path: '/z/%h' },
  ] as unknown as StoragePoolConfig[];

  it('spreads a dead host\'s VMs over the hosts instead of piling them on one', () => {
    const placed = placeVms(
      ['a', 'b', 'c', 'd'].map((vm) => ({ vm, memoryMiB: 256, exclude: new Set<string>() })),
      [
        { name: 'h2', memoryMiB: 1024, usedMiB: 0 },
        { name: 'h3', memoryMiB: 1024, usedMiB: 0 },
      ],
    );
    const count = (h: string) => placed.filter((p) => 'host' in p && p.host === h).length;
    assert.equal(count('h2'), 2);
    assert.equal(count('h3'), 2);
  });

  it('says why a VM has no place: memory, disks only on the lost host, hosts it failed on', () => {
    const [tooBig] = placeVms([{ vm: 'big', memoryMiB: 4096, exclude: new Set() }], [{ name: 'h2', memoryMiB: 1024, usedMiB: 512 }]);
    assert.match((tooBig as { reason: string }).reason, /needs 4096 MiB.*h2 512 MiB/);
    assert.match((reachableHosts(spec('l', 128, [{ pool: 'local' }]), pools, 'h1') as { reason: string }).reason, /local pool 'local' of 'h1'/);
    const repl = reachableHosts(spec('r', 128, [{ pool: 'shared' }, { pool: 'repl', replicas: ['h1', 'h3'] }]), pools, 'h1') as { hosts: Set<string> };
    assert.deepEqual([...repl.hosts], ['h3']);
    const [onlyFailed] = placeVms([{ vm: 'r', memoryMiB: 128, reachableFrom: repl.hosts, exclude: new Set(['h3']) }], [{ name: 'h2', memoryMiB: 1024, usedMiB: 0 }, { name: 'h3', memoryMiB: 1024, usedMiB: 0 }]);
    assert.match((onlyFailed as { reason: string }).reason, /reaches its disks.*failed to start on h3/);
  });
});

describe('HA placement rules', () => {
  const hosts = ['h2', 'h3', 'h4'].map((name) => ({ name, memoryMiB: 1024, usedMiB: 0 }));
  const one = (request: Partial<Parameters<typeof placeVms>[0][0]> & { vm: string }, locations = new Map<string, string>()) =>
    placeVms([{ memoryMiB: 256, exclude: new Set<string>(), ...request }], hosts, locations)[0]!;

  it('node preferences: the highest priority that can take it; strict refuses the others', () => {
    const preferred = { rule: 'db-nodes', priorities: new Map([['h4', 2], ['h3', 1]]), strict: false };
    assert.deepEqual(one({ vm: 'db', preferred }), { vm: 'db', host: 'h4' });
    assert.deepEqual(one({ vm: 'db', preferred, exclude: new Set(['h4']) }), { vm: 'db', host: 'h3' });
    assert.deepEqual(one({ vm: 'db', preferred, exclude: new Set(['h4', 'h3']) }), { vm: 'db', host: 'h2' }, 'not strict: any host when none preferred can');
    const strict = one({ vm: 'db', preferred: { ...preferred, strict: true }, exclude: new Set(['h4', 'h3']) });
    assert.match((strict as { reason: string }).reason, /rule 'db-nodes' allows only h4, h3/);
  });

  it('VMs kept apart never share a host, VMs kept together do — also when placed in one round', () => {
    const apart = { rule: 'spread-web', vms: ['web1', 'web2', 'web3'] };
    const placed = placeVms(['web2', 'web3'].map((vm) => ({ vm, memoryMiB: 256, exclude: new Set<string>(), apart })), hosts, new Map([['web1', 'h2']]));
    const on = placed.map((p) => (p as { host: string }).host);
    assert.equal(new Set([...on, 'h2']).size, 3, `apart: ${on.join(', ')}`);
    const full = one({ vm: 'web4', apart: { rule: 'spread-web', vms: ['web1', 'web2', 'web3', 'web4'] } }, new Map([['web1', 'h2'], ['web2', 'h3'], ['web3', 'h4']]));
    assert.match((full as { reason: string }).reason, /rule 'spread-web' keeps it apart from web1, web2, web3/);
    assert.deepEqual(one({ vm: 'app', together: { rule: 'app-db', vms: ['app', 'db'] } }, new Map([['db', 'h3']])), { vm: 'app', host: 'h3' });
  });
});

describe('the HA manager', () => {
  let dir: string;
  let store: SqliteStore;
  let state: ClusterState;
  let records: HaRecords;
  const managers: HaManager[] = [];
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-ha-'));
    store = new SqliteStore(path.join(dir, 'state.db'));
    state = new ClusterState(store);
    records = new HaRecords(store);
  });
  after(async () => {
    for (const m of managers) await m.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const host = async (name: string, startedAt = new Date(), more: Partial<HostRecord> = {}) => {
    const lease = await store.grantLease(60);
    const record: HostRecord = { name, url: `https://${name}`, address: name, memoryMiB: 1024, startedAt: startedAt.toISOString(), ...more };
    await store.put(KEYS.host(name), JSON.stringify(record), { lease });
    return lease;
  };
  const calls: string[] = [];
  const failOn = new Set<string>();
  const actions: HaActions = {
    async recover(target, vm, start) {
      calls.push(`recover ${vm} on ${target}${start ? '' : ' stopped'}`);
      if (failOn.has(target)) throw new Error(`QEMU would not start on ${target}`);
      const current = (await state.vm(vm))!;
      await state.updateVm(current, { owner: target, desired: start ? 'running' : 'stopped' });
    },
    async start(target, vm) {
      calls.push(`start ${vm} on ${target}`);
      if (failOn.has(target)) throw new Error(`QEMU would not start on ${target}`);
      await state.updateVm((await state.vm(vm))!, { desired: 'running' });
    },
    async migrate(owner, vm, to) {
      calls.push(`migrate ${vm} from ${owner} to ${to}`);
      if (failOn.has(to)) throw new Error(`the migration to ${to} was refused`);
      await state.updateVm((await state.vm(vm))!, { owner: to });
    },
    async release(owner, vm, to) {
      calls.push(`release ${vm} from ${owner} to ${to}`);
      await state.updateVm((await state.vm(vm))!, { owner: to, desired: 'stopped' });
    },
    async stop(target, vm) {
      calls.push(`stop ${vm} on ${target}`);
      await state.updateVm((await state.vm(vm))!, { desired: 'stopped' });
    },
  };
  const manager = (me: string, marginMs = 300) => {
    const m = new HaManager({ store, me, timing: { ...haTiming(10), marginMs }, actions, log: () => undefined, tickMs: 60_000 });
    managers.push(m);
    return m;
  };
  const vm = (name: string, owner: string) => state.createVm({ spec: makeVmSpec({ name, memoryMiB: 256, boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } }), owner, desired: 'running' });

  it('one manager at a time: the second agent waits while the first holds the key', async () => {
    const m1 = manager('h2');
    const m2 = manager('h3');
    await m1.tick();
    await m2.tick();
    assert.equal(m1.active, true);
    assert.equal(m2.active, false);
    assert.equal((await records.manager())?.host, 'h2');
  });

  it('waits the margin after the lease is gone, then starts the VMs elsewhere, spread, once', async () => {
    const [m1] = managers;
    const h1 = await host('h1');
    await host('h2');
    await host('h3');
    await vm('v1', 'h1');
    await vm('v2', 'h1');
    for (const name of ['v1', 'v2']) await records.putResource({ vm: name, request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await m1!.tick();
    assert.equal((await records.status('v1'))?.actual, 'running');
    await records.putGuarded('h1', ['v1', 'v2']); // what h1's watchdog guarded
    await store.revokeLease(h1); // h1 dies
    await m1!.tick();
    assert.deepEqual(calls, [], 'nothing starts before the margin has passed');
    assert.equal((await records.status('v1'))?.actual, 'waiting');
    await new Promise((r) => setTimeout(r, 350));
    await m1!.tick();
    assert.deepEqual(calls.sort(), ['recover v1 on h2', 'recover v2 on h3']);
    assert.deepEqual([(await state.vm('v1'))?.owner, (await state.vm('v2'))?.owner].sort(), ['h2', 'h3']);
    await m1!.tick();
    assert.equal(calls.length, 2, 'a VM back on a live host is not started again');
    assert.equal((await records.status('v1'))?.actual, 'running');
  });

  it('a start that keeps failing moves to the next host, then to error with the reason', async () => {
    const [m1] = managers;
    calls.length = 0;
    const h4 = await host('h4');
    await vm('v3', 'h4');
    await records.putResource({ vm: 'v3', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await m1!.tick();
    await records.putGuarded('h4', ['v3']);
    await store.revokeLease(h4);
    failOn.add('h2').add('h3');
    await m1!.tick();
    await new Promise((r) => setTimeout(r, 350));
    for (let i = 0; i < 6; i++) await m1!.tick();
    const status = (await records.status('v3'))!;
    assert.equal(status.actual, 'error');
    assert.match(status.reason!, /failed to start on h\d, h\d/);
    assert.equal(calls.filter((c) => c.startsWith('recover v3')).length, 4, 'two tries on each of two hosts');
    await m1!.tick();
    assert.equal(calls.filter((c) => c.startsWith('recover v3')).length, 4, 'in error: no more tries');
    failOn.clear();
  });

  it('a VM that keeps failing to start on its live host is handed to another host and started there', async () => {
    const [m1] = managers;
    calls.length = 0;
    await vm('v5', 'h2');
    await state.updateVm((await state.vm('v5'))!, { desired: 'stopped' }); // its QEMU died
    await records.putResource({ vm: 'v5', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    failOn.add('h2');
    for (let i = 0; i < 4; i++) await m1!.tick();
    failOn.clear();
    assert.deepEqual(
      calls.filter((c) => c.includes('v5')),
      ['start v5 on h2', 'start v5 on h2', 'release v5 from h2 to h3', 'start v5 on h3'],
      'two tries on its own host (max-restart 1), then the next host',
    );
    assert.deepEqual({ owner: (await state.vm('v5'))?.owner, desired: (await state.vm('v5'))?.desired }, { owner: 'h3', desired: 'running' });
    const status = (await records.status('v5'))!;
    assert.equal(status.actual, 'running');
    assert.match(status.lastAction!.what, /start v5 on h3: it failed to start on 'h2' — done/);
  });

  it('failback: a VM goes back by live migration to the host its rule prefers, once that host has settled; not without --failback', async () => {
    const [m1] = managers;
    calls.length = 0;
    await vm('v6', 'h3');
    await vm('v7', 'h3');
    for (const name of ['v6', 'v7']) await records.putResource({ vm: name, request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await records.addRule({ name: 'v6-home', kind: 'nodes', vms: ['v6'], nodes: [{ host: 'h6', priority: 2 }, { host: 'h3', priority: 1 }], strict: false, failback: true });
    await records.addRule({ name: 'v7-home', kind: 'nodes', vms: ['v7'], nodes: [{ host: 'h6', priority: 2 }], strict: false });
    await m1!.tick(); // both running on h3, h6 not up
    await host('h6'); // h6 comes back, just now
    await m1!.tick();
    assert.deepEqual(calls.filter((c) => c.startsWith('migrate')), [], 'not to a host that came back a moment ago');
    await new Promise((r) => setTimeout(r, 5_100));
    await m1!.tick();
    assert.deepEqual(calls.filter((c) => c.startsWith('migrate')), ['migrate v6 from h3 to h6'], 'v6 fails back; v7 (no --failback) stays');
    assert.equal((await state.vm('v6'))?.owner, 'h6');
    await m1!.tick();
    assert.equal(calls.filter((c) => c.startsWith('migrate')).length, 1, 'once there, it stays');
    assert.match((await records.status('v6'))!.lastAction!.what, /fail back v6 to h6 by live migration \(rule 'v6-home': priority 2 over h3's 1\)/);
  });

  it('a failback that fails is not tried again at every tick; a host still fenced takes no VM', async () => {
    const [m1] = managers;
    calls.length = 0;
    await vm('v9', 'h3');
    await records.putResource({ vm: 'v9', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await records.addRule({ name: 'v9-home', kind: 'nodes', vms: ['v9'], nodes: [{ host: 'h6', priority: 3 }, { host: 'h2', priority: 2 }], strict: false, failback: true });
    failOn.add('h6');
    await records.putFence({ host: 'h2', pool: 'rbd', address: '10.0.0.2', by: 'h3', at: new Date().toISOString() });
    for (let i = 0; i < 4; i++) await m1!.tick();
    failOn.clear();
    assert.deepEqual(calls.filter((c) => c.includes('v9')), ['migrate v9 from h3 to h6'], 'tried once; not to h2, which is fenced');
    assert.match((await records.status('v9'))!.lastAction!.what, /refused: the migration to h6 was refused/);
    await records.removeFence({ host: 'h2', pool: 'rbd', address: '10.0.0.2', by: 'h3', at: '' });
    await m1!.tick();
    assert.deepEqual(calls.filter((c) => c.includes('v9')), ['migrate v9 from h3 to h6', 'migrate v9 from h3 to h2'], 'the fence lifted: the next host of the rule');
  });

  it('cluster maintenance: nothing is done while it is on; once off, the margin is waited afresh, then the VM is recovered', async () => {
    const [m1] = managers;
    calls.length = 0;
    const h7 = await host('h7');
    await vm('v8', 'h7');
    await records.putResource({ vm: 'v8', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await m1!.tick();
    await records.putGuarded('h7', ['v8']);
    await records.setMaintenance({ since: new Date().toISOString(), by: 'admin' });
    await store.revokeLease(h7);
    for (let i = 0; i < 3; i++) {
      await m1!.tick();
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual(calls, [], 'in maintenance: no recovery, however long the host is gone');
    await records.setMaintenance(undefined);
    await m1!.tick();
    assert.deepEqual(calls, [], 'maintenance off: the margin starts now');
    await new Promise((r) => setTimeout(r, 350));
    await m1!.tick();
    assert.equal((calls as string[]).filter((c) => c.startsWith('recover v8')).length, 1);
  });

  it('a running VM its dead host\'s watchdog did not guard is not started elsewhere: it may still run there', async () => {
    const [m1] = managers;
    calls.length = 0;
    const h5 = await host('h5');
    await vm('v4', 'h5');
    await records.putResource({ vm: 'v4', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await records.putGuarded('h5', []); // put under HA while h5 was silent: never guarded
    await store.revokeLease(h5);
    await m1!.tick();
    await new Promise((r) => setTimeout(r, 350));
    await m1!.tick();
    assert.deepEqual(calls, []);
    const status = (await records.status('v4'))!;
    assert.equal(status.actual, 'waiting');
    assert.match(status.reason!, /no watchdog of it guarded v4.*ferry vm recover v4/);
  });

  it('a manager that lost its lease stops acting and writes nothing; another takes over', async () => {
    const [m1, m2] = managers;
    const before = await records.manager();
    await store.revokeLease((await store.get('/ferry/ha/manager'))!.lease);
    await m1!.tick();
    assert.equal(m1!.active, false);
    assert.equal(await records.putStatuses([{ vm: 'v1', actual: 'error', restarts: 0, relocations: 0, failedOn: [], updatedAt: '' }], before!.token), false, 'the old token writes nothing');
    await m2!.tick();
    assert.equal(m2!.active, true);
    assert.equal((await records.manager())?.host, 'h3');
  });

  it('a dead host\'s VM is started only where its CPU model runs, not on the roomier host that lacks a feature', async () => {
    const [, m2] = managers;
    calls.length = 0;
    const catalog: CpuCatalog = { accel: 'tcg', hostFeatures: ['sse2', 'avx2'], models: [{ name: 'New-v1', migrationSafe: true, unavailableFeatures: [], features: ['sse2', 'avx2'] }] };
    const h6 = await host('h6', new Date(), { cpu: advertisedCpu(catalog) });
    await host('h7', new Date(), { memoryMiB: 8192, cpu: advertisedCpu(catalog, { hideFeatures: ['avx2'] }) });
    await host('h8', new Date(), { memoryMiB: 4096, cpu: advertisedCpu(catalog) });
    await state.createVm({ spec: makeVmSpec({ name: 'c1', memoryMiB: 256, cpuModel: 'New-v1', boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } }), owner: 'h6', desired: 'running' });
    await records.putResource({ vm: 'c1', request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() });
    await m2!.tick();
    await records.putGuarded('h6', ['c1']);
    await store.revokeLease(h6);
    await m2!.tick();
    await new Promise((r) => setTimeout(r, 350));
    await m2!.tick();
    assert.deepEqual(calls, ['recover c1 on h8'], 'h7 has the most memory free but hides avx2');
  });
});
