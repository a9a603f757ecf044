/** ferry ha add|set|remove|list|status: VMs the cluster brings back by itself when their host dies. */
import { HA_REQUESTS, type ClusterMaintenance, type HaManagerRecord, type HaResource, type HaRule, type HaStatus } from '../../cluster/ha/records.ts';
import { maintenanceLine } from './cluster-state.ts';
import { Cli } from '../context.ts';
import { UsageError, wholeNumber, parseCommandLine } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry ha add VM [--state started|stopped|disabled|ignored] [--max-restart N] [--max-relocate N]
      The HA manager keeps VM in that state (default started): when its host dies (its lease expires),
      it starts the VM on another host that reaches its disks and has the memory, after the fencing
      margin. A start that fails is tried --max-restart more times on that host (default 1), then on
      up to --max-relocate other hosts (default 1); then the VM is in 'error'.
      stopped: kept stopped, but moved off a dead host. disabled: left stopped where it is.
      ignored: the manager leaves it alone.
  ferry ha set VM [--state S] [--max-restart N] [--max-relocate N]
      Leaving 'error' takes --state disabled, then --state started.
  ferry ha remove VM
  ferry ha rule add NAME --vms VM,... --nodes HOST[:PRIORITY],... [--strict] [--failback]
      The VMs go to the live host of the highest priority (default 0) that can take them; --strict:
      only to those hosts (else to any host when none of them can). --failback: a running VM goes back
      by live migration when a host of higher priority than its own is up again (one at a time).
  ferry ha rule add NAME --vms VM,... --together | --apart
      The VMs run on one host (together), or never two of them on one host (apart).
  ferry ha rule list | remove NAME
  ferry ha list        the HA VMs and what each asks for
  ferry ha status      the manager's host, the timing chain, each HA VM's requested and actual state
                       and the manager's last action on it
