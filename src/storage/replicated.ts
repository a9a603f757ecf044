/**
 * `replicated`: a volume lives on two hosts, one image file each (the
 * directory is per host, like `local`). The host that runs the VM writes every
 * block to both before the write completes (storage/replication.ts: an active
 * mirror into the peer's NBD export, storage/replica-export.ts). A live
 * migration between the two replica hosts moves only RAM; to any other host
 * it is refused.
 */
import { StorageError, VolumeNotFoundError } from './errors.ts';
import { DirectoryDriver } from './directory.ts';
import type { DiskSpec, VmSpec } from '../qemu/spec.ts';
import type { IncomingDisk, ReplicatedPoolConfig, VolumeSpec } from './types.ts';

export class NotAReplicaHostError extends StorageError {
  override name = 'NotAReplicaHostError';
  constructor(volume: VolumeSpec, host: string) {
    super(
      `volume '${volume.name}' of pool '${volume.pool}' is replicated on ${replicaHostsOf(volume).map((h) => `'${h}'`).join(' and ')}, not on '${host}'; ` +
        'a VM with that disk runs on (and migrates between) those two hosts only',
    );
  }
}

/** The disks of a VM on replicated pools (their two replica hosts recorded). */
export function replicatedDisks(spec: VmSpec): (DiskSpec & { replicas: string[] })[] {
  return (spec.disks ?? []).filter((d): d is DiskSpec & { replicas: string[] } => Array.isArray(d.replicas) && d.replicas.length === 2);
}

/** The two hosts that keep a replica of a volume. */
export function replicaHostsOf(volume: { replicas?: string[]; name: string }): string[] {
  if (!volume.replicas || volume.replicas.length !== 2) throw new StorageError(`volume '${volume.name}' has no replica hosts recorded; it cannot be opened`);
  return volume.replicas;
}

/** The replica host that is not `host`. */
export function peerOf(volume: { replicas?: string[]; name: string }, host: string): string {
  const hosts = replicaHostsOf(volume);
  const peer = hosts.find((h) => h !== host);
  if (!hosts.includes(host) || !peer) throw new StorageError(`host '${host}' keeps no replica of volume '${volume.name}' (replicas: ${hosts.join(', ')})`);
  return peer;
}

export class ReplicatedDriver extends DirectoryDriver {
  readonly shared = false;

  declare readonly config: ReplicatedPoolConfig;

  isReplicaHost(volume: VolumeSpec): boolean {
    return replicaHostsOf(volume).includes(this.host);
  }

  /** begin, on the destination: this host must keep the volume's other replica. */
  async prepareIncomingCheck(volume: VolumeSpec): Promise<void> {
    if (!this.isReplicaHost(volume)) throw new NotAReplicaHostError(volume, this.host);
    if (!(await this.exists(volume))) throw new VolumeNotFoundError(this.config.name, volume.name, `${this.where()} (its replica is missing here)`);
  }

  /** The destination keeps the other replica: nothing to copy, the replication changes direction at switchover. */
  async prepareIncoming(volume: VolumeSpec): Promise<IncomingDisk> {
    await this.prepareIncomingCheck(volume);
    return 'replica';
  }

  roomForCopy(): number {
    return 0;
  }

  async abortIncoming(): Promise<void> {
    // The replica was there before the migration and stays: it is the VM's second copy.
  }

  async releaseAfterMigration(): Promise<void> {
    // This host's replica stays; it becomes the peer the new primary writes to.
  }
}
