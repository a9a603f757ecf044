/** ferry init, ferry join, ferry agent: making a cluster of real machines. */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runAgent } from '../../agent/agent.ts';
import { loadClusterConfig, loadNodeConfig, writeJson, type ClusterConfig, type NodeConfig, type StoreConfig } from '../../agent/config.ts';
import { createCa, issueCertificate, issueStoreClientCertificate, loadIdentity } from '../../cluster/pki.ts';
import { addStoreUser, enableStoreRbac } from '../../cluster/store/etcd-auth.ts';
import type { CliContext } from '../../lab/lab.ts';
import { UsageError } from '../errors.ts';
import { NAME_PATTERN, NAME_RULE } from '../../util/names.ts';
import type { Command } from '../main.ts';

function parseStore(value: string | undefined, dir: string, insecure: boolean): StoreConfig {
  if (!value || value === 'sqlite') return { kind: 'sqlite', path: path.join(dir, 'state.db') };
  if (value.startsWith('sqlite:')) return { kind: 'sqlite', path: value.slice(7) };
  if (value.startsWith('etcd:')) {
    const endpoints = value.slice(5).split(',');
    const plain = endpoints.filter((e) => !e.startsWith('https://'));
    if (plain.length && !insecure)
      throw new UsageError(
        `--store: ${plain.join(', ')} is not https: the store holds every VM's owner and fencing token, and anyone on the network could rewrite it. ` +
          "Run etcd with TLS and client certificates of the cluster CA (https://...), or pass --insecure-store for a throwaway test cluster",
      );
    return { kind: 'etcd', endpoints };
  }
  throw new UsageError(`--store '${value}': use sqlite, sqlite:PATH or etcd:https://A:2379,https://B:2379,...`);
}

export const initCommand: Command = {
  summary: 'create a cluster: its CA, store settings and an admin certificate',
  usage: 'Usage: ferry init --dir DIR [--name NAME] [--store sqlite|sqlite:PATH|etcd:https://A:2379,https://B:2379,...] [--insecure-store]',
  async run(args) {
    const { values } = parseArgs({ args, options: { dir: { type: 'string' }, name: { type: 'string' }, store: { type: 'string' }, 'insecure-store': { type: 'boolean' }, json: { type: 'boolean' } } });
    if (!values.dir) throw new UsageError('ferry init needs --dir (where the cluster CA and configuration go)');
    const dir = path.resolve(values.dir);
    const name = values.name ?? 'ferry';
    if (!NAME_PATTERN.test(name)) throw new UsageError(`--name '${name}': a cluster name must ${NAME_RULE}`);
    const store = parseStore(values.store, dir, values['insecure-store'] ?? false); // bad input fails before anything is written
    // A TLS etcd gets RBAC: switched on at the first `ferry join` (etcd runs with this CA's certificates by then).
    const config: ClusterConfig = { name, store: store.kind === 'etcd' && store.endpoints.every((e) => e.startsWith('https:')) ? { ...store, rbac: true } : store };
    await createCa(dir, name);
    await writeJson(path.join(dir, 'cluster.json'), config);
    await issueCertificate(dir, path.join(dir, 'admin'), { name: 'admin', role: 'admin' });
    const context: CliContext = { cluster: name, certDir: path.join(dir, 'admin'), agents: [], clusterDir: dir };
    await writeJson(path.join(dir, 'context.json'), context);
    if (values.json) console.log(JSON.stringify({ dir, ...config }));
    else console.log(`cluster '${name}' created in ${dir} (store: ${config.store.kind}); add hosts with 'ferry join --cluster-dir ${dir} ...'`);
  },
};

/** Where a host keeps its bundle: the paths in node.json point there. */
const INSTALL_DIR = '/etc/ferry';

