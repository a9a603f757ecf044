/** ferry network add|list|delete: named guest networks that VMs' NICs join on every host. */
import type { NetworkRecord } from '../../cluster/model.ts';
import { AgentUnreachableError } from '../../agent/client.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry network add NAME --bridge BR [--vlan N] [--subnet CIDR]
      A guest network: on every host, NICs on it get a tap on bridge BR (a host may name its own bridge
      for NAME in its node.json: "networks": {"NAME": "br1"}). With --vlan the tap carries only that VLAN,
      untagged towards the guest; the bridge must filter VLANs (ip link set BR type bridge vlan_filtering 1)
      and its uplink carry the VLAN. --subnet: the IPv4 network guests' addresses on it come from.
  ferry network list       every network, and on each host the bridge it maps to and whether it is usable
  ferry network delete NAME    refused while a VM has a NIC on it
VMs join networks with 'ferry vm create NAME --net NETWORK[,ip=ADDR]'. Every command takes --json.`;

interface HostNetworks {
  host: string;
  networks?: Array<{ network: string; bridge: string; problem: string | null }>;
  error?: string;
}

export const networkCommand: Command = {
  summary: 'named guest networks (bridge, VLAN) for VMs NICs',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: { bridge: { type: 'string' }, vlan: { type: 'string' }, subnet: { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } },
    });
    const [verb, name] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    if (!verb) throw new UsageError(USAGE);
    const cli = await Cli.load(values.context);
    switch (verb) {
      case 'add': {
        if (!name) throw new UsageError('ferry network add NAME --bridge BR [--vlan N] [--subnet CIDR]');
        if (!values.bridge) throw new UsageError('--bridge BR is required: the bridge NICs on this network join on each host');
        if (values.vlan !== undefined && !/^\d+$/.test(values.vlan)) throw new UsageError(`--vlan ${values.vlan}: a VLAN id from 1 to 4094`);
        const { network } = await (await cli.anyAgent()).call<{ network: NetworkRecord }>('POST', '/v1/networks', {
          name,
          bridge: values.bridge,
          ...(values.vlan !== undefined ? { vlan: Number(values.vlan) } : {}),
          ...(values.subnet ? { subnet: values.subnet } : {}),
        });
        const status = await statusPerHost(cli);
        const problems = status.flatMap((h) => (h.networks ?? []).filter((n) => n.network === name && n.problem).map((n) => `  warning: ${h.host}: ${n.problem}`));
        return out([`network ${network.name} added (bridge ${network.bridge}${network.vlan !== undefined ? `, VLAN ${network.vlan}` : ''}${network.subnet ? `, subnet ${network.subnet}` : ''})`, ...problems].join('\n'), { network, hosts: status });
      }
      case 'list': {
        const { networks } = await (await cli.anyAgent()).call<{ networks: NetworkRecord[] }>('GET', '/v1/cluster/networks');
        const status = await statusPerHost(cli);
        const rows = networks.flatMap((n) =>
          status.map((h) => {
            const line = h.networks?.find((l) => l.network === n.name);
            return [n.name, n.vlan !== undefined ? String(n.vlan) : '-', n.subnet ?? '-', h.host, line?.bridge ?? '-', h.error ? `unreachable: ${h.error}` : line?.problem ? `unusable: ${line.problem}` : 'ok'];
          }),
        );
        return out(networks.length ? table(['network', 'vlan', 'subnet', 'host', 'bridge', 'status'], rows) : "no networks; add one with 'ferry network add'", { networks, hosts: status });
      }
      case 'delete': {
        if (!name) throw new UsageError('ferry network delete NAME');
        await (await cli.anyAgent()).call('DELETE', `/v1/networks/${encodeURIComponent(name)}`);
        return out(`network ${name} deleted`, { deleted: name });
      }
      default:
        throw new UsageError(`unknown verb '${verb}'\n${USAGE}`);
    }
  },
};

async function statusPerHost(cli: Cli): Promise<HostNetworks[]> {
  return Promise.all(
    cli.context.agents.map(async ({ name }) => {
      try {
        const { networks } = await cli.agent(name).call<{ networks: HostNetworks['networks'] }>('GET', '/v1/networks/status', undefined, 10_000);
        return { host: name, networks };
      } catch (err) {
        if (!(err instanceof AgentUnreachableError)) throw err;
        return { host: name, error: err.message };
      }
    }),
  );
}
