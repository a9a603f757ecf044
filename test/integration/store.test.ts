/**
 * The store contract, run against both implementations: SQLite (a file shared
 * by processes) and a real three-member etcd cluster (Debian's etcd-server).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdStore } from '../../src/cluster/store/etcd.ts';
import { EtcdCluster } from '../../src/cluster/store/etcd-cluster.ts';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { performance } from 'node:perf_hooks';
import { LeaseExpiredError, StoreNoQuorumError, type Store, type WatchEvent } from '../../src/cluster/store/types.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Two clients of one store (standing for two agents), its directory, and how to stop its servers. */
interface OpenedStore {
  store: Store;
  second: Store;
  dir: string;
  stopServers?: () => Promise<void>;
}

function contract(name: string, open: () => Promise<OpenedStore>) {
  describe(`${name} store`, () => {
    let store: Store;
    let second: Store;
    let opened: OpenedStore;
    before(async () => ({ store, second } = opened = await open()));
    after(async () => {
      await store.close();
      await second.close();
      await opened.stopServers?.();
      await rm(opened.dir, { recursive: true, force: true });
    });

    it('put and get carry revisions; list returns a prefix in key order', async () => {
      const r1 = await store.put('t/a', '1');
      const r2 = await store.put('t/b', '2');
      assert.ok(r2 > r1);
      const a = await second.get('t/a');
      assert.equal(a?.value, '1');
      assert.equal(a?.modRevision, r1);
      await store.put('t/a', '3');
      const again = await store.get('t/a');
      assert.equal(again?.createRevision, r1);
      assert.ok(again!.modRevision > r2);
      assert.deepEqual((await second.list('t/')).map((kv) => kv.key), ['t/a', 't/b']);
      assert.equal(await store.get('t/none'), undefined);
    });

    it('compare-and-swap: exactly one of two writers holding the same revision wins', async () => {
      const rev = await store.put('own/vm1', 'h1');
      const results = await Promise.all([
        store.txn([{ key: 'own/vm1', modRevision: rev }], [{ type: 'put', key: 'own/vm1', value: 'h2' }]),
        second.txn([{ key: 'own/vm1', modRevision: rev }], [{ type: 'put', key: 'own/vm1', value: 'h3' }]),
      ]);
      assert.equal(results.filter((r) => r.succeeded).length, 1);
      const winner = results[0]!.succeeded ? 'h2' : 'h3';
      assert.equal((await store.get('own/vm1'))?.value, winner);
      // modRevision 0 means "does not exist": create-if-absent.
      assert.equal((await store.txn([{ key: 'own/vm1', modRevision: 0 }], [{ type: 'put', key: 'own/vm1', value: 'x' }])).succeeded, false);
      assert.equal((await store.txn([{ key: 'own/new', modRevision: 0 }], [{ type: 'put', key: 'own/new', value: 'x' }])).succeeded, true);
      const failed = await store.txn([{ key: 'own/new', modRevision: 1 }], [], [{ type: 'put', key: 'own/else', value: 'y' }]);
      assert.equal(failed.succeeded, false);
      assert.equal((await store.get('own/else'))?.value, 'y');
    });

    it('watch sees changes made by another client, in order', async () => {
      const events: WatchEvent[] = [];
      const stop = store.watch('w/', (e) => events.push(e));
      await sleep(300);
      await second.put('w/x', '1');
      await second.put('other/y', '1');
      await second.delete('w/x');
      const deadline = Date.now() + 5000;
      while (events.length < 2 && Date.now() < deadline) await sleep(50);
      stop();
      assert.deepEqual(events.map((e) => [e.type, e.key, e.value]), [['put', 'w/x', '1'], ['delete', 'w/x', null]]);
    });

    it('a key bound to a lease vanishes when the lease is not renewed', async () => {
      const lease = await store.grantLease(2);
      await store.put('lease/host1', 'alive', { lease });
      await sleep(1200);
      assert.equal(await store.keepAlive(lease), 2);
      await sleep(1200);
      assert.equal((await second.get('lease/host1'))?.value, 'alive', 'renewed lease must keep the key');
      await sleep(3000);
      assert.equal(await second.get('lease/host1'), undefined);
      await assert.rejects(store.keepAlive(lease), LeaseExpiredError);
    });
  });
}

