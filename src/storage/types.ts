/**
 * The storage driver interface: every backend (a shared directory, a host's own
 * directory, later NFS, iSCSI, RBD, replicated volumes) answers the same few
 * questions for the rest of ferry: make and remove volumes, how QEMU opens one,
 * and what a live migration has to do with it.
 */
import type { DiskSpec, VolumeFormat } from '../qemu/spec.ts';

export type StorageType = 'shared-dir' | 'local' | 'nfs' | 'iscsi' | 'rbd' | 'replicated';
export const STORAGE_TYPES: readonly StorageType[] = ['shared-dir', 'local', 'nfs', 'iscsi', 'rbd', 'replicated'];

/** Images in a directory: every host mounts the same one (shared-dir), or each has its own (local). */
export interface DirectoryPoolConfig {
  name: string;
  type: 'shared-dir' | 'local';
  /** The directory; '%h' stands for the host's name. */
  path: string;
}

/** Images on an NFS export, opened by QEMU's own NFS client (libnfs): no mount on the hosts. */
export interface NfsPoolConfig {
  name: string;
  type: 'nfs';
  server: string;
  /** The exported directory on the server, as NFSv3 MOUNT knows it. */
  export: string;
}

/** LUNs of one iSCSI target, opened by QEMU's own initiator (libiscsi): one LUN per volume. */
export interface IscsiPoolConfig {
  name: string;
  type: 'iscsi';
  /** host:port of the target's portal. */
  portal: string;
  /** The target's IQN. */
  target: string;
  /**
   * Storage fencing, where the target lets a host's initiator be withdrawn (iSCSI itself cannot):
   * an executable (absolute path, then its own arguments) run on the recovering host as
   * `COMMAND... fence|unfence ADDRESS HOST`. Without it the pool is fenced by the leases and the watchdogs alone.
   */
  fenceCommand?: string[];
}

/** RBD images of a Ceph pool, opened by QEMU through librbd; cephx through the client's ceph.conf and keyring. */
export interface RbdPoolConfig {
  name: string;
  type: 'rbd';
  /** The Ceph pool. */
  pool: string;
  /** ceph.conf on every host (monitors, and the keyring of `user`). */
  conf: string;
  /** The cephx client id (`admin` for client.admin). */
  user: string;
}

/**
 * Two-host replicated volumes (DRBD's protocol C in userspace): each of two hosts keeps a replica
 * in its own directory; the host running the VM writes to both before a write completes.
 */
export interface ReplicatedPoolConfig {
  name: string;
  type: 'replicated';
  /** Each host's directory for its replicas; '%h' stands for the host's name. */
  path: string;
}

/** A storage pool as the cluster configures it (`ferry storage add`). */
export type StoragePoolConfig = DirectoryPoolConfig | NfsPoolConfig | IscsiPoolConfig | RbdPoolConfig | ReplicatedPoolConfig;

/** The image format a new volume gets when none is asked for: qcow2 for files, raw for RBD images and LUNs. */
export function defaultFormat(config: StoragePoolConfig): VolumeFormat {
  // A LUN or an RBD image is a fixed-size disk: raw fills it exactly, qcow2's metadata could overflow it.
  return config.type === 'rbd' || config.type === 'iscsi' ? 'raw' : 'qcow2';
}

/** What a pool stores its volumes in: two pools over the same backend would hand out the same places. */
export function backendOf(config: StoragePoolConfig): string {
  switch (config.type) {
    case 'shared-dir':
    case 'local':
    case 'replicated':
      return `dir:${config.path}`;
    case 'nfs':
      return `nfs:${config.server}:${config.export}`;
    case 'iscsi':
      return `iscsi:${config.portal}/${config.target}`;
    case 'rbd':
      return `rbd:${config.conf}:${config.pool}`;
  }
}

/** Where a pool's images are, for people: a directory or an nfs:// URL. */
export function poolLocation(config: StoragePoolConfig, host?: string): string {
  if (config.type === 'nfs') return `nfs://${config.server}${config.export}`;
  if (config.type === 'iscsi') return `iscsi://${config.portal}/${config.target}`;
  if (config.type === 'rbd') return `rbd:${config.pool} (${config.conf}, id ${config.user})`;
  return host ? config.path.replaceAll('%h', host) : config.path;
}

