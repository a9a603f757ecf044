import { lacksClusterModelLine, lacksOf, type ClusterCpuModel } from '../../cluster/cpu.ts';
import { loadClusterConfig } from '../../agent/config.ts';
import { storeUserArgv } from '../../cluster/store/etcd-auth.ts';
import { run } from '../../util/exec.ts';
import type { HostRecord } from '../../cluster/model.ts';
import { CERTIFICATE_WARNING_DAYS } from '../../cluster/pki.ts';
import type { ClusterMaintenance } from '../../cluster/ha/records.ts';
import { Cli } from '../context.ts';
import { maintenanceLine } from './cluster-state.ts';
import type { HostMaintenance, MoveItem, MoveJob } from '../../cluster/moves/records.ts';
import { followJob, notMoved, planTable } from '../moves.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../command.ts';

export const nodeCommand: Command = {
  summary: "the cluster's hosts: list, drain, maintenance, remove",
  usage: [
    'Usage: ferry node list [--json]',
    '       ferry node drain HOST [--to HOST,...] [--parallel N] [--policy P] [--dry-run] [--no-wait] [--json]',
    '       ferry node maintenance on|off HOST [--parallel N] [--no-wait] [--json]',
    '       ferry node remove HOST [--reason TEXT] [--json]',
    '',
    '  drain: every running VM of the host leaves it by live migration. First the plan, per VM: where it',
    '  goes and why, or what blocks it (--dry-run prints only that); then a job the HA manager runs (it goes',
    '  on if this command or any agent stops), at most N migrations at once out of the host (default 2) and',
    '  N/2 into each destination, smallest VMs first. Progress per VM and an overall line with an ETA from the',
    "  pace so far; 'ferry job cancel ID' rolls back the migrations under way (finished ones stay). Exits 3 if",
    '  a VM did not move (listed).',
    '  maintenance on: the host takes no new VM (create, HA placement, migrations to it are refused with the',
    '  reason) and is drained; off: it takes VMs again, and those that left it for the maintenance come back.',
    '',
    "  remove: the host leaves the cluster for good. Its certificate is revoked (every agent refuses it",
    '  within seconds) and its records are forgotten; refused while it owns a VM or keeps a volume.',
    "  Where etcd runs with RBAC, its etcd user goes too (ferry store-user remove). To bring it back, join it again.",
  ].join('\n'),
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: {
        json: { type: 'boolean' },
        reason: { type: 'string' },
        context: { type: 'string' },
        to: { type: 'string' },
        parallel: { type: 'string' },
        policy: { type: 'string' },
        'dry-run': { type: 'boolean' },
        'no-wait': { type: 'boolean' },
      },
    });
    if (positionals[0] === 'drain' || positionals[0] === 'maintenance') return runMoveVerb(positionals, values);
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
    if (positionals[0] !== 'list') throw new UsageError('usage: ferry node list | drain HOST | maintenance on|off HOST | remove HOST');
    const cli = await Cli.load(values.context);
    const agent = await cli.anyAgent();
    const { hosts, clusterMaintenance, maintenance, clusterCpuModel } = await agent.call<{
      hosts: (HostRecord & { freeMemoryMiB: number })[];
      clusterMaintenance?: ClusterMaintenance | null;
      maintenance?: HostMaintenance[];
      clusterCpuModel?: ClusterCpuModel | null;
    }>('GET', '/v1/cluster/hosts');
    /** A host that lacks features of the cluster's CPU model is flagged (it takes no VM of that model). */
    const cpuOf = (h: HostRecord) => {
      if (!h.cpu) return 'not said';
      const lacks = clusterCpuModel ? (lacksOf(h, clusterCpuModel.model) ?? []) : [];
      return lacks.length ? `LACKS ${lacks.length} of ${clusterCpuModel!.model}` : `${h.cpu.accel.toUpperCase()}${h.cpu.restriction ? `, ${h.cpu.restriction}` : ''}`;
    };
    const { jobs } = await agent.call<{ jobs: MoveJob[] }>('GET', '/v1/moves');
    const stateOf = (host: string, up: boolean) => {
      const drain = jobs.find((j) => j.kind === 'drain' && j.host === host && (j.state === 'running' || j.state === 'cancelling'));
      const left = drain ? drain.items.filter((i) => ['waiting', 'starting', 'migrating'].includes(i.progress.state)).length : 0;
      const inMaintenance = maintenance?.some((m) => m.host === host);
      return [up ? 'up' : 'down', ...(inMaintenance ? ['maintenance'] : []), ...(drain ? [`draining (${left} left)`] : [])].join(', ');
    };
    const known = new Set(hosts.map((h) => h.name));
    const down = cli.context.agents.filter((a) => !known.has(a.name)).map((a) => a.name);
    if (values.json)
      return void console.log(
        JSON.stringify(
          {
            hosts: hosts.map(({ cpu, ...h }) => ({
              ...h,
              state: stateOf(h.name, true),
              ...(cpu ? { cpu: { accel: cpu.accel, features: cpu.features, hidden: cpu.hidden, ...(cpu.restriction ? { restriction: cpu.restriction } : {}), ...(clusterCpuModel ? { lacksClusterModel: lacksOf({ ...h, cpu }, clusterCpuModel.model) } : {}) } } : {}),
            })),
            down,
            clusterMaintenance: clusterMaintenance ?? null,
            maintenance: maintenance ?? [],
            clusterCpuModel: clusterCpuModel ?? null,
          },
          null,
          2,
        ),
      );
    if (clusterMaintenance) console.log(maintenanceLine(clusterMaintenance));
    console.log(
      table(
        ['host', 'address', 'memory', 'free', 'QEMU', 'newest machine type', 'CPU', 'certificate', 'state'],
        [
          ...hosts.map((h) => [h.name, h.address, `${h.memoryMiB} MiB`, `${h.freeMemoryMiB} MiB`, h.qemu?.version ?? '-', h.qemu?.machineTypes[0] ?? '-', cpuOf(h), certificateCell(h.certificateExpires), stateOf(h.name, true)]),
          ...down.map((d) => [d, '-', '-', '-', '-', '-', '-', '-', stateOf(d, false)]),
        ],
      ),
    );
    for (const h of hosts) {
      const lacks = clusterCpuModel ? (lacksOf(h, clusterCpuModel.model) ?? []) : [];
      if (lacks.length) console.error(`warning: ${lacksClusterModelLine(h.name, lacks, clusterCpuModel!.model)}`);
    }
    for (const h of hosts)
      if (h.certificateExpires && daysUntil(h.certificateExpires) < CERTIFICATE_WARNING_DAYS)
        console.error(`warning: the certificate of ${h.name} expires ${h.certificateExpires.slice(0, 10)}; renew it (ferry join --name ${h.name} ... again, then install the new bundle)`);
  },
};

