/**
 * The store as one lab host's agent reaches it: its node.json, its certificate and — where etcd runs
 * with RBAC — its etcd user and password (agent/config.ts openHostStore), from inside its network
 * namespace (the lab's etcd is reached only from the lab network). `storeAsHost` runs this file there
 * and hands it a list of operations; each answers on its own, so one refusal does not hide the next.
 *
 * Run as a program: node --import tsx store-as-host.ts NODE_JSON OPS_JSON
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadClusterConfig, loadNodeConfig, openHostStore } from '../../src/agent/config.ts';
import { loadIdentity } from '../../src/cluster/pki.ts';
import type { KeyValue, Store } from '../../src/cluster/store/types.ts';
import { run } from '../../src/util/exec.ts';
import type { LabRecord } from '../../src/lab/lab.ts';

export type StoreOp =
  | { op: 'get' | 'list' | 'delete'; key: string }
  | { op: 'put'; key: string; value: string; lease?: string }
  | { op: 'keepAlive' | 'revokeLease'; lease: string };

/** What an operation answered: its result, or the error's class and message. */
export type StoreAnswer = { ok: true; result: unknown } | { ok: false; error: string; message: string };

/** Runs `ops` with host `host`'s own store client, in order, inside its namespace. */
export async function storeAsHost(lab: LabRecord, host: string, ops: StoreOp[]): Promise<StoreAnswer[]> {
  const h = lab.hosts.find((x) => x.name === host);
  if (!h) throw new Error(`no host ${host} in the lab`);
  const out = await run('ip', ['netns', 'exec', h.netns, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), h.config, JSON.stringify(ops)], { timeoutMs: 60_000 });
  return JSON.parse(out) as StoreAnswer[];
}

/** Every record of the cluster under /ferry/, as host `host` reads them (a host may read all of /ferry/). */
export async function allRecords(lab: LabRecord, host: string): Promise<KeyValue[]> {
  const [answer] = await storeAsHost(lab, host, [{ op: 'list', key: '/ferry/' }]);
  if (!answer?.ok) throw new Error(`cannot list the store as ${host}: ${answer?.message}`);
  return answer.result as KeyValue[];
}

function apply(store: Store, o: StoreOp): Promise<unknown> {
  switch (o.op) {
    case 'get':
      return store.get(o.key);
    case 'list':
      return store.list(o.key);
    case 'delete':
      return store.delete(o.key);
    case 'put':
      return store.put(o.key, o.value, o.lease ? { lease: o.lease } : {});
    case 'keepAlive':
      return store.keepAlive(o.lease);
    case 'revokeLease':
      return store.revokeLease(o.lease);
  }
}

async function main(nodeFile: string, opsJson: string): Promise<void> {
  const node = await loadNodeConfig(nodeFile);
  const cluster = await loadClusterConfig(node.clusterDir);
  const store = await openHostStore(node, cluster, await loadIdentity(node.certDir));
  const answers: StoreAnswer[] = [];
  for (const o of JSON.parse(opsJson) as StoreOp[]) {
    try {
      const result = await apply(store, o);
      answers.push({ ok: true, result: result ?? null });
    } catch (err) {
      answers.push({ ok: false, error: (err as Error).name, message: (err as Error).message });
    }
  }
  await store.close();
  process.stdout.write(JSON.stringify(answers));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main(process.argv[2]!, process.argv[3]!);
