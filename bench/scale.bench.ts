/**
 * The HA manager at scale (`npm run bench -- --only scale`): a real etcd (one member on loopback,
 * plaintext: the figures are the manager's, not TLS's) holds N host records, each on a lease of its
 * own, and 20 VMs per host, every one under HA. One host's lease is revoked (it "dies"); the manager
 * — the real one, in this process — waits its margin and places and recovers that host's VMs. The
 * requests it sends to the chosen hosts' agents are the one seam faked here (no agents run: each
 * takeover is the ownership compare-and-swap an agent would do, in this store). Printed per cluster
 * size: the duration of the tick that placed and recovered the VMs, an idle tick's, the store writes
 * the manager made for the recovery (they grow with the VMs moved, not with the cluster) and this
 * process's memory.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import os from 'node:os';
import path from 'node:path';
import { table } from '../src/cli/format.ts';
import { HaManager, type HaActions } from '../src/cluster/ha/manager.ts';
import { HA_KEYS, type HaResource } from '../src/cluster/ha/records.ts';
import { haTiming } from '../src/cluster/ha/timing.ts';
import { ClusterState, KEYS, type HostRecord, type VmRecord } from '../src/cluster/model.ts';
import { EtcdCluster } from '../src/cluster/store/etcd-cluster.ts';
import { EtcdStore } from '../src/cluster/store/etcd.ts';
import type { Op, Store } from '../src/cluster/store/types.ts';
import { makeVmSpec } from '../src/qemu/spec.ts';

const VMS_PER_HOST = 20;

/** A full garbage collection, for the heap the manager keeps (not what a tick left to collect). */
function gc(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}
const MARGIN_MS = 200;

/** The store as the manager sees it, counting the writes it makes. */
function counting(store: Store): { store: Store; writes: () => { requests: number; keys: number } } {
  let requests = 0;
  let keys = 0;
  const wrapped = Object.create(store) as Store;
  wrapped.put = (...args) => (requests++, keys++, store.put(...args));
  wrapped.delete = (...args) => (requests++, keys++, store.delete(...args));
  wrapped.txn = (...args) => ((requests += args[1].length ? 1 : 0), (keys += args[1].length), store.txn(...args));
  return { store: wrapped, writes: () => ({ requests, keys }) };
}

async function putAll(store: Store, ops: Op[]): Promise<void> {
  for (let i = 0; i < ops.length; i += 100) await store.txn([], ops.slice(i, i + 100));
}

interface ScaleRow {
  hosts: number;
  vms: number;
  moved: number;
  recoveryTickMs: number;
  idleTickMs: number;
  managerWrites: { requests: number; keys: number };
  rssMiB: number;
  heapMiB: number;
}

async function oneSize(hosts: number, port: number): Promise<ScaleRow> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-scale-'));
  const cluster = await EtcdCluster.start([{ name: `s${hosts}`, host: '127.0.0.1', clientPort: port, peerPort: port + 1 }], dir);
  const raw = new EtcdStore(cluster.endpoints, 30_000);
  const managers: HaManager[] = [];
  try {
    const leases: string[] = [];
    const ops: Op[] = [];
    for (let h = 0; h < hosts; h++) {
      const lease = await raw.grantLease(3600);
      leases.push(lease);
      const record: HostRecord = { name: `n${h}`, url: `https://n${h}`, address: `n${h}`, memoryMiB: 64 * 1024, startedAt: new Date().toISOString() };
      ops.push({ type: 'put', key: KEYS.host(record.name), value: JSON.stringify(record), lease });
      for (let v = 0; v < VMS_PER_HOST; v++) {
        const name = `vm-${h}-${v}`;
        const vm: VmRecord = { spec: makeVmSpec({ name, memoryMiB: 512, boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } }), owner: record.name, desired: 'running' };
        const resource: HaResource = { vm: name, request: 'started', maxRestart: 1, maxRelocate: 1, addedAt: new Date().toISOString() };
        ops.push({ type: 'put', key: KEYS.vm(name), value: JSON.stringify(vm) }, { type: 'put', key: HA_KEYS.resource(name), value: JSON.stringify(resource) });
      }
    }
    await putAll(raw, ops);
    const { store, writes } = counting(raw);
    const state = new ClusterState(raw);
    const actions: HaActions = {
      // What the chosen host's agent does first: the ownership compare-and-swap.
      async recover(target, vm) {
        const current = (await state.vm(vm))!;
        if ((await state.updateVm(current, { owner: target })) === undefined) throw new Error(`${vm} changed meanwhile`);
      },
      async start() {},
      async stop() {},
      async release() {},
      async migrate() {},
    };
    const manager = new HaManager({ store, me: 'n1', timing: { ...haTiming(10), marginMs: MARGIN_MS }, actions, log: () => undefined, tickMs: 3_600_000 });
    managers.push(manager);
    manager.start(); // its lease renewals (no tick of its own: tickMs is an hour)
    await manager.tick(); // becomes the manager, writes every VM's first status
    await manager.tick();
    const idleStart = performance.now();
    await manager.tick();
    const idleTickMs = performance.now() - idleStart;
    await raw.revokeLease(leases[0]!); // n0 dies
    await manager.tick(); // sees it gone: the margin starts
    await new Promise((r) => setTimeout(r, MARGIN_MS + 50));
    const before = writes();
    const start = performance.now();
    await manager.tick();
    const recoveryTickMs = performance.now() - start;
    const managerWrites = { requests: writes().requests - before.requests, keys: writes().keys - before.keys };
    const moved = (await state.vms()).filter((v) => v.spec.name.startsWith('vm-0-') && v.owner !== 'n0').length;
    gc();
    const memory = process.memoryUsage();
    return { hosts, vms: hosts * VMS_PER_HOST, moved, recoveryTickMs, idleTickMs, managerWrites, rssMiB: memory.rss / 1048576, heapMiB: memory.heapUsed / 1048576 };
  } finally {
    for (const m of managers) await m.stop();
    await raw.close();
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runScaleBench(): Promise<void> {
  const rows: ScaleRow[] = [];
  const base = 32000 + (process.pid % 100) * 10;
  rows.push(await oneSize(100, base));
  rows.push(await oneSize(1000, base + 4));
  console.log(`\nHA manager at scale — one host's lease revoked, its ${VMS_PER_HOST} VMs placed and taken over (real etcd 3.4, one member on loopback; every VM under HA; the agents' side is the ownership compare-and-swap only)`);
  console.log(
    table(
      ['hosts', 'VMs', 'VMs moved', 'placement + takeover tick', 'idle tick', 'manager\'s write requests for it', 'keys written', 'keys per VM moved', 'this process: RSS', 'V8 heap after a full GC'],
      rows.map((r) => [
        String(r.hosts),
        String(r.vms),
        `${r.moved} of ${VMS_PER_HOST}`,
        `${Math.round(r.recoveryTickMs)} ms`,
        `${r.idleTickMs.toFixed(1)} ms`,
        String(r.managerWrites.requests),
        String(r.managerWrites.keys),
        r.moved ? (r.managerWrites.keys / r.moved).toFixed(1) : '-',
        `${r.rssMiB.toFixed(0)} MiB`,
        `${r.heapMiB.toFixed(0)} MiB`,
      ]),
    ),
  );
  console.log('(one run per size; the heap is what this process keeps after a full GC — the manager, the store client, the TypeScript loader — and RSS is the whole process\'s, with the freed memory of loading 40,000 records that V8 has not given back)');
}