contract('sqlite', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-sqlite-'));
  const file = path.join(dir, 'state.db');
  const store = new SqliteStore(file);
  const second = new SqliteStore(file); // a second connection stands for another agent process
  return { store, second, dir };
});

/** Three etcd members on loopback, on ports of their own for this test process. */
async function localEtcd(tag: string, firstPort: number): Promise<{ dir: string; cluster: EtcdCluster }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `ferry-etcd-${tag}-`));
  const base = firstPort + (process.pid % 100) * 10;
  const cluster = await EtcdCluster.start(
    [1, 2, 3].map((i) => ({ name: `${tag}${i}`, host: '127.0.0.1', clientPort: base + i, peerPort: base + 3 + i })),
    dir,
  );
  return { dir, cluster };
}

contract('etcd (3 members)', async () => {
  const { dir, cluster } = await localEtcd('m', 23790);
  const store = new EtcdStore(cluster.endpoints);
  const second = new EtcdStore([...cluster.endpoints].reverse());
  return { store, second, dir, stopServers: () => cluster.stop() };
});

describe('etcd quorum', () => {
  it('keeps answering compare-and-swap with one of three members killed', async () => {
    const { dir, cluster } = await localEtcd('q', 24790);
    const store = new EtcdStore(cluster.endpoints);
    try {
      const rev = await store.put('q/vm', 'h1');
      await cluster.members[0]!.stop('SIGKILL');
      const result = await store.txn([{ key: 'q/vm', modRevision: rev }], [{ type: 'put', key: 'q/vm', value: 'h2' }]);
      assert.equal(result.succeeded, true);
      assert.equal((await store.get('q/vm'))?.value, 'h2');
    } finally {
      await store.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('with 2 of 3 members killed: a compare-and-swap is refused at once, saying the store has no quorum and what to do; with one back it goes through', async () => {
    const { dir, cluster } = await localEtcd('n', 26790);
    const store = new EtcdStore(cluster.endpoints);
    try {
      const rev = await store.put('q/vm', 'h1');
      const lease = await store.grantLease(10);
      await cluster.members[1]!.stop('SIGKILL');
      await cluster.members[2]!.stop('SIGKILL');
      const killed = performance.now();
      // A member holds requests for its leader until an election timeout shows it is gone (500 ms here).
      await sleep(1500);
      const asked = performance.now();
      const refused = await store.txn([{ key: 'q/vm', modRevision: rev }], [{ type: 'put', key: 'q/vm', value: 'h2' }]).then(() => undefined, (err: unknown) => err);
      const waited = performance.now() - asked;
      assert.ok(refused instanceof StoreNoQuorumError, String(refused));
      const [alive, ...down] = cluster.endpoints;
      assert.equal(
        refused.message,
        `the store has no quorum: etcd needs 2 of its 3 members to agree on any change, and 1 runs, without a leader (${alive}); not running (connection refused): ${down.join(', ')}. ` +
          'Nothing in the cluster can change until a majority of the etcd members runs again: start the stopped members (each on its own data directory); running VMs keep running meanwhile',
      );
      assert.ok(refused.impossibleSince! >= killed, 'the members showed no quorum can exist: the hosts need not fence themselves');
      assert.ok(waited < 4000, `refused after ${Math.round(waited)} ms: it waits only for an election (3 s), not for a request timeout`);
      // A renewal learns it at once (the agent counts that moment as a renewal).
      const renewal = performance.now();
      await assert.rejects(store.keepAlive(lease), StoreNoQuorumError);
      assert.ok(performance.now() - renewal < 1000, 'a lease renewal does not wait for a leader');

      cluster.members[1]!.start();
      for (let i = 0; i < 30 && !(await store.revision().then(() => true, () => false)); i++) await sleep(500);
      const result = await store.txn([{ key: 'q/vm', modRevision: rev }], [{ type: 'put', key: 'q/vm', value: 'h2' }]);
      assert.equal(result.succeeded, true, 'the refused swap had not happened: it happens now, once');
      assert.equal((await store.get('q/vm'))?.value, 'h2');
      assert.equal(await store.keepAlive(lease), 10, 'the lease outlived the outage, with its full TTL again');
    } finally {
      await store.close();
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