export const joinCommand: Command = {
  summary: "add a host: issue its certificate and write a bundle with its configuration (only that host's key)",
  usage: [
    'Usage: ferry join --cluster-dir DIR --name HOST --address ADDR [--port 7443] [--memory MiB] [--bridge br0] [--out DIR]',
    '',
    'Run where the cluster CA is; run it again for the same host to renew its certificate. Writes a bundle (default ./ferry-host-HOST) holding the cluster',
    "configuration and CA certificate, the host's certificate and key, and its agent configuration —",
    "no other host's key, not the admin's, not the CA's. Copy the bundle's contents to /etc/ferry on the",
    "host (mode 0700), then start 'ferry agent --config /etc/ferry/node.json' there (contrib/ferry-agent.service).",
  ].join('\n'),
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        'cluster-dir': { type: 'string' }, name: { type: 'string' }, address: { type: 'string' }, port: { type: 'string' },
        memory: { type: 'string' }, bridge: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' },
      },
    });
    const clusterDir = values['cluster-dir'] && path.resolve(values['cluster-dir']);
    if (!clusterDir || !values.name || !values.address) throw new UsageError('ferry join needs --cluster-dir, --name and --address');
    if (!NAME_PATTERN.test(values.name)) throw new UsageError(`--name '${values.name}': a host name must ${NAME_RULE}`);
    const cluster = await loadClusterConfig(clusterDir);
    const out = path.resolve(values.out ?? `ferry-host-${values.name}`);
    if (existsSync(out)) throw new UsageError(`${out} exists already; give another --out (a bundle is written once, with a fresh key)`);
    await mkdir(path.join(out, 'cluster'), { recursive: true, mode: 0o700 });
    await writeJson(path.join(out, 'cluster', 'cluster.json'), cluster);
    await copyFile(path.join(clusterDir, 'ca-cert.pem'), path.join(out, 'cluster', 'ca-cert.pem'));
    await issueCertificate(clusterDir, path.join(out, 'cert'), { name: values.name, role: 'host', addresses: [values.address] });
    if (cluster.store.kind === 'etcd' && cluster.store.rbac) {
      // The host's etcd user, with a password in its bundle: RBAC is switched on with the first host.
      const adminStore = path.join(clusterDir, 'admin', 'store');
      if (!existsSync(path.join(adminStore, 'cert.pem'))) await issueStoreClientCertificate(clusterDir, path.join(clusterDir, 'admin'), 'admin');
      await issueStoreClientCertificate(clusterDir, path.join(out, 'cert'), values.name);
      const rbac = await enableStoreRbac(clusterDir, cluster.store.endpoints, await loadIdentity(adminStore)).catch(async (err: Error) => {
        await rm(out, { recursive: true, force: true }); // no half-made bundle stays behind
        throw new UsageError(`cannot set up host '${values.name}' in etcd (${err.message}); etcd must run, with certificates of this cluster's CA, before hosts join`);
      });
      try {
        await addStoreUser(rbac, values.name, path.join(out, 'cert'));
      } finally {
        await rbac.close();
      }
    }
    const node: NodeConfig = {
      name: values.name,
      clusterDir: path.join(INSTALL_DIR, 'cluster'),
      certDir: path.join(INSTALL_DIR, 'cert'),
      address: values.address,
      port: Number(values.port ?? 7443),
      runDir: path.join('/run/ferry', values.name),
      stateDir: path.join('/var/lib/ferry', values.name),
      bridge: values.bridge ?? 'br0',
      memoryMiB: Number(values.memory ?? 4096),
      leaseTtlSeconds: 10,
    };
    await writeJson(path.join(out, 'node.json'), node);
    if (values.json) console.log(JSON.stringify({ bundle: out, node }));
    else console.log(`host '${values.name}' joined: its bundle is ${out}; copy its contents to ${INSTALL_DIR} on the host (only that host's key is in it)`);
  },
};

export const agentCommand: Command = {
  summary: 'run the host agent in the foreground (what the systemd unit starts)',
  usage: 'Usage: ferry agent --config NODE.json',
  async run(args) {
    const { values } = parseArgs({ args, options: { config: { type: 'string' } } });
    if (!values.config) throw new UsageError('ferry agent needs --config (written by ferry join or ferry lab up)');
    const agent = await runAgent(await loadNodeConfig(values.config));
    await new Promise<void>((resolve) => {
      for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => resolve());
    });
    agent.ctx.log('stopping (guests keep running; a restarted agent adopts them)');
    await agent.stop();
    process.exit(0);
  },
};
