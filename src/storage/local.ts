/**
 * `local`: each host keeps its own images in its own directory. A live
 * migration makes an empty volume on the destination and the source mirrors
 * the disk into it (migration/ drives the block job); on rollback the
 * half-copy goes, after success the source's stale copy goes.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { NoSpaceError, StorageError, VolumeExistsError } from './errors.ts';
import { DirectoryDriver } from './directory.ts';
import type { IncomingDisk, PoolStatus, VolumeSpec } from './types.ts';

/** Names the host a local pool directory belongs to: a directory that is in fact shared is caught before it costs data. */
const OWNER_MARKER = '.ferry-local-pool-host';

export class SharedLocalPoolError extends StorageError {
  override name = 'SharedLocalPoolError';
  constructor(pool: string, dir: string, host: string, other: string) {
    super(
      `storage pool '${pool}' is of type local, but its directory ${dir} on host '${host}' also belongs to host '${other}' ` +
        `(marker ${OWNER_MARKER}); a local pool needs a directory per host: put '%h' in its path, or declare the directory as shared-dir`,
    );
  }
}

/** Room kept free beyond the copied bytes: qcow2 metadata and the guest's writes during the copy. */
const COPY_HEADROOM = 64 * 1024 * 1024;

export class LocalDirDriver extends DirectoryDriver {
  readonly shared = false;

  override async status(): Promise<PoolStatus> {
    const status = await super.status();
    const marker = path.join(this.config.path, OWNER_MARKER);
    const owner = (await readFile(marker, 'utf8').catch(() => '')).trim();
    if (!owner) await writeFile(marker, `${this.host}\n`);
    else if (owner !== this.host) throw new SharedLocalPoolError(this.config.name, this.config.path, this.host, owner);
    return status;
  }

  /** Deleting from a directory another host also uses could delete that host's only copy: checked first. */
  override async delete(volume: VolumeSpec): Promise<void> {
    await this.status();
    await super.delete(volume);
  }

  async prepareIncoming(volume: VolumeSpec, allocatedBytes: number): Promise<IncomingDisk> {
    const freeBytes = (await this.status()).freeBytes ?? 0;
    if (await this.exists(volume))
      throw new VolumeExistsError(this.config.name, volume.name, `${this.fileOf(volume)} on host '${this.host}', left from an interrupted migration?`);
    const needed = this.roomForCopy(allocatedBytes);
    if (freeBytes < needed)
      throw new NoSpaceError(this.config.name, this.host, needed, freeBytes, `a copy of volume '${volume.name}' (${allocatedBytes} bytes in use at the source, plus ${COPY_HEADROOM / 2 ** 20} MiB headroom)`);
    await this.createExclusive(volume);
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
