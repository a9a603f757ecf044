import { parseArgs } from 'node:util';
import { loadClusterConfig } from '../../agent/config.ts';
import { storeUserArgv } from '../../cluster/store/etcd-auth.ts';
import { run } from '../../util/exec.ts';
import type { HostRecord } from '../../cluster/model.ts';
import { CERTIFICATE_WARNING_DAYS } from '../../cluster/pki.ts';
import type { ClusterMaintenance } from '../../cluster/ha/records.ts';
import { Cli } from '../context.ts';
import { maintenanceLine } from './cluster-state.ts';
import { UsageError } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../command.ts';

export const nodeCommand: Command = {
  summary: "the cluster's hosts: ferry node list, ferry node remove HOST",
  usage: [
    'Usage: ferry node list [--json]',
    '       ferry node remove HOST [--reason TEXT] [--json]',
    '',
    "  remove: the host leaves the cluster for good. Its certificate is revoked (every agent refuses it",
    '  within seconds) and its records are forgotten; refused while it owns a VM or keeps a volume.',
    "  Where etcd runs with RBAC, its etcd user goes too (ferry store-user remove). To bring it back, join it again.",
  ].join('\n'),
  async run(args) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' }, reason: { type: 'string' }, context: { type: 'string' } } });
    if (positionals[0] === 'remove') {
      const host = positionals[1];
      if (!host) throw new UsageError('usage: ferry node remove HOST [--reason TEXT]');
      const cli = await Cli.load(values.context);
      const agent = await cli.anyAgent(host); // another host's agent does it: the removed one stops taking part
      const result = await agent.call<{ removed: string; fingerprint: string }>('POST', `/v1/cluster/hosts/${encodeURIComponent(host)}/remove`, values.reason ? { reason: values.reason } : {});
      const storeUser = await removeStoreUsers(cli, host);
      if (values.json) return void console.log(JSON.stringify({ ...result, storeUser }));
      return void console.log(`host '${host}' removed: its certificate (sha256 ${result.fingerprint}) is revoked; no agent accepts it any more${storeUser ? `; ${storeUser}` : ''}`);
    }
    if (positionals[0] !== 'list') throw new UsageError('usage: ferry node list [--json] | ferry node remove HOST');
    const cli = await Cli.load(values.context);
    const { hosts, clusterMaintenance } = await (await cli.anyAgent()).call<{ hosts: (HostRecord & { freeMemoryMiB: number })[]; clusterMaintenance?: ClusterMaintenance | null }>('GET', '/v1/cluster/hosts');
    const known = new Set(hosts.map((h) => h.name));
    const down = cli.context.agents.filter((a) => !known.has(a.name)).map((a) => a.name);
    if (values.json) return void console.log(JSON.stringify({ hosts, down, clusterMaintenance: clusterMaintenance ?? null }, null, 2));
    if (clusterMaintenance) console.log(maintenanceLine(clusterMaintenance));
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

/**
 * Removes the host's etcd users where the cluster has RBAC, from where etcd is reached: what
 * happened, '' without RBAC. Throws if they could not be removed (the host could still write the
 * store, its own revocation included).
 */
async function removeStoreUsers(cli: Cli, host: string): Promise<string> {
  const dir = cli.context.clusterDir;
  const how = `ferry store-user remove ${host} --cluster-dir DIR --admin-dir DIR`;
  if (!dir) return `its etcd users (if the store has RBAC) stay: run '${how}' where the cluster directory is`;
  const cluster = await loadClusterConfig(dir);
  if (cluster.store.kind !== 'etcd' || !cluster.store.rbac) return '';
  const argv = storeUserArgv('remove', host, '--cluster-dir', dir, '--admin-dir', cli.context.certDir);
  try {
    // The lab's etcd is reached only from its namespace: the command runs there.
    return (await (cli.context.storeNetns ? run('ip', ['netns', 'exec', cli.context.storeNetns, ...argv]) : run(argv[0]!, argv.slice(1)))).trim();
  } catch (err) {
    throw new Error(`host '${host}' is removed and its certificate revoked, but its etcd users could not be removed (${(err as Error).message.split('\n')[0]}): it can still write the store; run '${how}' where etcd is reached`);
  }
}
