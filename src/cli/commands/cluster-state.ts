/** ferry cluster maintenance on|off|status: the whole cluster's HA manager switched off for maintenance (Pacemaker's maintenance-mode). */
import type { ClusterMaintenance } from '../../cluster/ha/records.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';
import type { Spread } from '../../cluster/moves/balance.ts';
import type { MoveItem, MoveJob } from '../../cluster/moves/records.ts';
import { table } from '../format.ts';
import { followJob, notMoved, planTable } from '../moves.ts';
import { clusterCpu } from '../cpu.ts';

const USAGE = `Usage:
  ferry cluster maintenance on [--reason TEXT] [--force]
      The HA manager stops acting: no restarts, relocations or failbacks; every VM keeps running where
      it is. An agent stopped meanwhile disarms its host's watchdog (it may be away as long as the work
      takes); its guests are not recovered elsewhere, not even after the maintenance, until it is back.
      Refused while the manager is recovering a VM (--force: switch it on all the same).
  ferry cluster maintenance off
      The manager acts again; a host that went down meanwhile is waited for from now on (lease, margin).
  ferry cluster maintenance status
  ferry cluster balance [--dry-run] [--parallel N] [--no-wait]
      Moves running VMs by live migration so that the hosts' memory use evens out (hosts in maintenance
      left out; HA rules, replicated disks kept): the spread and the plan first, then a job run as a
      drain is (same limits; ferry job cancel ID), then the spread it left.
  ferry cluster cpu [--all]
      Which CPU models each host runs (what it lacks of the others), the best model every host runs,
      and the cluster's model: the one new VMs get. A host that lacks a feature of it is flagged.
  ferry cluster cpu set MODEL|best
      Records the cluster's CPU model (best: the best every host runs now); a host joining later that
      lacks one of its features is flagged, and takes no VM of that model.
  ferry cluster cpu unset
      New VMs get the best model every host runs at the time.
Every command takes --json.`;

export const clusterCommand: Command = {
  summary: "the whole cluster: maintenance mode (the HA manager switched off), balance, CPU models",
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: { reason: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' }, context: { type: 'string' }, 'dry-run': { type: 'boolean' }, parallel: { type: 'string' }, 'no-wait': { type: 'boolean' }, all: { type: 'boolean' } },
    });
    const [topic, verb] = positionals;
    if (topic === 'balance') return balance(values);
    if (topic === 'cpu') {
      if (verb !== undefined && verb !== 'set' && verb !== 'unset') throw new UsageError(USAGE);
      if (verb === 'set' && !positionals[2]) throw new UsageError('usage: ferry cluster cpu set MODEL|best');
      const agent = await (await Cli.load(values.context)).anyAgent();
      return void console.log(await clusterCpu(agent, verb, positionals[2], { json: values.json ?? false, all: values.all ?? false }));
    }
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

async function balance(values: { json?: boolean; context?: string; 'dry-run'?: boolean; parallel?: string; 'no-wait'?: boolean }): Promise<number | void> {
  if (values.parallel !== undefined && !/^\d+$/.test(values.parallel)) throw new UsageError(`--parallel ${values.parallel}: a whole number`);
  const cli = await Cli.load(values.context);
  const agent = await cli.anyAgent();
  const print = (line: string) => (values.json ? console.error(line) : console.log(line));
  const result = await agent.call<{ plan: MoveItem[]; before: Spread; predicted: Spread; job: MoveJob | null }>('POST', '/v1/cluster/balance', {
    ...(values['dry-run'] ? { dryRun: true } : {}),
    ...(values.parallel !== undefined ? { parallel: Number(values.parallel) } : {}),
  });
  print(`memory use now (spread ${result.before.spreadPoints} points between the fullest and the emptiest host):\n${spreadTable(result.before)}`);
  if (!result.plan.length) {
    print('nothing to move: no move narrows the spread');
    if (values.json) console.log(JSON.stringify(result, null, 2));
    return;
  }
  print(`${values['dry-run'] ? 'the plan (nothing moved)' : `the plan (job ${result.job?.id})`}:\n${planTable(result.plan)}\nexpected after: spread ${result.predicted.spreadPoints} points`);
  if (!result.job || values['no-wait']) return void (values.json && console.log(JSON.stringify(result, null, 2)));
  const ended = await followJob(agent, result.job.id, print);
  const { spread } = await agent.call<{ spread: Spread }>('GET', '/v1/cluster/spread');
  print(`memory use after (spread ${spread.spreadPoints} points):\n${spreadTable(spread)}`);
  if (values.json) console.log(JSON.stringify({ ...result, job: ended, after: spread }, null, 2));
  if (notMoved(ended).length) return 3;
}

function spreadTable(spread: Spread): string {
  return table(['host', 'used', 'memory', 'share'], spread.hosts.map((h) => [h.host, `${h.usedMiB} MiB`, `${h.memoryMiB} MiB`, `${Math.round(h.share * 1000) / 10} %`]));
}

/** One line for every status command: whether the cluster is in maintenance. */
export function maintenanceLine(maintenance: ClusterMaintenance | null | undefined): string {
  return maintenance
    ? `cluster maintenance: ON since ${maintenance.since} (by ${maintenance.by}${maintenance.reason ? `: ${maintenance.reason}` : ''}) — the HA manager recovers nothing`
    : 'cluster maintenance: off';
}
