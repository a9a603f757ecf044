/** ferry cluster maintenance on|off|status: the whole cluster's HA manager switched off for maintenance (Pacemaker's maintenance-mode). */
import { parseArgs } from 'node:util';
import type { ClusterMaintenance } from '../../cluster/ha/records.ts';
import { Cli } from '../context.ts';
import { UsageError } from '../errors.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry cluster maintenance on [--reason TEXT] [--force]
      The HA manager stops acting: no restarts, relocations or failbacks; every VM keeps running where
      it is. An agent stopped meanwhile disarms its host's watchdog (it may be away as long as the work
      takes); its guests are not recovered elsewhere, not even after the maintenance, until it is back.
      Refused while the manager is recovering a VM (--force: switch it on all the same).
  ferry cluster maintenance off
      The manager acts again; a host that went down meanwhile is waited for from now on (lease, margin).
  ferry cluster maintenance status
Every command takes --json.`;

export const clusterCommand: Command = {
  summary: 'the whole cluster: maintenance mode (the HA manager switched off)',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { reason: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' }, context: { type: 'string' } } });
    const [topic, verb] = positionals;
    if (topic !== 'maintenance' || !['on', 'off', 'status'].includes(verb ?? '')) throw new UsageError(USAGE);
    const cli = await Cli.load(values.context);
    const agent = await cli.anyAgent();
    const out = (human: string, doc: unknown) => console.log(values.json ? JSON.stringify(doc, null, 2) : human);
    if (verb === 'status') {
      const { maintenance } = await agent.call<{ maintenance: ClusterMaintenance | null }>('GET', '/v1/ha');
      return out(maintenanceLine(maintenance), { maintenance });
    }
    const result = await agent.call<{ maintenance: ClusterMaintenance | null; was?: ClusterMaintenance | null }>('POST', '/v1/cluster/maintenance', {
      on: verb === 'on',
      ...(values.force ? { force: true } : {}),
      ...(values.reason ? { reason: values.reason } : {}),
    });
    if (verb === 'on') return out(`${maintenanceLine(result.maintenance)}\nthe HA manager does nothing until 'ferry cluster maintenance off'`, result);
    return out(result.was ? `cluster maintenance off (it was on since ${result.was.since}); the HA manager acts again` : 'cluster maintenance was not on', result);
  },
};

/** One line for every status command: whether the cluster is in maintenance. */
export function maintenanceLine(maintenance: ClusterMaintenance | null | undefined): string {
  return maintenance
    ? `cluster maintenance: ON since ${maintenance.since} (by ${maintenance.by}${maintenance.reason ? `: ${maintenance.reason}` : ''}) — the HA manager recovers nothing`
    : 'cluster maintenance: off';
}
