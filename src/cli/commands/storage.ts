/** ferry storage add|list: the cluster's storage pools and how each host reaches them. */
import type { PoolStatusLine } from '../../agent/storage-routes.ts';
import { AgentUnreachableError } from '../../agent/client.ts';
import { STORAGE_TYPES, poolLocation, type StoragePoolConfig } from '../../storage/types.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { mib, table } from '../format.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry storage add NAME --type shared-dir|local|replicated --path DIR
      replicated: each volume keeps a replica on two hosts (DIR per host, '%h' = host name);
      the host running the VM writes to both before a write completes.
  ferry storage add NAME --type nfs --server HOST --export /PATH
  ferry storage add NAME --type iscsi --portal HOST[:PORT] --target IQN [--fence-command 'PATH ARGS...']
  ferry storage add NAME --type rbd [--ceph-pool rbd] [--conf /etc/ceph/ceph.conf] [--user admin]
      shared-dir: a directory every host mounts at DIR (NFS...); live migration moves only RAM.
      local:      each host's own DIR; live migration copies the disks (NBD mirror, active mode).
                  '%h' in DIR stands for the host's name (one directory per host on one machine, as in the lab).
      nfs:        an NFS export that QEMU opens itself (libnfs, NFSv3; no mount on the hosts); only RAM moves.
      iscsi:      the LUNs of a target, opened by QEMU's own initiator (libiscsi); one free LUN per new volume;
                  only RAM moves; the ownership swap is the only lock (iSCSI has none), no agent opens a LUN of
                  a VM it does not own. --fence-command: storage fencing where the target allows it, run on the
                  recovering host as 'PATH ARGS... fence|unfence ADDRESS HOST' (withdraw a lost host's initiator).
      rbd:        Ceph RBD images (raw) through librbd, cephx via ceph.conf and the user's keyring on every host.
                  Storage fencing: a lost host's clients are blocklisted (ceph osd blocklist) before its VMs
                  start elsewhere, lifted when it is back; the user needs the mon cap 'allow command "osd blocklist"'
                  ('profile rbd' blocklists single clients only, and lifts nothing).
  ferry storage list      every pool, and whether each host reaches it (free space per host)
Every command takes --json.`;

export const storageCommand: Command = {
  summary: 'storage pools: add them, see which hosts reach them',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: { type: { type: 'string' }, path: { type: 'string' }, server: { type: 'string' }, export: { type: 'string' }, portal: { type: 'string' }, target: { type: 'string' }, 'fence-command': { type: 'string' }, 'ceph-pool': { type: 'string' }, conf: { type: 'string' }, user: { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } },
    });
    const [verb, name] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    const cli = await Cli.load(values.context);
    switch (verb) {
      case 'add': {
        if (!name) throw new UsageError('ferry storage add needs a pool name');
        if (!values.type || !STORAGE_TYPES.includes(values.type as never)) throw new UsageError(`--type must be one of ${STORAGE_TYPES.join(', ')}`);
        let where: Record<string, string | string[]>;
        if (values.type === 'nfs') {
          if (!values.server || !values.export) throw new UsageError('an nfs pool needs --server HOST and --export /PATH');
          where = { server: values.server, export: values.export };
        } else if (values.type === 'iscsi') {
          if (!values.portal || !values.target) throw new UsageError('an iscsi pool needs --portal HOST[:PORT] and --target IQN');
          where = { portal: values.portal, target: values.target, ...(values['fence-command'] ? { fenceCommand: values['fence-command'].trim().split(/\s+/) } : {}) };
        } else if (values.type === 'rbd') {
          where = { ...(values['ceph-pool'] ? { pool: values['ceph-pool'] } : {}), ...(values.conf ? { conf: values.conf } : {}), ...(values.user ? { user: values.user } : {}) };
        } else {
          if (!values.path) throw new UsageError('--path DIR is required');
          where = { path: values.path };
        }
        const result = await (await cli.anyAgent()).call<{ pool: StoragePoolConfig }>('POST', '/v1/storage', { name, type: values.type, ...where });
        const status = await statusPerHost(cli);
        const unreachable = status.flatMap((s) => (s.pools ?? []).filter((l) => l.pool === name && !l.reachable));
        return out(
          [`storage pool ${name} added (${values.type} at ${poolLocation(result.pool)})`, ...unreachable.map((l) => `  warning: ${l.error}`)].join('\n'),
          { ...result, hosts: status },
        );
      }
      case 'list': {
        const { pools } = await (await cli.anyAgent()).call<{ pools: StoragePoolConfig[] }>('GET', '/v1/cluster/storage');
        const status = await statusPerHost(cli);
        const rows: string[][] = [];
        for (const pool of pools) {
          for (const host of status) {
            const line = host.pools?.find((l) => l.pool === pool.name);
            rows.push([pool.name, pool.type, host.host, line?.path ?? '-', host.error ? `agent down` : line?.reachable ? 'ok' : `UNREACHABLE: ${line?.error ?? 'unknown'}`, line?.freeBytes !== undefined ? mib(line.freeBytes) : '-']);
          }
        }
        return out(pools.length ? table(['pool', 'type', 'host', 'path', 'status', 'free'], rows) : "no storage pools; add one with 'ferry storage add'", { pools, hosts: status });
      }
      default:
        throw new UsageError(USAGE);
    }
  },
};

interface HostStatus {
  host: string;
  pools?: PoolStatusLine[];
  error?: string;
}

async function statusPerHost(cli: Cli): Promise<HostStatus[]> {
  return Promise.all(
    cli.context.agents.map(async ({ name }) => {
      try {
        const { pools } = await cli.agent(name).call<{ pools: PoolStatusLine[] }>('GET', '/v1/storage/status', undefined, 10_000);
        return { host: name, pools };
      } catch (err) {
        if (!(err instanceof AgentUnreachableError)) throw err;
        return { host: name, error: err.message };
      }
    }),
  );
}
