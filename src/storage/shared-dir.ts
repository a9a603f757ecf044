/**
 * `shared-dir`: images in a directory that every host mounts at the same path
 * (NFS in production, one directory in the lab). A migration moves only RAM;
 * QEMU's image locking and the ownership swap keep a single writer.
 */
import { VolumeNotFoundError } from './errors.ts';
import { DirectoryDriver } from './directory.ts';
import type { IncomingDisk, VolumeSpec } from './types.ts';
import path from 'node:path';
import { createOverlayImage } from './qemu-img.ts';

export class SharedDirDriver extends DirectoryDriver {
  readonly shared = true;

  async prepareIncoming(volume: VolumeSpec): Promise<IncomingDisk> {
    await this.status();
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `${this.where()}; is the directory really shared?`);
    return 'shared';
  }

  /** The backing file is named relative to the overlay: the same on every host, wherever the directory is mounted. */
  async createOverlay(volume: VolumeSpec, backing: VolumeSpec): Promise<void> {
    if (volume.format !== 'qcow2') throw new Error(`an overlay is a qcow2 volume, not ${volume.format}`);
    await this.status();
    await this.createExclusive(volume, (file) => createOverlayImage(file, path.basename(this.fileOf(backing)), backing.format, volume.sizeBytes));
  }

  roomForCopy(): number {
    return 0;
  }

  async abortIncoming(): Promise<void> {
    // The bytes belong to the source: nothing to undo.
  }

  async releaseAfterMigration(): Promise<void> {
    // Same bytes, new owner: nothing to release.
  }
}
