/** On-disk configuration of a cluster and of one node (host) in it. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { EtcdStore, type EtcdCredentials } from '../cluster/store/etcd.ts';
import { STORE_PASSWORD_FILE, STORE_USER_FILE } from '../cluster/store/etcd-auth.ts';
import { SqliteStore } from '../cluster/store/sqlite.ts';
import type { Store } from '../cluster/store/types.ts';
import { loadIdentity, type Identity } from '../cluster/pki.ts';
import type { CpuRestriction } from '../cluster/cpu.ts';

export type StoreConfig =
  | { kind: 'sqlite'; path: string }
  /** rbac: etcd runs with users (cluster/store/etcd-auth.ts): each host logs in with the password in its bundle. */
  | { kind: 'etcd'; endpoints: string[]; rbac?: boolean };


/** cluster.json, next to the cluster CA (ca-cert.pem). */
export interface ClusterConfig {
  name: string;
  store: StoreConfig;
  /** Where guests get addresses from: "<prefix>.<first..last>/<prefixLength>". */
  guestNetwork?: { prefix: string; prefixLength: number; first: number; last: number; gateway?: string };
}

/** node.json: everything `ferry agent` needs to run one host. */
export interface NodeConfig {
  name: string;
  clusterDir: string;
  /** This node's certificate (cert.pem, key.pem, ca-cert.pem, and QEMU's file names). */
  certDir: string;
  /** Address other hosts reach this one at (API and migration streams). */
  address: string;
  port: number;
  /** Also serve the API on this unix socket (a CLI on the same machine). */
  socket?: string;
  runDir: string;
  stateDir: string;
  /** Network namespace the host lives in (lab hosts); QEMU is started there. */
  netns?: string;
  /** Bridge the guests' taps join (NICs made without a named network). */
  bridge: string;
  /** This host's bridge for a named network, where it differs from the network's own (`ferry network add --bridge`). */
  networks?: Record<string, string>;
  /** Memory this host offers to guests. */
  memoryMiB: number;
  /** Seconds of the host lease; the agent renews it every third of that (cluster/ha/timing.ts). */
  leaseTtlSeconds: number;
  /** The watchdog outside the agent (`ferry watchdog`), which it pets after each renewal. */
  watchdog?: { socket: string };
  /** The IP address this host reaches storage from, where it is not `address` (storage fencing cuts it off by it). */
  storageAddress?: string;
  /** What this host's CPU advertises less (as for an older host): cluster/cpu.ts CpuRestriction. */
  cpu?: CpuRestriction;
  /** The REST API's HTTPS port (api/server.ts; default 8006, 0: none). It also listens on state/api.sock. */
  apiPort?: number;
}

import { ConfigError, readJson } from '../util/json-file.ts';

export { ConfigError, readJson, writeJson } from '../util/json-file.ts';

export const loadClusterConfig = (clusterDir: string) => readJson<ClusterConfig>(path.join(clusterDir, 'cluster.json'), 'cluster configuration');
export const loadNodeConfig = (file: string) => readJson<NodeConfig>(file, 'node configuration');

/** identity: this node's certificate, presented to etcd members that require client certificates. */
export function openStore(config: StoreConfig, identity?: Identity, credentials?: EtcdCredentials): Store {
  return config.kind === 'sqlite' ? new SqliteStore(config.path) : new EtcdStore(config.endpoints, 5000, identity, credentials);
}

/**
 * How a host reaches the store: its own certificate, or — where etcd runs with RBAC — its etcd user
 * and password over its CN-less store certificate (pki.ts issueStoreClientCertificate).
 */
export async function openHostStore(node: NodeConfig, cluster: ClusterConfig, identity: Identity): Promise<Store> {
  if (cluster.store.kind !== 'etcd' || !cluster.store.rbac) return openStore(cluster.store, identity);
  try {
    const read = async (file: string) => (await readFile(path.join(node.certDir, file), 'utf8')).trim();
    return openStore(cluster.store, await loadIdentity(path.join(node.certDir, 'store')), { user: await read(STORE_USER_FILE), password: await read(STORE_PASSWORD_FILE) });
  } catch (err) {
    throw new ConfigError(`this cluster's etcd checks who writes what, and this host lacks its store password or certificate (${(err as Error).message}); join the host again (ferry join) and install its new bundle`);
  }
}
