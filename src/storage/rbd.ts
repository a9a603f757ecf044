/**
 * `rbd`: Ceph RBD images, opened by QEMU through librbd (`driver: rbd`), with
 * cephx through the client's ceph.conf and keyring on every host. Every host
 * sees the same images: a migration moves only RAM. Images are raw: Ceph
 * thin-provisions them itself. Management goes through the `rbd` command.
 */
import { CommandFailedError, run } from '../util/exec.ts';
import { PoolUnreachableError, StorageError, VolumeExistsError, VolumeNotFoundError } from './errors.ts';
import type { FencedHost, IncomingDisk, PoolStatus, RbdPoolConfig, StorageDriver, VolumeSpec, VolumeUsage } from './types.ts';

export class RbdDriver implements StorageDriver {
  readonly shared = true;

  constructor(
    readonly config: RbdPoolConfig,
    private readonly host: string,
  ) {}

  private image(volume: VolumeSpec): string {
    return `${this.config.pool}/${volume.name}`;
  }

  private rbd(args: string[], timeoutMs = 30_000): Promise<string> {
    return run('rbd', ['-c', this.config.conf, '--id', this.config.user, ...args], { timeoutMs });
  }

  private unreachable(err: unknown): PoolUnreachableError {
    const detail = err instanceof CommandFailedError ? err.stderr.trim().split('\n').slice(-2).join(' ') : (err as Error).message;
    return new PoolUnreachableError(this.config.name, this.host, `ceph pool '${this.config.pool}' via ${this.config.conf} (id ${this.config.user}): ${detail}`);
  }

  async status(): Promise<PoolStatus> {
    try {
      await this.rbd(['ls', this.config.pool, '--format', 'json'], 20_000);
    } catch (err) {
      throw this.unreachable(err);
    }
    // Free space comes from the manager (`ceph df`); a cluster without one does not say.
    try {
      const df = JSON.parse(await run('ceph', ['-c', this.config.conf, '--id', this.config.user, '--connect-timeout', '5', 'df', '--format', 'json'], { timeoutMs: 10_000 })) as {
        pools?: { name: string; stats: { max_avail: number } }[];
        stats?: { total_bytes: number };
      };
      const pool = df.pools?.find((p) => p.name === this.config.pool);
      if (pool && df.stats?.total_bytes) return { freeBytes: pool.stats.max_avail, totalBytes: df.stats.total_bytes };
    } catch {
      /* no figures */
    }
    return {};
  }

  async exists(volume: VolumeSpec): Promise<boolean> {
    try {
      await this.rbd(['info', this.image(volume)]);
      return true;
    } catch (err) {
      if (err instanceof CommandFailedError && /\(2\) No such file or directory/.test(err.stderr)) return false;
      throw this.unreachable(err);
    }
  }

  async usage(volume: VolumeSpec): Promise<VolumeUsage> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `ceph pool ${this.config.pool}`);
    const du = JSON.parse(await this.rbd(['du', '--format', 'json', this.image(volume)])) as { images: { used_size: number }[] };
    return { allocatedBytes: du.images[0]?.used_size ?? 0 };
  }

  async create(volume: VolumeSpec): Promise<void> {
    if (volume.format !== 'raw') throw new StorageError(`RBD volumes are raw images (Ceph thin-provisions and snapshots them itself); create '${volume.name}' with format raw`);
    await this.status();
    try {
      await this.rbd(['create', '--size', `${Math.ceil(volume.sizeBytes / 2 ** 20)}M`, this.image(volume)]);
    } catch (err) {
      if (err instanceof CommandFailedError && /exists/i.test(err.stderr)) throw new VolumeExistsError(this.config.name, volume.name, `ceph pool ${this.config.pool}`);
      throw this.unreachable(err);
    }
  }

  async delete(volume: VolumeSpec): Promise<void> {
    if (!(await this.exists(volume))) return;
    await this.rbd(['rm', '--no-progress', this.image(volume)], 120_000);
  }

  blockdev(volume: VolumeSpec): Record<string, unknown> {
    return { driver: 'raw', file: { driver: 'rbd', pool: this.config.pool, image: volume.name, conf: this.config.conf, user: this.config.user } };
  }

  roomForCopy(): number {
    return 0;
  }

  async prepareIncoming(volume: VolumeSpec): Promise<IncomingDisk> {
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `ceph pool ${this.config.pool}`);
    return 'shared';
  }

  async abortIncoming(): Promise<void> {
    // The source's image: nothing to undo.
  }

  async releaseAfterMigration(): Promise<void> {
    // Same image, new owner.
  }

  /** Every client from the lost host's address is refused by the OSDs (EBLOCKLISTED): a QEMU it still runs writes nothing more. */
  async fence(host: FencedHost): Promise<string> {
    await this.blocklist(['add', host.address, String(BLOCKLIST_SECONDS)]);
    return `Ceph: the RBD clients of ${host.name} (${host.address}) are blocklisted (ceph osd blocklist add ${host.address})`;
  }

  async unfence(host: FencedHost): Promise<string> {
    await this.blocklist(['rm', host.address]);
    return `Ceph: ${host.name} (${host.address}) is off the blocklist`;
  }

  private async blocklist(args: string[]): Promise<void> {
    try {
      await run('ceph', ['-c', this.config.conf, '--id', this.config.user, '--connect-timeout', '10', 'osd', 'blocklist', ...args], { timeoutMs: 20_000 });
    } catch (err) {
      if (err instanceof CommandFailedError && /EACCES|access denied|permission denied/i.test(err.stderr))
        throw new StorageError(
          `ceph user '${this.config.user}' may not change the OSD blocklist (ceph osd blocklist ${args.join(' ')}): storage fencing needs the mon cap ` +
            `'allow command "osd blocklist"' (ceph auth caps client.${this.config.user} mon 'profile rbd, allow command "osd blocklist"' osd 'profile rbd')`,
        );
      throw this.unreachable(err);
    }
  }
}

/** How long a blocklist entry lasts if its host never comes back to lift it (Ceph's default is an hour). */
const BLOCKLIST_SECONDS = 30 * 86_400;
