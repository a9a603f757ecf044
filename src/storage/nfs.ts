/**
 * `nfs`: images on an NFS export that QEMU opens through its own NFS client
 * (libnfs, `driver: nfs`), so hosts need no kernel NFS mount. Every host sees
 * the same files: a migration moves only RAM. The nfs protocol driver takes
 * no file locks, so the ownership swap (and the agents' leases) are the only
 * guard against two writers. Management (room, exists, create, delete) goes
 * through tools/ferry-nfs, a small libnfs program.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../qemu/guest-image.ts';
import { CommandFailedError, run } from '../util/exec.ts';
import { PoolUnreachableError, StorageError, VolumeExistsError, VolumeNotFoundError } from './errors.ts';
import { createImage, imageInfo } from './qemu-img.ts';
import type { IncomingDisk, NfsPoolConfig, PoolStatus, StorageDriver, VolumeSpec, VolumeUsage } from './types.ts';

const TOOL = path.join(PROJECT_ROOT, 'tools', 'out', 'ferry-nfs');

export class NfsDriver implements StorageDriver {
  readonly shared = true;

  constructor(
    readonly config: NfsPoolConfig,
    private readonly host: string,
  ) {}

  private fileName(volume: VolumeSpec): string {
    return `${volume.name}.${volume.format}`;
  }

  /** The URL qemu-img takes. */
  urlOf(volume: VolumeSpec): string {
    return `nfs://${this.config.server}${this.config.export}/${this.fileName(volume)}`;
  }

  private async tool(args: string[]): Promise<{ code: number; out: string }> {
    if (!existsSync(TOOL)) throw new StorageError(`the NFS helper ${TOOL} is missing; build it with 'bash scripts/setup.sh' (it needs the Debian package libnfs-dev)`);
    try {
      return { code: 0, out: await run(TOOL, [args[0]!, this.config.server, this.config.export, ...args.slice(1)], { timeoutMs: 30_000 }) };
    } catch (err) {
      if (err instanceof CommandFailedError && (err.exitCode === 3 || err.exitCode === 4)) return { code: err.exitCode, out: '' };
      if (err instanceof CommandFailedError) throw new PoolUnreachableError(this.config.name, this.host, `nfs://${this.config.server}${this.config.export}: ${err.stderr.trim()}`);
      throw err;
    }
  }

  async status(): Promise<PoolStatus> {
    const { out } = await this.tool(['statvfs']);
    const m = /free=(\d+) total=(\d+)/.exec(out);
    if (!m) throw new PoolUnreachableError(this.config.name, this.host, `unexpected answer from the NFS helper: ${out.trim()}`);
    return { freeBytes: Number(m[1]), totalBytes: Number(m[2]) };
  }

  async exists(volume: VolumeSpec): Promise<boolean> {
    return (await this.tool(['exists', this.fileName(volume)])).code === 0;
  }

  async usage(volume: VolumeSpec): Promise<VolumeUsage> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `nfs://${this.config.server}${this.config.export}`);
    return { allocatedBytes: (await imageInfo(this.urlOf(volume))).actualSize };
  }

  async create(volume: VolumeSpec): Promise<void> {
    await this.status();
    // Claim the name first: qemu-img would overwrite an existing image.
    if ((await this.tool(['create', this.fileName(volume)])).code === 4) throw new VolumeExistsError(this.config.name, volume.name, this.urlOf(volume));
    try {
      await createImage(this.urlOf(volume), volume.format, volume.sizeBytes);
    } catch (err) {
      await this.tool(['unlink', this.fileName(volume)]).catch(() => undefined);
      throw err;
    }
  }

  async delete(volume: VolumeSpec): Promise<void> {
    await this.tool(['unlink', this.fileName(volume)]);
  }

  blockdev(volume: VolumeSpec): Record<string, unknown> {
    return {
      driver: volume.format,
      file: { driver: 'nfs', server: { type: 'inet', host: this.config.server }, path: `${this.config.export}/${this.fileName(volume)}` },
    };
  }

  roomForCopy(): number {
    return 0;
  }

  async prepareIncoming(volume: VolumeSpec): Promise<IncomingDisk> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, this.urlOf(volume));
    return 'shared';
  }

  async abortIncoming(): Promise<void> {
    // The source's bytes: nothing to undo.
  }

  async releaseAfterMigration(): Promise<void> {
    // Same bytes, new owner.
  }
}
