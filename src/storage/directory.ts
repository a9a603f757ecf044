/**
 * Volumes as image files in a directory: the common ground of `shared-dir`
 * (every host mounts the same directory), `local` (each host its own) and
 * `replicated` (each of two hosts its own replica).
 */
import { constants } from 'node:fs';
import { access, open, rm, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { NoSpaceError, PoolUnreachableError, VolumeExistsError, VolumeNotFoundError } from './errors.ts';
import { createImage, imageInfo } from './qemu-img.ts';
import type { DirectoryPoolConfig, IncomingDisk, ReplicatedPoolConfig, PoolStatus, StorageDriver, VolumeSpec, VolumeUsage } from './types.ts';

export abstract class DirectoryDriver implements StorageDriver {
  abstract readonly shared: boolean;

  constructor(
    readonly config: DirectoryPoolConfig | ReplicatedPoolConfig,
    /** This host's name, for messages. */
    protected readonly host: string,
  ) {}

  fileOf(volume: VolumeSpec): string {
    return path.join(this.config.path, `${volume.name}.${volume.format}`);
  }

  async status(): Promise<PoolStatus> {
    try {
      const info = await stat(this.config.path);
      if (!info.isDirectory()) throw new Error(`${this.config.path} is not a directory`);
      await access(this.config.path, constants.R_OK | constants.W_OK);
      const fs = await statfs(this.config.path);
      return { freeBytes: fs.bavail * fs.bsize, totalBytes: fs.blocks * fs.bsize };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new PoolUnreachableError(this.config.name, this.host, e.code === 'ENOENT' ? `${this.config.path} does not exist` : e.message);
    }
  }

  async exists(volume: VolumeSpec): Promise<boolean> {
    return stat(this.fileOf(volume)).then(
      () => true,
      () => false,
    );
  }

  async usage(volume: VolumeSpec): Promise<VolumeUsage> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, this.where());
    return { allocatedBytes: (await imageInfo(this.fileOf(volume))).actualSize };
  }

  async create(volume: VolumeSpec): Promise<void> {
    const freeBytes = (await this.status()).freeBytes ?? 0;
    if (await this.exists(volume)) throw new VolumeExistsError(this.config.name, volume.name, this.where());
    // A new image is sparse; ask for room for its metadata only, the guest's writes fill it later.
    const needed = volume.format === 'raw' ? 0 : 1024 * 1024;
    if (freeBytes < needed) throw new NoSpaceError(this.config.name, this.host, needed, freeBytes, `a new ${volume.format} image`);
    await this.createExclusive(volume);
  }

  /** Claims the file name atomically (qemu-img would overwrite an existing image), then makes the image. */
  protected async createExclusive(volume: VolumeSpec, make = (file: string) => createImage(file, volume.format, volume.sizeBytes)): Promise<void> {
    const file = this.fileOf(volume);
    try {
      await (await open(file, 'wx')).close();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new VolumeExistsError(this.config.name, volume.name, `${file} on host '${this.host}'`);
      throw err;
    }
    try {
      await make(file);
    } catch (err) {
      await rm(file, { force: true });
      throw err;
    }
  }

  async delete(volume: VolumeSpec): Promise<void> {
    await rm(this.fileOf(volume), { force: true });
  }

  blockdev(volume: VolumeSpec): Record<string, unknown> {
    return { driver: volume.format, file: { driver: 'file', filename: this.fileOf(volume) } };
  }

  abstract roomForCopy(allocatedBytes: number): number;
  abstract prepareIncoming(volume: VolumeSpec, allocatedBytes: number): Promise<IncomingDisk>;
  abstract abortIncoming(volume: VolumeSpec, how: IncomingDisk): Promise<void>;
  abstract releaseAfterMigration(volume: VolumeSpec): Promise<void>;

  protected where(): string {
    return `${this.config.path} on host '${this.host}'`;
  }
}