/** A host's NBD export of its replica of a volume, for the host that runs the VM. */
export interface ReplicaEndpoint {
  host: string;
  address: string;
  port: number;
  /** The NBD export name. */
  export: string;
}

/** A volume as drivers see it: which pool, which name, how big, which format. */
export interface VolumeSpec {
  pool: string;
  name: string;
  format: VolumeFormat;
  sizeBytes: number;
  /** Where the driver put it, for drivers that choose (an iSCSI LUN number). */
  location?: string;
  /** Replicated pools: the two hosts that keep a replica. */
  replicas?: string[];
}

export function volumeOf(disk: DiskSpec): VolumeSpec {
  return {
    pool: disk.pool,
    name: disk.volume,
    format: disk.format,
    sizeBytes: disk.sizeBytes,
    ...(disk.location ? { location: disk.location } : {}),
    ...(disk.replicas ? { replicas: disk.replicas } : {}),
  };
}

/** A reachable pool's space; a backend that cannot say (Ceph without a manager) leaves the figures out. */
export interface PoolStatus {
  freeBytes?: number;
  totalBytes?: number;
}

export interface VolumeUsage {
  /** Bytes the image occupies on its storage (what a copy has to move, at most). */
  allocatedBytes: number;
}

/**
 * What a migration destination does with a disk:
 * - `shared`: the destination opens the very same bytes; only RAM moves.
 * - `copy`: the destination made an empty volume; the source mirrors the disk into it over NBD.
 * - `replica`: the destination keeps the volume's other replica, in sync; only RAM moves, and the
 *   replication changes direction at switchover.
 */
export type IncomingDisk = 'shared' | 'copy' | 'replica';

export interface StorageDriver {
  readonly config: StoragePoolConfig;
  /** Whether every host sees the same bytes under the same name. */
  readonly shared: boolean;
  /** Whether the pool is usable from this host; throws PoolUnreachableError naming host and pool. */
  status(): Promise<PoolStatus>;
  exists(volume: VolumeSpec): Promise<boolean>;
  usage(volume: VolumeSpec): Promise<VolumeUsage>;
  /**
   * For pools whose volumes live at places the driver picks (iSCSI LUNs): a free place for a
   * new volume, given the places other volumes hold. The caller records it in the volume.
   */
  allocate?(volume: VolumeSpec, taken: string[]): Promise<string>;
  /** Creates an empty volume; refuses an existing one and a pool without room. */
  create(volume: VolumeSpec): Promise<void>;
  /**
   * Pools where every host opens a backing file by the same name (shared-dir): a new qcow2 volume
   * over `backing`, which it then needs for as long as it exists.
   */
  createOverlay?(volume: VolumeSpec, backing: VolumeSpec): Promise<void>;
  /** Removes a volume (callers check that no VM uses it). */
  delete(volume: VolumeSpec): Promise<void>;
  /** The -blockdev options of the volume's format node (the node name is added by the caller). */
  blockdev(volume: VolumeSpec): Record<string, unknown>;
  /**
   * Migration destination, in prepare: make the volume available to the incoming QEMU.
   * `allocatedBytes` is what the source holds, for the room check of a copy.
   */
  prepareIncoming(volume: VolumeSpec, allocatedBytes: number): Promise<IncomingDisk>;
  /** Bytes of free space a copy of a volume with `allocatedBytes` in use needs in this pool (0 for shared pools). */
  roomForCopy(allocatedBytes: number): number;
  /** Migration destination, on rollback: remove what prepareIncoming made. The source's volume is never touched. */
  abortIncoming(volume: VolumeSpec, how: IncomingDisk): Promise<void>;
  /** Migration source, after the destination took over: drop this host's now stale copy (nothing for shared storage). */
  releaseAfterMigration(volume: VolumeSpec): Promise<void>;
  /**
   * Storage fencing, for pools whose backend can cut a host off (Ceph's blocklist, an iSCSI target
   * that withdraws an initiator): before a lost host's VM starts elsewhere, nothing that host still
   * runs can write to the pool. Returns what was done, for the job log.
   */
  fence?(host: FencedHost): Promise<string>;
  /** Lets a fenced host back in (once it runs nothing it does not own). */
  unfence?(host: FencedHost): Promise<string>;
}

/** A host cut off a pool's backend: by the address its clients reach the backend from. */
export interface FencedHost {
  name: string;
  address: string;
}