/** ferry node drain | maintenance on|off: the plan, then the job followed to its end (unless --no-wait). */
async function runMoveVerb(positionals: string[], values: { json?: boolean; context?: string; to?: string; parallel?: string; policy?: string; 'dry-run'?: boolean; 'no-wait'?: boolean }): Promise<number | void> {
  const [verb, ...rest] = positionals;
  const onOff = verb === 'maintenance' ? rest[0] : undefined;
  const host = verb === 'maintenance' ? rest[1] : rest[0];
  if (!host || (verb === 'maintenance' && onOff !== 'on' && onOff !== 'off'))
    throw new UsageError(verb === 'drain' ? 'usage: ferry node drain HOST [--to HOST,...] [--parallel N] [--dry-run] [--no-wait]' : 'usage: ferry node maintenance on|off HOST [--parallel N] [--no-wait]');
  if (values.parallel !== undefined && !/^\d+$/.test(values.parallel)) throw new UsageError(`--parallel ${values.parallel}: a whole number`);
  const cli = await Cli.load(values.context);
  const agent = await cli.anyAgent();
  const print = (line: string) => (values.json ? console.error(line) : console.log(line));
  const parallel = values.parallel !== undefined ? { parallel: Number(values.parallel) } : {};
  let job: MoveJob | null;
  if (verb === 'drain') {
    const result = await agent.call<{ plan?: MoveItem[]; job?: MoveJob; warnings: string[] }>('POST', `/v1/nodes/${encodeURIComponent(host)}/drain`, {
      ...(values.to ? { to: values.to.split(',').filter(Boolean) } : {}),
      ...(values.policy ? { policy: values.policy } : {}),
      ...parallel,
      ...(values['dry-run'] ? { dryRun: true } : {}),
    });
    if (result.plan)
      return void console.log(values.json ? JSON.stringify({ plan: result.plan, warnings: result.warnings }, null, 2) : `drain of ${host}, the plan (nothing moved):\n${planTable(result.plan)}${warningLines(result.warnings)}`);
    job = result.job!;
    print(`drain of ${host} (job ${job.id}):\n${planTable(job.items)}${warningLines(result.warnings)}`);
  } else {
    const result = await agent.call<{ maintenance: HostMaintenance | null; job: MoveJob | null; warnings?: string[] }>('POST', `/v1/nodes/${encodeURIComponent(host)}/maintenance`, { on: onOff === 'on', ...parallel });
    job = result.job;
    print(
      onOff === 'on'
        ? `host ${host} is in maintenance since ${result.maintenance!.since}: it takes no new VM; its VMs leave it (job ${job?.id ?? '-'}):\n${planTable(job?.items ?? [])}${warningLines(result.warnings ?? [])}`
        : `host ${host} takes VMs again${job ? `; ${job.items.length} VM(s) come back (job ${job.id})` : '; no VM to bring back'}`,
    );
  }
  if (!job || values['no-wait']) return void (values.json && console.log(JSON.stringify({ job }, null, 2)));
  const ended = await followJob(agent, job.id, print);
  if (values.json) console.log(JSON.stringify({ job: ended }, null, 2));
  const stayed = notMoved(ended);
  if (stayed.length) {
    print(`not moved: ${stayed.map((i) => `${i.vm} (${i.progress.state === 'blocked' || i.progress.state === 'failed' ? i.progress.reason : i.progress.state})`).join('; ')}`);
    return 3;
  }
}

function warningLines(warnings: string[]): string {
  return warnings.map((w) => `\nwarning: ${w}`).join('');
}

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