Every command takes --json.`;

interface HaView {
  manager: (HaManagerRecord & { token: number }) | null;
  maintenance: ClusterMaintenance | null;
  timing: string;
  resources: HaResource[];
  statuses: HaStatus[];
  rules: HaRule[];
}

export const haCommand: Command = {
  summary: 'high availability: VMs restarted elsewhere when their host dies',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: {
        state: { type: 'string' }, 'max-restart': { type: 'string' }, 'max-relocate': { type: 'string' },
        vms: { type: 'string' }, nodes: { type: 'string' }, strict: { type: 'boolean' }, failback: { type: 'boolean' }, together: { type: 'boolean' }, apart: { type: 'boolean' },
        json: { type: 'boolean' }, context: { type: 'string' },
      },
    });
    const [verb, vm, ruleName] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    if (!verb) throw new UsageError(USAGE);
    const cli = await Cli.load(values.context);
    if (values.state !== undefined && !(HA_REQUESTS as readonly string[]).includes(values.state)) throw new UsageError(`--state ${values.state}: choose ${HA_REQUESTS.join(', ')}`);
    const settings = {
      ...(values.state !== undefined ? { request: values.state } : {}),
      ...(values['max-restart'] !== undefined ? { maxRestart: wholeNumber('max-restart', values['max-restart']) } : {}),
      ...(values['max-relocate'] !== undefined ? { maxRelocate: wholeNumber('max-relocate', values['max-relocate']) } : {}),
    };
    switch (verb) {
      case 'add': {
        if (!vm) throw new UsageError('ferry ha add VM [--state S] [--max-restart N] [--max-relocate N]');
        const { resource } = await (await cli.anyAgent()).call<{ resource: HaResource }>('POST', '/v1/ha/resources', { vm, ...settings });
        return out(`${vm} is under HA: ${describe(resource)}`, { resource });
      }
      case 'set': {
        if (!vm) throw new UsageError('ferry ha set VM [--state S] [--max-restart N] [--max-relocate N]');
        if (!Object.keys(settings).length) throw new UsageError('ferry ha set needs --state, --max-restart or --max-relocate');
        const { resource } = await (await cli.anyAgent()).call<{ resource: HaResource }>('POST', `/v1/ha/resources/${encodeURIComponent(vm)}`, settings);
        return out(`${vm}: ${describe(resource)}`, { resource });
      }
      case 'remove': {
        if (!vm) throw new UsageError('ferry ha remove VM');
        await (await cli.anyAgent()).call('DELETE', `/v1/ha/resources/${encodeURIComponent(vm)}`);
        return out(`${vm} is no longer under HA (it keeps running where it is)`, { removed: vm });
      }
      case 'rule': {
        // ferry ha rule add|list|remove: positionals are [rule, add, NAME].
        const sub = vm;
        if (sub === 'list') {
          const { rules } = await (await cli.anyAgent()).call<HaView>('GET', '/v1/ha');
          return out(rules.length ? table(['rule', 'VMs', 'asks'], rules.map((r) => [r.name, r.vms.join(', '), describeRule(r)])) : "no HA rules; add one with 'ferry ha rule add'", { rules });
        }
        if (sub === 'remove') {
          if (!ruleName) throw new UsageError('ferry ha rule remove NAME');
          await (await cli.anyAgent()).call('DELETE', `/v1/ha/rules/${encodeURIComponent(ruleName)}`);
          return out(`rule ${ruleName} removed`, { removed: ruleName });
        }
        if (sub !== 'add' || !ruleName) throw new UsageError('ferry ha rule add NAME --vms VM,... (--nodes HOST[:PRIORITY],... [--strict] [--failback] | --together | --apart)');
        if (values.failback && values.nodes === undefined) throw new UsageError('--failback goes with --nodes: it moves VMs back to the hosts a rule prefers');
        if ([values.nodes !== undefined, values.together, values.apart].filter(Boolean).length !== 1) throw new UsageError('a rule takes one of --nodes, --together and --apart');
        const nodes = values.nodes?.split(',').map((entry) => {
          const [host, priority] = entry.split(':');
          if (priority !== undefined && !/^\d+$/.test(priority)) throw new UsageError(`--nodes ${entry}: the priority after ':' is a whole number`);
          return { host, priority: priority === undefined ? 0 : Number(priority) };
        });
        const { rule } = await (await cli.anyAgent()).call<{ rule: HaRule }>('POST', '/v1/ha/rules', {
          name: ruleName,
          vms: (values.vms ?? '').split(',').filter(Boolean),
          ...(nodes ? { nodes, strict: values.strict ?? false, failback: values.failback ?? false } : { together: values.together === true }),
        });
        return out(`rule ${rule.name}: ${rule.vms.join(', ')} ${describeRule(rule)}`, { rule });
      }
      case 'list':
      case 'status': {
        const view = await (await cli.anyAgent()).call<HaView>('GET', '/v1/ha');
        if (verb === 'list')
          return out(
            view.resources.length ? table(['vm', 'requested', 'max-restart', 'max-relocate', 'since'], view.resources.map((r) => [r.vm, r.request, String(r.maxRestart), String(r.maxRelocate), r.addedAt])) : "no VM is under HA; add one with 'ferry ha add VM'",
            { resources: view.resources },
          );
        const statusOf = new Map(view.statuses.map((s) => [s.vm, s]));
        const lines = [
          `manager: ${view.manager ? `${view.manager.host} (since ${view.manager.since})` : 'none active (no agent holds the manager key yet)'}`,
          `timing:  ${view.timing}`,
          maintenanceLine(view.maintenance),
          ...view.rules.map((r) => `rule ${r.name}: ${r.vms.join(', ')} ${describeRule(r)}`),
        ];
        if (view.resources.length)
          lines.push(
            '',
            table(
              ['vm', 'requested', 'actual', 'host', 'last action', 'at', 'reason'],
              view.resources.map((r) => {
                const s = statusOf.get(r.vm);
                return [r.vm, r.request, s?.actual ?? '-', s?.host ?? '-', s?.lastAction?.what ?? '-', s?.lastAction?.at ?? '-', s?.reason ?? ''];
              }),
            ),
          );
        return out(lines.join('\n'), view);
      }
      default:
        throw new UsageError(`unknown verb '${verb}'\n${USAGE}`);
    }
  },
};

function describe(r: HaResource): string {
  return `${r.request}, max-restart ${r.maxRestart}, max-relocate ${r.maxRelocate}`;
}

function describeRule(r: HaRule): string {
  if (r.kind === 'vms') return r.together ? 'run together on one host' : 'never share a host';
  return `${r.strict ? 'only on' : 'prefer'} ${r.nodes.map((n) => `${n.host} (priority ${n.priority})`).join(', ')}${r.failback ? ', failback' : ''}`;
}
