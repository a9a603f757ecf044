/**
 * One host's guest network inside a network namespace of ferry's: a bridge
 * with an address, onto which guests' taps are attached. Nothing outside the
 * namespace is touched, and deleting the namespace removes all of it.
 */
import { createBridge, createNetns, deleteNetns } from '../net/netns.ts';
import { BridgeTapAttacher } from '../net/tap.ts';

export class HostNetwork {
  readonly bridge = 'br0';
  readonly attacher: BridgeTapAttacher;

  private constructor(
    readonly netns: string,
    /** The first three octets of the /24 the guests live in, e.g. "10.77.0". */
    readonly subnet: string,
  ) {
    this.attacher = new BridgeTapAttacher(netns);
  }

  static async create(netns: string, subnet = '10.77.0'): Promise<HostNetwork> {
    const net = new HostNetwork(netns, subnet);
    await createNetns(netns);
    await createBridge(netns, net.bridge, `${subnet}.1/24`);
    return net;
  }

  /** The address (without prefix) of guest number n (n ≥ 10 by convention). */
  guestIp(n: number): string {
    return `${this.subnet}.${n}`;
  }

  async destroy(): Promise<void> {
    await deleteNetns(this.netns);
  }
}
