/** Tap devices for guest NICs, attached to a bridge (and VLAN) on the host. */
import { randomBytes } from 'node:crypto';
import type { NetworkAttacher } from '../qemu/instance.ts';
import type { NicSpec } from '../qemu/spec.ts';
import { ip, linkExists } from './netns.ts';
import { run } from '../util/exec.ts';

/** Where a NIC's tap goes on this host. */
export interface TapPlacement {
  bridge: string;
  /** The tap is an untagged member of this VLAN only (the bridge must filter VLANs). */
  vlan?: number;
}

/** A NIC's spec to its place on this host: a bridge NIC names it; a named network is looked up. */
export type PlacementResolver = (nic: NicSpec) => Promise<TapPlacement>;

/** A NIC that cannot be attached on this host, with what to do. */
export class NetworkUnavailableError extends Error {
  override name = 'NetworkUnavailableError';
}

export class BridgeTapAttacher implements NetworkAttacher {
  constructor(
    readonly netns: string | undefined,
    private readonly resolve: PlacementResolver = bridgeOnly,
  ) {}

  async attach(nic: NicSpec): Promise<string> {
    const place = await this.resolve(nic);
    const problem = await placementProblem(this.netns, place);
    if (problem) throw new NetworkUnavailableError(problem);
    const tap = `ft${randomBytes(5).toString('hex')}`; // unique per QEMU process: source and destination may share a host
    await ip(this.netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap');
    try {
      // The host side of the tap starts with fe: (as libvirt's do): higher than any NIC's address, so
      // a bridge that follows its lowest port's address never takes the tap's, and never changes
      // its own when a guest comes or goes.
      await ip(this.netns, 'link', 'set', tap, 'address', `fe:${[...randomBytes(5)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`);
      await ip(this.netns, 'link', 'set', tap, 'master', place.bridge);
      if (place.vlan !== undefined) {
        // Only the network's VLAN, untagged towards the guest: the guest sees none of the bridge's other traffic.
        await bridgeVlan(this.netns, 'add', 'dev', tap, 'vid', String(place.vlan), 'pvid', 'untagged');
        if (place.vlan !== 1) await bridgeVlan(this.netns, 'del', 'dev', tap, 'vid', '1');
      }
      await ip(this.netns, 'link', 'set', tap, 'up');
    } catch (err) {
      await ip(this.netns, 'link', 'del', tap).catch(() => undefined);
      throw err;
    }
    return tap;
  }

  async detach(tap: string): Promise<void> {
    if (await linkExists(this.netns, tap)) await ip(this.netns, 'link', 'del', tap);
  }
}

/** Why a tap cannot be placed there (no such bridge, a VLAN on a bridge that does not filter VLANs), or undefined. */
export async function placementProblem(netns: string | undefined, place: TapPlacement): Promise<string | undefined> {
  const where = netns ? ` in network namespace ${netns}` : '';
  const out = await ip(netns, '-j', '-d', 'link', 'show', 'dev', place.bridge).catch(() => undefined);
  if (out === undefined) return `bridge '${place.bridge}' does not exist${where}; create it (or map the network to another bridge in this host's node.json)`;
  const link = (JSON.parse(out) as Array<{ linkinfo?: { info_kind?: string; info_data?: { vlan_filtering?: number } } }>)[0];
  if (link?.linkinfo?.info_kind !== 'bridge') return `'${place.bridge}'${where} is not a bridge`;
  if (place.vlan !== undefined && link.linkinfo.info_data?.vlan_filtering !== 1)
    return `bridge '${place.bridge}'${where} does not filter VLANs, so VLAN ${place.vlan} would not be kept apart; enable it (ip link set ${place.bridge} type bridge vlan_filtering 1) and allow VLAN ${place.vlan} on its uplink (bridge vlan add dev UPLINK vid ${place.vlan})`;
  return undefined;
}

function bridgeVlan(netns: string | undefined, ...args: string[]): Promise<string> {
  return run('bridge', [...(netns ? ['-n', netns] : []), 'vlan', ...args]);
}

async function bridgeOnly(nic: NicSpec): Promise<TapPlacement> {
  if (nic.backend.kind !== 'bridge') throw new NetworkUnavailableError(`this host attaches only bridge NICs, not ${nic.backend.kind} NICs`);
  return { bridge: nic.backend.bridge };
}
