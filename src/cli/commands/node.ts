import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadClusterConfig } from '../../agent/config.ts';
import { hostUser, openStoreRbac } from '../../cluster/store/etcd-auth.ts';
import { PROJECT_ROOT } from '../../qemu/guest-image.ts';
import { run } from '../../util/exec.ts';
import type { HostRecord } from '../../cluster/model.ts';
import { CERTIFICATE_WARNING_DAYS } from '../../cluster/pki.ts';
import { Cli } from '../context.ts';
import { UsageError } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../main.ts';

export const nodeCommand: Command = {
  summary: "the cluster's hosts: ferry node list, ferry node remove HOST",
  usage: [
    'Usage: ferry node list [--json]',
    '       ferry node remove HOST [--reason TEXT] [--json]',
    '',
    "  remove: the host leaves the cluster for good. Its certificate is revoked (every agent refuses it",
    '  within seconds) and its records are forgotten; refused while it owns a VM or keeps a volume.',
    '  Where etcd runs with RBAC, its etcd user goes too (ferry node remove-store-user HOST does only that,',
    "  where the cluster directory is; node remove runs it). To bring it back, join it again (ferry join).",
  ].join('\n'),
  async run(args) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' }, reason: { type: 'string' }, context: { type: 'string' }, 'cluster-dir': { type: 'string' } } });
    if (positionals[0] === 'remove-store-user') {
      const host = positionals[1];
      if (!host) throw new UsageError('usage: ferry node remove-store-user HOST [--cluster-dir DIR]');
      const cli = await Cli.load(values.context);
      const dir = values['cluster-dir'] ? path.resolve(values['cluster-dir']) : cli.context.clusterDir;
      if (!dir) throw new UsageError("give --cluster-dir DIR: the cluster directory (made by ferry init) holds etcd's root password");
      return void console.log(await removeStoreUser(cli, dir, host));
    }
    if (positionals[0] === 'remove') {
      const host = positionals[1];
      if (!host) throw new UsageError('usage: ferry node remove HOST [--reason TEXT]');
      const cli = await Cli.load(values.context);
      const agent = await cli.anyAgent(host); // another host's agent does it: the removed one stops taking part
      const result = await agent.call<{ removed: string; fingerprint: string }>('POST', `/v1/cluster/hosts/${encodeURIComponent(host)}/remove`, values.reason ? { reason: values.reason } : {});
      const storeUser = await storeUserOf(cli, host);
      if (values.json) return void console.log(JSON.stringify({ ...result, storeUser }));
      return void console.log(`host '${host}' removed: its certificate (sha256 ${result.fingerprint}) is revoked; no agent accepts it any more${storeUser ? `; ${storeUser}` : ''}`);
    }
    if (positionals[0] !== 'list') throw new UsageError('usage: ferry node list [--json] | ferry node remove HOST');
    const cli = await Cli.load(values.context);
    const { hosts } = await (await cli.anyAgent()).call<{ hosts: (HostRecord & { freeMemoryMiB: number })[] }>('GET', '/v1/cluster/hosts');
    const known = new Set(hosts.map((h) => h.name));
    const down = cli.context.agents.filter((a) => !known.has(a.name)).map((a) => a.name);
    if (values.json) return void console.log(JSON.stringify({ hosts, down }, null, 2));
    console.log(
      table(
        ['host', 'address', 'memory', 'free', 'QEMU', 'newest machine type', 'certificate', 'state'],
        [
          ...hosts.map((h) => [h.name, h.address, `${h.memoryMiB} MiB`, `${h.freeMemoryMiB} MiB`, h.qemu?.version ?? '-', h.qemu?.machineTypes[0] ?? '-', certificateCell(h.certificateExpires), 'up']),
          ...down.map((d) => [d, '-', '-', '-', '-', '-', '-', 'down']),
        ],
      ),
    );
    for (const h of hosts)
      if (h.certificateExpires && daysUntil(h.certificateExpires) < CERTIFICATE_WARNING_DAYS)
        console.error(`warning: the certificate of ${h.name} expires ${h.certificateExpires.slice(0, 10)}; renew it (ferry join --name ${h.name} ... again, then install the new bundle)`);
  },
};

function daysUntil(iso: string): number {
  return (Date.parse(iso) - Date.now()) / 86_400_000;
}

/** "expires in 179 d", or "-" when the host's agent does not say. */
function certificateCell(iso: string | undefined): string {
  return iso ? `expires in ${Math.max(0, Math.floor(daysUntil(iso)))} d` : '-';
}

/** Removes the host's etcd user where the cluster has RBAC, from the namespace etcd is reached from; what happened, or '' without RBAC. */
async function storeUserOf(cli: Cli, host: string): Promise<string> {
  const dir = cli.context.clusterDir;
  if (!dir) return `its etcd user (if the store has RBAC) stays: run 'ferry node remove-store-user ${host} --cluster-dir DIR' where the cluster directory is`;
  try {
    if (!cli.context.storeNetns) return await removeStoreUser(cli, dir, host);
    // The lab's etcd is reached only from its namespace: the same command, run there.
    return (await run('ip', ['netns', 'exec', cli.context.storeNetns, process.execPath, path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), 'node', 'remove-store-user', host, '--cluster-dir', dir])).trim();
  } catch (err) {
    return `its etcd user could not be removed (${(err as Error).message.split('\n')[0]}); run 'ferry node remove-store-user ${host} --cluster-dir ${dir}' where etcd is reached`;
  }
}

async function removeStoreUser(cli: Cli, clusterDir: string, host: string): Promise<string> {
  const cluster = await loadClusterConfig(clusterDir);
  if (cluster.store.kind !== 'etcd' || !cluster.store.rbac) return '';
  const rbac = await openStoreRbac(clusterDir, cluster.store.endpoints, cli.identity);
  try {
    await rbac.removeHost(host);
  } finally {
    await rbac.close();
  }
  return `its etcd user ${hostUser(host)} is removed: it cannot write the store any more`;
}
