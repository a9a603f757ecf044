/** ferry init, ferry join, ferry agent: making a cluster of real machines. */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runAgent } from '../../agent/agent.ts';
import { loadClusterConfig, loadNodeConfig, writeJson, type ClusterConfig, type NodeConfig, type StoreConfig } from '../../agent/config.ts';
import { createCa, issueCertificate } from '../../cluster/pki.ts';
import type { CliContext } from '../../lab/lab.ts';
import { UsageError } from '../errors.ts';
import type { Command } from '../main.ts';

function parseStore(value: string | undefined, dir: string): StoreConfig {
  if (!value || value === 'sqlite') return { kind: 'sqlite', path: path.join(dir, 'state.db') };
  if (value.startsWith('sqlite:')) return { kind: 'sqlite', path: value.slice(7) };
  if (value.startsWith('etcd:')) return { kind: 'etcd', endpoints: value.slice(5).split(',') };
  throw new UsageError(`--store '${value}': use sqlite, sqlite:PATH or etcd:http://A:2379,http://B:2379,...`);
}

export const initCommand: Command = {
  summary: 'create a cluster: its CA, store settings and an admin certificate',
  usage: 'Usage: ferry init --dir DIR [--name NAME] [--store sqlite|sqlite:PATH|etcd:URL,URL,...]',
  async run(args) {
    const { values } = parseArgs({ args, options: { dir: { type: 'string' }, name: { type: 'string' }, store: { type: 'string' }, json: { type: 'boolean' } } });
    if (!values.dir) throw new UsageError('ferry init needs --dir (where the cluster CA and configuration go)');
    const dir = path.resolve(values.dir);
    const name = values.name ?? 'ferry';
    const config: ClusterConfig = { name, store: parseStore(values.store, dir) }; // bad input fails before anything is written
    await createCa(dir, name);
    await writeJson(path.join(dir, 'cluster.json'), config);
    await issueCertificate(dir, path.join(dir, 'admin'), 'admin');
    const context: CliContext = { cluster: name, certDir: path.join(dir, 'admin'), agents: [] };
    await writeJson(path.join(dir, 'context.json'), context);
    if (values.json) console.log(JSON.stringify({ dir, ...config }));
    else console.log(`cluster '${name}' created in ${dir} (store: ${config.store.kind}); add hosts with 'ferry join --cluster-dir ${dir} ...'`);
  },
};

export const joinCommand: Command = {
  summary: 'add a host: issue its certificate and write its agent configuration',
  usage: [
    'Usage: ferry join --cluster-dir DIR --name HOST --address ADDR [--port 7443] [--memory MiB] [--bridge br0] [--config FILE]',
    '',
    'Run where the cluster CA is; copy the cluster directory (without ca-key.pem) and the written',
    "configuration to the host, then start 'ferry agent --config FILE' there (contrib/ferry-agent.service).",
  ].join('\n'),
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        'cluster-dir': { type: 'string' }, name: { type: 'string' }, address: { type: 'string' }, port: { type: 'string' },
        memory: { type: 'string' }, bridge: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' },
      },
    });
    const clusterDir = values['cluster-dir'] && path.resolve(values['cluster-dir']);
    if (!clusterDir || !values.name || !values.address) throw new UsageError('ferry join needs --cluster-dir, --name and --address');
    await loadClusterConfig(clusterDir);
    const hostDir = path.join(clusterDir, 'hosts', values.name);
    await issueCertificate(clusterDir, path.join(hostDir, 'cert'), values.name, [values.address]);
    const node: NodeConfig = {
      name: values.name,
      clusterDir,
      certDir: path.join(hostDir, 'cert'),
      address: values.address,
      port: Number(values.port ?? 7443),
      runDir: path.join('/run/ferry', values.name),
      stateDir: path.join('/var/lib/ferry', values.name),
      bridge: values.bridge ?? 'br0',
      memoryMiB: Number(values.memory ?? 4096),
      leaseTtlSeconds: 10,
    };
    const file = values.config ?? path.join(hostDir, 'node.json');
    await writeJson(file, node);
    if (values.json) console.log(JSON.stringify({ config: file, node }));
    else console.log(`host '${values.name}' joined: certificate in ${node.certDir}, agent configuration in ${file}`);
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
