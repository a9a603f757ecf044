/**
 * Named guest networks (`ferry network add NAME --bridge BR [--vlan N]`). The store holds one record
 * per network; each host maps the name to a bridge (its node.json may name its own) when it attaches
 * a NIC, so a VM's spec says "network back" and means the right bridge on whichever host runs it.
 * A host that cannot place a NIC (no such bridge, a VLAN on a bridge that does not filter VLANs)
 * refuses the VM in begin, before anything moves.
 */
import type { NetworkRecord } from '../cluster/model.ts';
import { NetworkUnavailableError, placementProblem, type TapPlacement } from '../net/tap.ts';
import type { NicSpec, VmSpec } from '../qemu/spec.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import { parseCidr } from '../util/net.ts';

export { inSubnet, parseCidr } from '../util/net.ts';
import type { AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { fields, NETWORK, NO_INPUT, NOTHING, pathOnly, text, whole } from './request-schema.ts';

const BRIDGE = /^[A-Za-z0-9_.-]{1,15}$/;

const NETWORK_BODY = fields(
  {
    name: NETWORK,
    bridge: { type: 'string', pattern: BRIDGE.source, description: 'a network interface name (1–15 of A-Z a-z 0-9 _ . -)' },
    vlan: whole(1, 4094, 'a VLAN id from 1 to 4094'),
    // parseCidr judges it (and says what it must be).
    subnet: text(64),
  },
  ['name', 'bridge'],
);

export function networkRoutes(ctx: AgentContext): Route[] {
  const { state } = ctx;
  return [
    { method: 'GET', pattern: '/v1/cluster/networks', who: 'admin', input: NO_INPUT, handler: async () => ({ networks: await state.networks() }) },
    {
      method: 'POST',
      pattern: '/v1/networks',
      who: 'admin',
      input: { params: NOTHING, body: NETWORK_BODY },
      handler: async (_, body, caller) => {
        const network = parseNetwork(body, caller.name);
        if (!(await state.addNetwork(network))) throw new RefusedError(`a network named '${network.name}' already exists; see 'ferry network list'`);
        ctx.log(`network ${network.name} added (bridge ${network.bridge}${network.vlan !== undefined ? `, VLAN ${network.vlan}` : ''})`);
        return { network, here: await placementProblem(ctx.node.netns, placementOn(ctx, network)) ?? 'ok' };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/networks/:name',
      who: 'admin',
      input: pathOnly({ name: NETWORK }),
      handler: async ({ name }) => {
        if (!(await state.network(name!))) throw new NotFoundError(`no network named '${name}'; see 'ferry network list'`);
        const users = (await state.vms()).filter((vm) => vm.spec.nics.some((n) => n.backend.kind === 'network' && n.backend.network === name));
        if (users.length) throw new RefusedError(`network '${name}' is used by ${users.map((v) => v.spec.name).join(', ')}; destroy those VMs first`);
        await state.deleteNetwork(name!);
        return { deleted: name };
      },
    },
    {
      // Whether this host can place each named network's NICs (for `ferry network list`).
      method: 'GET',
      pattern: '/v1/networks/status',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => ({
        host: ctx.node.name,
        networks: await Promise.all(
          (await state.networks()).map(async (n) => {
            const place = placementOn(ctx, n);
            return { network: n.name, bridge: place.bridge, problem: (await placementProblem(ctx.node.netns, place)) ?? null };
          }),
        ),
      }),
    },
  ];
}

/** Where a NIC's tap goes on this host. */
export async function resolvePlacement(ctx: AgentContext, nic: NicSpec): Promise<TapPlacement> {
  if (nic.backend.kind === 'bridge') return { bridge: nic.backend.bridge };
  if (nic.backend.kind !== 'network') throw new NetworkUnavailableError(`${nic.backend.kind} NICs are not attached to a bridge`);
  const network = await ctx.state.network(nic.backend.network);
  if (!network) throw new NetworkUnavailableError(`network '${nic.backend.network}' is not in the store (deleted?); see 'ferry network list'`);
  return placementOn(ctx, network);
}

/** What this host lacks to attach the VM's NICs (empty: it can), each naming the NIC and what to do. */
export async function networkProblems(ctx: AgentContext, spec: VmSpec): Promise<string[]> {
  const problems: string[] = [];
  for (const nic of spec.nics) {
    if (nic.backend.kind === 'user') continue;
    try {
      const problem = await placementProblem(ctx.node.netns, await resolvePlacement(ctx, nic));
      if (problem) problems.push(`NIC ${nic.mac}${nic.backend.kind === 'network' ? ` (network ${nic.backend.network})` : ''} on ${ctx.node.name}: ${problem}`);
    } catch (err) {
      problems.push(`NIC ${nic.mac} on ${ctx.node.name}: ${(err as Error).message}`);
    }
  }
  return problems;
}

function placementOn(ctx: AgentContext, network: NetworkRecord): TapPlacement {
  return { bridge: ctx.node.networks?.[network.name] ?? network.bridge, ...(network.vlan !== undefined ? { vlan: network.vlan } : {}) };
}

export function parseNetwork(body: Record<string, unknown>, by: string): NetworkRecord {
  const name = String(body['name'] ?? '');
  if (!NAME_PATTERN.test(name)) throw new RefusedError(`'${name}' is not a network name: names ${NAME_RULE}`);
  const bridge = String(body['bridge'] ?? '');
  if (!BRIDGE.test(bridge)) throw new RefusedError(`--bridge '${bridge}' is not a network interface name (1–15 of A-Z a-z 0-9 _ . -)`);
  const vlan = body['vlan'] === undefined ? undefined : Number(body['vlan']);
  if (vlan !== undefined && (!Number.isInteger(vlan) || vlan < 1 || vlan > 4094)) throw new RefusedError(`--vlan ${String(body['vlan'])} must be a VLAN id from 1 to 4094`);
  const subnet = body['subnet'] === undefined ? undefined : String(body['subnet']);
  if (subnet !== undefined && !parseCidr(subnet)) throw new RefusedError(`--subnet '${subnet}' is not an IPv4 network like 10.78.20.0/24`);
  return { name, bridge, ...(vlan !== undefined ? { vlan } : {}), ...(subnet !== undefined ? { subnet } : {}), createdAt: new Date().toISOString(), createdBy: by };
}
