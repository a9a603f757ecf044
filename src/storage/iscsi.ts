/**
 * `iscsi`: one LUN of an iSCSI target per volume, opened by QEMU's own
 * initiator (libiscsi, `driver: iscsi`): no kernel initiator on the hosts.
 * The LUNs are the storage admin's (made on the target); ferry allocates a
 * free one to each new volume and records its number. iSCSI has no notion of
 * two writers: the ownership swap and the agents' leases are the only lock,
 * so no agent ever opens a LUN of a VM it does not own.
 */
import { run, CommandFailedError } from '../util/exec.ts';
import { NoSpaceError, PoolUnreachableError, StorageError, VolumeNotFoundError } from './errors.ts';
import { createImage, imageInfo } from './qemu-img.ts';
import type { FencedHost, IncomingDisk, IscsiPoolConfig, PoolStatus, StorageDriver, VolumeSpec, VolumeUsage } from './types.ts';

interface Lun {
  lun: number;
  sizeBytes: number;
}

export class IscsiDriver implements StorageDriver {
  readonly shared = true;

  constructor(
    readonly config: IscsiPoolConfig,
    private readonly host: string,
  ) {}

  private url(lun: string | number): string {
    return `iscsi://${this.config.portal}/${this.config.target}/${lun}`;
  }

  private lunOf(volume: VolumeSpec): string {
    if (!volume.location) throw new StorageError(`volume '${volume.name}' of iSCSI pool '${this.config.name}' has no LUN recorded; recreate it with 'ferry volume create'`);
    return volume.location;
  }

  /** The target's disk LUN numbers, as an initiator sees them (one login). */
  private async lunNumbers(): Promise<number[]> {
    let listing: string;
    try {
      listing = await run('iscsi-ls', ['-s', `iscsi://${this.config.portal}/`], { timeoutMs: 15_000 });
    } catch (err) {
      throw new PoolUnreachableError(this.config.name, this.host, `iscsi://${this.config.portal}: ${err instanceof CommandFailedError ? err.stderr.trim() : (err as Error).message}`);
    }
    const section = listing.split(/^Target:/m).find((t) => t.startsWith(this.config.target + ' '));
    if (!section) throw new PoolUnreachableError(this.config.name, this.host, `the portal ${this.config.portal} does not offer target ${this.config.target}`);
    return [...section.matchAll(/Lun:(\d+)\s+Type:DIRECT_ACCESS/g)].map((m) => Number(m[1]));
  }

  /** The disk LUNs with their exact sizes (read raw: a guest's data in a LUN says nothing about its size). */
  async luns(): Promise<Lun[]> {
    const luns: Lun[] = [];
    for (const lun of await this.lunNumbers()) luns.push({ lun, sizeBytes: (await imageInfo(this.url(lun), 'raw')).virtualSize });
    return luns;
  }

  async status(): Promise<PoolStatus> {
    const luns = await this.luns();
    // Which LUNs are free is the cluster's record (allocate), not the target's: only the total here.
    return { totalBytes: luns.reduce((sum, l) => sum + l.sizeBytes, 0) };
  }

  async allocate(volume: VolumeSpec, taken: string[]): Promise<string> {
    const luns = await this.luns();
    const free = luns.filter((l) => !taken.includes(String(l.lun)));
    // The smallest free LUN that is large enough: big LUNs stay for big volumes.
    const fit = free.filter((l) => l.sizeBytes >= volume.sizeBytes).sort((a, b) => a.sizeBytes - b.sizeBytes)[0];
    if (!fit)
      throw new NoSpaceError(
        this.config.name,
        this.host,
        volume.sizeBytes,
        Math.max(0, ...free.map((l) => l.sizeBytes)),
        `a volume on a free LUN (${free.length} of ${luns.length} LUNs free; the largest free one is shown as free space)`,
      );
    return String(fit.lun);
  }

  async exists(volume: VolumeSpec): Promise<boolean> {
    if (!volume.location) return false;
    return (await this.lunNumbers()).some((lun) => String(lun) === volume.location);
  }

  async usage(volume: VolumeSpec): Promise<VolumeUsage> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `${this.url(volume.location ?? '?')}`);
    // A LUN is provisioned in full: a copy of it would move all of it.
    return { allocatedBytes: (await imageInfo(this.url(this.lunOf(volume)), 'raw')).virtualSize };
  }

  async create(volume: VolumeSpec): Promise<void> {
    const lun = this.lunOf(volume);
    await this.wipe(lun);
    // raw: the LUN is the disk. qcow2: an image header on the LUN (its size at most the LUN's).
    if (volume.format === 'qcow2') await createImage(this.url(lun), 'qcow2', volume.sizeBytes);
  }

  /** The LUN goes back to the free ones, zeroed, so that the next volume on it starts empty. */
  async delete(volume: VolumeSpec): Promise<void> {
    if (volume.location) await this.wipe(volume.location);
  }

  private async wipe(lun: string): Promise<void> {
    const size = (await imageInfo(this.url(lun), 'raw')).virtualSize;
    await run('qemu-io', ['-f', 'raw', '-c', `write -z 0 ${size}`, this.url(lun)], { timeoutMs: 300_000 });
  }

  blockdev(volume: VolumeSpec): Record<string, unknown> {
    const [host, port] = this.config.portal.split(':');
    return {
      driver: volume.format,
      file: { driver: 'iscsi', transport: 'tcp', portal: `${host}:${port ?? '3260'}`, target: this.config.target, lun: Number(this.lunOf(volume)) },
    };
  }

  roomForCopy(): number {
    return 0;
  }

  async prepareIncoming(volume: VolumeSpec): Promise<IncomingDisk> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, this.url(volume.location ?? '?'));
    return 'shared';
  }

  async abortIncoming(): Promise<void> {
    // The source's LUN: nothing to undo.
  }

  async releaseAfterMigration(): Promise<void> {
    // Same LUN, new owner.
  }

  get fence(): ((host: FencedHost) => Promise<string>) | undefined {
    return this.config.fenceCommand ? (host) => this.runFenceCommand('fence', host) : undefined;
  }

  get unfence(): ((host: FencedHost) => Promise<string>) | undefined {
    return this.config.fenceCommand ? (host) => this.runFenceCommand('unfence', host) : undefined;
  }

  private async runFenceCommand(action: 'fence' | 'unfence', host: FencedHost): Promise<string> {
    const [command, ...args] = this.config.fenceCommand!;
    try {
      await run(command!, [...args, action, host.address, host.name], { timeoutMs: 30_000 });
    } catch (err) {
      const detail = err instanceof CommandFailedError ? err.stderr.trim() || err.message : (err as Error).message;
      throw new StorageError(`the fence command of iSCSI pool '${this.config.name}' (${command}) could not ${action} ${host.name} (${host.address}): ${detail}`);
    }
    return action === 'fence'
      ? `iSCSI: the initiator of ${host.name} (${host.address}) is withdrawn from ${this.config.target} (${command})`
      : `iSCSI: ${host.name} (${host.address}) may log in to ${this.config.target} again`;
  }
}
