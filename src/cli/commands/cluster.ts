/** ferry init, ferry join, ferry agent: making a cluster of real machines. */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runAgent } from '../../agent/agent.ts';
import { loadClusterConfig, loadNodeConfig, writeJson, type ClusterConfig, type NodeConfig, type StoreConfig } from '../../agent/config.ts';
import { createCa, issueCertificate, issueStoreClientCertificate, loadIdentity } from '../../cluster/pki.ts';
import { addStoreUser, enableStoreRbac } from '../../cluster/store/etcd-auth.ts';
import type { CliContext } from '../../lab/lab.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { NAME_PATTERN, NAME_RULE } from '../../util/names.ts';
import type { Command } from '../command.ts';

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
    const { values } = parseCommandLine({ args, options: { dir: { type: 'string' }, name: { type: 'string' }, store: { type: 'string' }, 'insecure-store': { type: 'boolean' }, json: { type: 'boolean' } } });
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
    const { values } = parseCommandLine({
      args,
      options: {
        'cluster-dir': { type: 'string' }, name: { type: 'string' }, address: { type: 'string' }, port: { type: 'string' },
        memory: { type: 'string' }, bridge: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' },
      },
    });
    const clusterDir = values['cluster-dir'] && path.resolve(values['cluster-dir']);
    if (!clusterDir || !values.name || !values.address) throw new UsageError('ferry join needs --cluster-dir, --name and --address');
    if (!NAME_PATTERN.test(values.name)) throw new UsageError(`--name '${values.name}': a host name must ${NAME_RULE}`);
    const out = path.resolve(values.out ?? `ferry-host-${values.name}`);
    const node = await writeHostBundle(clusterDir, out, {
      name: values.name, address: values.address, port: Number(values.port ?? 7443), memoryMiB: Number(values.memory ?? 4096), bridge: values.bridge ?? 'br0',
    });
    if (values.json) console.log(JSON.stringify({ bundle: out, node }));
    else console.log(`host '${values.name}' joined: its bundle is ${out}; copy its contents to ${INSTALL_DIR} on the host (only that host's key is in it)`);
  },
};

/** What a host's agent configuration keeps when its bundle is made again. */
type HostSettings = Pick<NodeConfig, 'name' | 'address' | 'port' | 'memoryMiB' | 'bridge'> & Partial<Pick<NodeConfig, 'networks'>>;

/**
 * A host's bundle in `out`: the cluster configuration and CA certificate, a fresh key and certificate
 * (role host) — and, where etcd runs with RBAC, its store certificate and etcd user — and its agent
 * configuration pointing at /etc/ferry. Nothing half-made stays if a step fails.
 */
async function writeHostBundle(clusterDir: string, out: string, host: HostSettings): Promise<NodeConfig> {
  const cluster = await loadClusterConfig(clusterDir);
  if (existsSync(out)) throw new UsageError(`${out} exists already; give another --out (a bundle is written once, with a fresh key)`);
  try {
    await mkdir(path.join(out, 'cluster'), { recursive: true, mode: 0o700 });
    await writeJson(path.join(out, 'cluster', 'cluster.json'), cluster);
    await copyFile(path.join(clusterDir, 'ca-cert.pem'), path.join(out, 'cluster', 'ca-cert.pem'));
    await issueCertificate(clusterDir, path.join(out, 'cert'), { name: host.name, role: 'host', addresses: [host.address] });
    if (cluster.store.kind === 'etcd' && cluster.store.rbac) {
      // The host's etcd user, with a password in its bundle: RBAC is switched on with the first host.
      const adminStore = path.join(clusterDir, 'admin', 'store');
      if (!existsSync(path.join(adminStore, 'cert.pem'))) await issueStoreClientCertificate(clusterDir, path.join(clusterDir, 'admin'), 'admin');
      await issueStoreClientCertificate(clusterDir, path.join(out, 'cert'), host.name);
      const rbac = await enableStoreRbac(clusterDir, cluster.store.endpoints, await loadIdentity(adminStore)).catch((err: Error) => {
        throw new UsageError(`cannot set up host '${host.name}' in etcd (${err.message}); etcd must run, with certificates of this cluster's CA, before hosts join`);
      });
      try {
        await addStoreUser(rbac, host.name, path.join(out, 'cert'));
      } finally {
        await rbac.close();
      }
    }
    const node: NodeConfig = {
      ...host,
      clusterDir: path.join(INSTALL_DIR, 'cluster'),
      certDir: path.join(INSTALL_DIR, 'cert'),
      runDir: path.join('/run/ferry', host.name),
      stateDir: path.join('/var/lib/ferry', host.name),
      leaseTtlSeconds: 10,
    };
    await writeJson(path.join(out, 'node.json'), node);
    return node;
  } catch (err) {
    await rm(out, { recursive: true, force: true }); // no half-made bundle stays behind
    throw err;
  }
}

