/** ferry volume create|list|delete: disks as volumes of a storage pool. */
import { parseArgs } from 'node:util';
import type { StoredVolume } from '../../cluster/model.ts';
import { Cli } from '../context.ts';
import { UsageError, sizeBytes } from '../errors.ts';
import { mib, table } from '../format.ts';
import type { Command } from '../main.ts';

const USAGE = `Usage:
  ferry volume create NAME --pool POOL --size SIZE [--format qcow2|raw] [--host HOST]   (default qcow2; raw on rbd)
      SIZE like 512M or 1G. A volume of a local pool is made on --host (default: the first host).
  ferry volume list
  ferry volume delete NAME --pool POOL     refused while a VM uses it
Every command takes --json.`;

export const volumeCommand: Command = {
  summary: 'volumes (disks): create, list, delete',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: {
        pool: { type: 'string' }, size: { type: 'string' }, format: { type: 'string' }, host: { type: 'string' },
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
          { name, pool: values.pool, sizeBytes: sizeBytes('size', values.size), ...(values.format ? { format: values.format } : {}) },
          120_000,
        );
        return out(`volume ${volume.pool}/${volume.name} created (${volume.format}, ${mib(volume.sizeBytes)}${volume.host ? `, on ${volume.host}` : ''})`, volume);
      }
      case 'list': {
        const { volumes } = await (await cli.anyAgent()).call<{ volumes: StoredVolume[] }>('GET', '/v1/cluster/volumes');
        const owners = new Map((await (await cli.anyAgent()).call<{ vms: { spec: { name: string }; owner: string }[] }>('GET', '/v1/cluster/vms')).vms.map((v) => [v.spec.name, v.owner]));
        return out(
          volumes.length
            ? table(
                ['volume', 'pool', 'format', 'size', 'vm', 'host', 'place'],
                volumes.map((v) => [v.name, v.pool, v.format, mib(v.sizeBytes), v.vm ?? '-', v.vm ? (owners.get(v.vm) ?? '-') : (v.host ?? 'shared'), v.location ? `LUN ${v.location}` : '-']),
              )
            : 'no volumes',
          volumes,
        );
      }
      case 'delete': {
        if (!name) throw new UsageError('ferry volume delete needs a volume name');
        if (!values.pool) throw new UsageError('--pool POOL is required');
        const { volumes } = await (await cli.anyAgent()).call<{ volumes: StoredVolume[] }>('GET', '/v1/cluster/volumes');
        const volume = volumes.find((v) => v.name === name && v.pool === values.pool);
        if (!volume) throw new UsageError(`no volume '${name}' in pool '${values.pool}'; see ferry volume list`);
        // A local volume is removed by the agent of the host that holds it.
        const host = volume.host ?? cli.context.agents[0]!.name;
        const result = await cli.agent(host).call('DELETE', `/v1/volumes/${volume.pool}/${volume.name}`, {}, 60_000);
        return out(`volume ${volume.pool}/${volume.name} deleted`, result);
      }
      default:
        throw new UsageError(USAGE);
    }
  },
};
