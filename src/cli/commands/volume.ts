/** ferry volume create|list|delete: disks as volumes of a storage pool. */
import type { StoredVolume } from '../../cluster/model.ts';
import { Cli } from '../context.ts';
import { UsageError, sizeBytes, parseCommandLine } from '../errors.ts';
import { mib, table } from '../format.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry volume create NAME --pool POOL --size SIZE [--format qcow2|raw] [--host HOST] [--peer HOST]
      SIZE like 512M or 1G; qcow2 by default, raw on rbd and iscsi. A volume of a local pool is made
      on --host (default: the first host); on a replicated pool --host keeps one replica, --peer the other.
  ferry volume list
  ferry volume show NAME --pool POOL      where it is; for a replicated volume: in-sync, degraded or resyncing
  ferry volume delete NAME --pool POOL     refused while a VM uses it
Every command takes --json.`;

export const volumeCommand: Command = {
  summary: 'volumes (disks): create, list, delete',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: {
        pool: { type: 'string' }, size: { type: 'string' }, format: { type: 'string' }, host: { type: 'string' }, peer: { type: 'string' },
        json: { type: 'boolean' }, context: { type: 'string' },
      },
    });
    const [verb, name] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    const cli = await Cli.load(values.context);
    switch (verb) {
      case 'create': {
        if (!name) throw new UsageError('ferry volume create needs a volume name');
        if (!values.pool) throw new UsageError('--pool POOL is required; see ferry storage list');
        if (!values.size) throw new UsageError('--size SIZE is required (like 1G)');
        const host = values.host ?? cli.context.agents[0]?.name;
        if (!host) throw new UsageError('the cluster has no hosts');
        const { volume } = await cli.agent(host).call<{ volume: StoredVolume }>(
          'POST',
          '/v1/volumes',
          { name, pool: values.pool, sizeBytes: sizeBytes('size', values.size), ...(values.format ? { format: values.format } : {}), ...(values.peer ? { peer: values.peer } : {}) },
          120_000,
        );
        const where = volume.replicas ? `, replicas on ${volume.replicas.join(' and ')}` : volume.host ? `, on ${volume.host}` : '';
        return out(`volume ${volume.pool}/${volume.name} created (${volume.format}, ${mib(volume.sizeBytes)}${where})`, volume);
      }
      case 'show': {
        const volume = await requireVolume(cli, 'show', name, values.pool);
        const shown: Record<string, unknown> = { ...volume };
        if (volume.replicas) shown['replication'] = await replicationOf(cli, volume);
        const r = shown['replication'] as
          | { state: string; primary?: string; copiedBytes?: number; pendingBytes?: number; error?: string; outdated?: { outdated: string; since: string } }
          | undefined;
        return out(
          [
            `volume ${volume.pool}/${volume.name}: ${volume.format}, ${mib(volume.sizeBytes)}${volume.vm ? `, attached to ${volume.vm}` : ', detached'}`,
            ...(volume.replicas ? [`  replicas: ${volume.replicas.join(', ')}`] : volume.host ? [`  host: ${volume.host}`] : []),
            ...(r
              ? [`  replication: ${r.state}${r.primary ? ` (primary ${r.primary}` + `, ${mib(r.copiedBytes ?? 0)} copied, ${mib(r.pendingBytes ?? 0)} to copy)` : ''}${r.error ? `: ${r.error}` : ''}`]
              : []),
            ...(r?.outdated ? [`  outdated: the replica on ${r.outdated.outdated} lacks writes since ${r.outdated.since} (a recovery there would lose them)`] : []),
          ].join('\n'),
          shown,
        );
      }
      case 'list': {
        const { volumes } = await (await cli.anyAgent()).call<{ volumes: StoredVolume[] }>('GET', '/v1/cluster/volumes');
        const owners = new Map((await (await cli.anyAgent()).call<{ vms: { spec: { name: string }; owner: string }[] }>('GET', '/v1/cluster/vms')).vms.map((v) => [v.spec.name, v.owner]));
        return out(
          volumes.length
            ? table(
                ['volume', 'pool', 'format', 'size', 'vm', 'host', 'place'],
                volumes.map((v) => [v.name, v.pool, v.format, mib(v.sizeBytes), v.vm ?? '-', v.vm ? (owners.get(v.vm) ?? '-') : (v.host ?? (v.replicas ? '-' : 'shared')), v.location ? `LUN ${v.location}` : v.replicas ? `replicas ${v.replicas.join('+')}` : '-']),
              )
            : 'no volumes',
          volumes,
        );
      }
      case 'delete': {
        const volume = await requireVolume(cli, 'delete', name, values.pool);
        // A local volume is removed by the agent of the host that holds it; a replicated one by one of
        // its replica hosts (only they may ask each other to remove a replica).
        const host = volume.host ?? volume.replicas?.[0] ?? cli.context.agents[0]!.name;
        const result = await cli.agent(host).call('DELETE', `/v1/volumes/${volume.pool}/${volume.name}`, {}, 60_000);
        return out(`volume ${volume.pool}/${volume.name} deleted`, result);
      }
      default:
        throw new UsageError(USAGE);
    }
  },
};

/** The volume NAME of POOL as the store has it, or a usage error saying what is missing. */
async function requireVolume(cli: Cli, verb: string, name: string | undefined, pool: string | undefined): Promise<StoredVolume> {
  if (!name) throw new UsageError(`ferry volume ${verb} needs a volume name`);
  if (!pool) throw new UsageError('--pool POOL is required');
  const { volumes } = await (await cli.anyAgent()).call<{ volumes: StoredVolume[] }>('GET', '/v1/cluster/volumes');
  const volume = volumes.find((v) => v.name === name && v.pool === pool);
  if (!volume) throw new UsageError(`no volume '${name}' in pool '${pool}'; see ferry volume list`);
  return volume;
}

/** A replicated volume's state, from the host that runs its VM (the only one that knows). */
async function replicationOf(cli: Cli, volume: StoredVolume): Promise<Record<string, unknown>> {
  if (!volume.vm) return { state: 'off', reason: 'detached: no VM writes to it, nothing to replicate' };
  const { vms } = await (await cli.anyAgent()).call<{ vms: { spec: { name: string }; owner: string }[] }>('GET', '/v1/cluster/vms');
  const owner = vms.find((v) => v.spec.name === volume.vm)?.owner;
  if (!owner) return { state: 'off', reason: `VM '${volume.vm}' is not placed on a host` };
  const { volumes } = await cli.agent(owner).call<{ volumes: { pool: string; volume: string }[] }>('GET', `/v1/vms/${volume.vm}/replication`);
  const mine = volumes.find((v) => v.pool === volume.pool && v.volume === volume.name);
  return mine ?? { state: 'off', reason: `VM '${volume.vm}' is not running on ${owner}` };
}
