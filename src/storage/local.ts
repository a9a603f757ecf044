/**
 * `local`: each host keeps its own images in its own directory. A live
 * migration makes an empty volume on the destination and the source mirrors
 * the disk into it (migration/ drives the block job); on rollback the
 * half-copy goes, after success the source's stale copy goes.
 */
import { NoSpaceError, VolumeExistsError } from './errors.ts';
import { DirectoryDriver } from './directory.ts';
import { createImage } from './qemu-img.ts';
import type { IncomingDisk, VolumeSpec } from './types.ts';

/** Room kept free beyond the copied bytes: qcow2 metadata and the guest's writes during the copy. */
const COPY_HEADROOM = 64 * 1024 * 1024;

export class LocalDirDriver extends DirectoryDriver {
  readonly shared = false;

  async prepareIncoming(volume: VolumeSpec, allocatedBytes: number): Promise<IncomingDisk> {
    const { freeBytes } = await this.status();
    if (await this.exists(volume))
      throw new VolumeExistsError(this.config.name, volume.name, `${this.where()}, left from an earlier migration? delete it there first`);
    const needed = this.roomForCopy(allocatedBytes);
    if (freeBytes < needed)
      throw new NoSpaceError(this.config.name, this.host, needed, freeBytes, `a copy of volume '${volume.name}' (${allocatedBytes} bytes in use at the source, plus ${COPY_HEADROOM / 2 ** 20} MiB headroom)`);
    await createImage(this.fileOf(volume), volume.format, volume.sizeBytes);
    return 'copy';
  }

  roomForCopy(allocatedBytes: number): number {
    return allocatedBytes + COPY_HEADROOM;
  }

  async abortIncoming(volume: VolumeSpec, how: IncomingDisk): Promise<void> {
    if (how === 'copy') await this.delete(volume);
  }

  async releaseAfterMigration(volume: VolumeSpec): Promise<void> {
    await this.delete(volume);
  }
}
