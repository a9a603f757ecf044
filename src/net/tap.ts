/** Tap devices for guest NICs, attached to the bridge the NIC's spec names. */
import { randomBytes } from 'node:crypto';
import type { NetworkAttacher } from '../qemu/instance.ts';
import type { NicSpec } from '../qemu/spec.ts';
import { ip, linkExists } from './netns.ts';

export class BridgeTapAttacher implements NetworkAttacher {
  constructor(readonly netns: string | undefined) {}

  async attach(nic: NicSpec): Promise<string> {
    if (nic.backend.kind !== 'bridge') throw new Error('BridgeTapAttacher only attaches bridge NICs');
    const bridge = nic.backend.bridge;
    if (!(await linkExists(this.netns, bridge)))
      throw new Error(`bridge '${bridge}' does not exist${this.netns ? ` in network namespace ${this.netns}` : ''}; create the host network first`);
    const tap = `ft${randomBytes(5).toString('hex')}`; // unique per QEMU process: source and destination may share a host
    await ip(this.netns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap');
    // The host side of the tap starts with fe: (as libvirt's do): higher than any NIC's address, so
    // a bridge that follows its lowest port's address never takes the tap's, and never changes
    // its own when a guest comes or goes.
    await ip(this.netns, 'link', 'set', tap, 'address', `fe:${[...randomBytes(5)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`);
    await ip(this.netns, 'link', 'set', tap, 'master', bridge, 'up');
    return tap;
  }

  async detach(tap: string): Promise<void> {
    if (await linkExists(this.netns, tap)) await ip(this.netns, 'link', 'del', tap);
  }
}