export const bundlesCommand: Command = {
  summary: 'move a cluster directory made before bundles (every host key in it) to one bundle per host',
  usage: [
    'Usage: ferry bundles --cluster-dir DIR [--out DIR] [--json]',
    '',
    "Before bundles, 'ferry join' kept every host's key and configuration under DIR/hosts/HOST and the whole",
    'directory was copied to each host: every host held every key, and the admin\'s. This writes a bundle',
    "per host found there (fresh key and certificate, same name, address, port, memory, bridge and networks),",
    "removes the old keys from DIR, and says what to do next: install each bundle at /etc/ferry on its host,",
    "restart its agent (it revokes its old certificate when it runs with the new one), delete the old copies",
    "of the cluster directory from the hosts, and renew the admin's certificate (ferry cert renew-admin).",
  ].join('\n'),
  async run(args) {
    const { values } = parseCommandLine({ args, options: { 'cluster-dir': { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' } } });
    const clusterDir = values['cluster-dir'] && path.resolve(values['cluster-dir']);
    if (!clusterDir) throw new UsageError('ferry bundles needs --cluster-dir DIR (the directory ferry init made)');
    const hostsDir = path.join(clusterDir, 'hosts');
    const names = existsSync(hostsDir) ? (await readdir(hostsDir)).filter((n) => existsSync(path.join(hostsDir, n, 'node.json'))).sort() : [];
    if (!names.length) throw new UsageError(`no host configurations under ${hostsDir}: this cluster directory holds no host keys (its hosts have bundles already)`);
    const outDir = path.resolve(values.out ?? '.');
    const written: Array<{ host: string; bundle: string }> = [];
    for (const name of names) {
      const old = await loadNodeConfig(path.join(hostsDir, name, 'node.json'));
      const bundle = path.join(outDir, `ferry-host-${name}`);
      await writeHostBundle(clusterDir, bundle, {
        name: old.name, address: old.address, port: old.port, memoryMiB: old.memoryMiB, bridge: old.bridge, ...(old.networks ? { networks: old.networks } : {}),
      });
      await rm(path.join(hostsDir, name), { recursive: true, force: true }); // its old key: the bundle holds the new one
      written.push({ host: name, bundle });
    }
    if (!(await readdir(hostsDir)).length) await rm(hostsDir, { recursive: true, force: true });
    if (values.json) return void console.log(JSON.stringify({ bundles: written }));
    console.log(
      [
        ...written.map((w) => `host '${w.host}': bundle ${w.bundle}`),
        `the old host keys are removed from ${clusterDir}. Next: install each bundle at ${INSTALL_DIR} on its host and restart its agent;`,
        "delete the old copies of the cluster directory from the hosts; then 'ferry cert renew-admin' (every host had the admin's key).",
      ].join('\n'),
    );
  },
};

export const agentCommand: Command = {
  summary: 'run the host agent in the foreground (what the systemd unit starts)',
  usage: 'Usage: ferry agent --config NODE.json',
  async run(args) {
    const { values } = parseCommandLine({ args, options: { config: { type: 'string' } } });
    if (!values.config) throw new UsageError('ferry agent needs --config (written by ferry join or ferry lab up)');
    // A daemon that mostly waits: V8's memory-saving mode grows the heap conservatively, so garbage between
    // major GCs does not creep into the resident size (bench cli: +6 to +8 MiB over 100 migrations by
    // default, +1.6 to +3.8 MiB with it; the live heap itself does not grow). V8 reads it whenever it sizes the heap, so
    // setting it here, before the agent allocates, takes effect without a flag on every command line.
    setFlagsFromString('--optimize-for-size');
    const agent = await runAgent(await loadNodeConfig(values.config));
    await new Promise<void>((resolve) => {
      for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => resolve());
    });
    agent.ctx.log('stopping (guests keep running; a restarted agent adopts them)');
    await agent.stop();
    process.exit(0);
  },
};
