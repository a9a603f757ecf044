/**
 * What the store holds and how it is read and changed. Keys:
 *   /ferry/hosts/<host>        HostRecord, bound to the host's lease (gone when the agent is)
 *   /ferry/vms/<vm>            VmRecord: spec, owner host, desired state. Its modRevision is the
 *                              VM's fencing token: ownership changes only by CAS on it.
 *   /ferry/migrations/<vm>     the in-flight migration, written before it acts (for crash recovery)
 *   /ferry/jobs/<id>           Job: every long operation, with progress and final record
 *   /ferry/guest-addresses/<ip> the VM holding a guest address (taken with the VM record, in one transaction)
 *   /ferry/storage/<pool>      StoragePoolConfig (`ferry storage add`)
 *   /ferry/volumes/<pool>/<v>  VolumeRecord: size, format, the VM it is attached to, where a local one lives
 *   /ferry/images/<name>       ImageRecord: an imported disk image or ISO, kept in a volume of a pool
 *   /ferry/networks/<name>     NetworkRecord: a named guest network (`ferry network add`)
 */
import type { HostCpu } from './cpu.ts';
import { randomUUID } from 'node:crypto';
import type { VmSpec, VolumeFormat } from '../qemu/spec.ts';
import type { ReplicaEndpoint, StoragePoolConfig } from '../storage/types.ts';
import type { MigrationProgress, MigrationRecord } from '../migration/types.ts';
import type { Store } from './store/types.ts';

export const KEYS = {
  host: (name: string) => `/ferry/hosts/${name}`,
  hosts: '/ferry/hosts/',
  vm: (name: string) => `/ferry/vms/${name}`,
  vms: '/ferry/vms/',
  migration: (vm: string) => `/ferry/migrations/${vm}`,
  migrations: '/ferry/migrations/',
  job: (id: string) => `/ferry/jobs/${id}`,
  jobs: '/ferry/jobs/',
  pool: (name: string) => `/ferry/storage/${name}`,
  pools: '/ferry/storage/',
  volume: (pool: string, name: string) => `/ferry/volumes/${pool}/${name}`,
  volumes: '/ferry/volumes/',
  image: (name: string) => `/ferry/images/${name}`,
  images: '/ferry/images/',
  network: (name: string) => `/ferry/networks/${name}`,
  networks: '/ferry/networks/',
  /** Held by the VM that has this guest address. */
  guestAddress: (ip: string) => `/ferry/guest-addresses/${ip}`,
  /** Held by the volume at a driver-chosen place (an iSCSI LUN): two volumes can never share one. */
  volumeLocation: (pool: string, location: string) => `/ferry/volume-locations/${pool}/${location}`,
  /** Set while one replica of a replicated volume lacks writes the other has (DRBD's "outdated"). */
  replicaOutdated: (pool: string, name: string) => `/ferry/replica-outdated/${pool}/${name}`,
  /** Where a host serves its replica of a replicated volume to the primary (NBD over TLS); under the host's own prefix, which only it may write. */
  replicaEndpoint: (pool: string, name: string, host: string) => `/ferry/replica-endpoints/${host}/${pool}/${name}`,
  replicaEndpointsOf: (host: string) => `/ferry/replica-endpoints/${host}/`,
  /** A host that joined, with its certificate's fingerprint; unlike its lease-bound record, kept while it is down. */
  member: (name: string) => `/ferry/members/${name}`,
  /** A certificate no agent accepts any more (ferry node remove), by its SHA-256 fingerprint. */
  revoked: (fingerprint: string) => `/ferry/revoked/${fingerprint}`,
  revokedAll: '/ferry/revoked/',
};

/** A host of the cluster as it joined: its certificate, by fingerprint (kept while it is down). */
export interface MemberRecord {
  name: string;
  /** SHA-256 of its certificate, lower-case hex. */
  fingerprint: string;
  since: string;
  /** The address it reaches storage from (node.json's storageAddress, else its address; written by its agent at start): storage fencing cuts it off by it. */
  address?: string;
}

/** A revoked certificate: whose it was, when, and why. */
export interface RevokedCertificate {
  fingerprint: string;
  name: string;
  revokedAt: string;
  reason: string;
}


export interface VolumeRecord {
  pool: string;
  name: string;
  format: VolumeFormat;
  sizeBytes: number;
  /** The VM whose spec names this volume; while attached, a local volume lives on that VM's owner. */
  vm?: string;
  /** Local pools, detached volume: the host that holds it. */
  host?: string;
  /** Where the driver put it (an iSCSI LUN number). */
  location?: string;
  /** Replicated pools: the two hosts that keep a replica. */
  replicas?: string[];
  /** Replicated pools, at creation only: the host asked to keep the second replica. */
  peer?: string;
  /** The volume holds this image's bytes (`ferry image delete` removes it, not `volume delete`). */
  image?: string;
  /** An overlay whose backing file is this image's volume: the image stays while the overlay does. */
  backingImage?: string;
}

/**
 * An imported image: what it is (from its bytes, not its name), where it is kept, and the
 * checksum of the file as it was sent, so an admin can tell which upstream image it was.
 */
export interface ImageRecord {
  name: string;
  kind: 'disk' | 'iso';
  state: 'importing' | 'ready';
  pool: string;
  volume: string;
  /** The volume's format (the uploaded file's own format is `sourceFormat`). */
  format: VolumeFormat;
  sourceFormat: string;
  /** The size a guest sees. */
  virtualBytes: number;
  /** The uploaded file: its size and SHA-256. */
  fileBytes: number;
  sha256: string;
  fileName: string;
  /** Local pools: the host that keeps it. */
  host?: string;
  /** The host that received the upload (it removes an import it could not finish when it starts again). */
  importer?: string;
  importedAt: string;
  /** Who imported it (the certificate's name). */
  importedBy: string;
}

/**
 * A guest network: the bridge a host attaches NICs to (a host may map the name to a bridge of its
 * own in node.json's `networks`), and the VLAN the NICs' tap ports carry untagged.
 */
export interface NetworkRecord {
  name: string;
  bridge: string;
  /** 802.1Q VLAN id (1–4094): the tap is an untagged member of it; the bridge must filter VLANs. */
  vlan?: number;
  /** IPv4 CIDR the guests' addresses on this network come from (checked when a NIC is given one). */
  subnet?: string;
  createdAt: string;
  createdBy: string;
}

/** A replica that lacks writes: `outdated` must not take over from `upToDate`. */
export interface OutdatedReplica {
  outdated: string;
  upToDate: string;
  since: string;
}

export interface StoredVolume extends VolumeRecord {
  revision: number;
}

export interface HostRecord {
  name: string;
  /** https://address:port of the agent's API. */
  url: string;
  /** The address guests' migration streams reach this host at. */
  address: string;
  memoryMiB: number;
  /** Unix socket of the agent's API, for a CLI on the same machine (the lab). */
  socket?: string;
  startedAt: string;
  /** The QEMU this host starts guests with (absent in records of agents from before it was recorded). */
  qemu?: { version: string; machineTypes: string[] };
  /** When the host's certificate expires (ISO time; absent in records of older agents): renew before (join it again). */
  certificateExpires?: string;
  /** The CPU models it runs and the features it advertises (absent in records of older agents: not judged). */
  cpu?: HostCpu;
}

export type DesiredState = 'running' | 'stopped';

export interface VmRecord {
  spec: VmSpec;
  owner: string;
  desired: DesiredState;
  /** Guest address, when known (the lab assigns it), for the probe. */
  ip?: string;
}

/** A VM record with its fencing token. */
export interface OwnedVm extends VmRecord {
  token: number;
}

export interface InFlightMigration {
  id: string;
  vm: string;
  source: string;
  destination: string;
  /** The VM's token when the migration began; the switchover CAS compares against it. */
  token: number;
  jobId: string;
  startedAt: string;
}

export type JobState = 'running' | 'succeeded' | 'failed';
export type JobKind = 'create' | 'start' | 'stop' | 'migrate' | 'recover' | 'handover';

export interface Job {
  id: string;
  kind: JobKind;
  vm: string;
  host: string;
  state: JobState;
  createdAt: string;
  updatedAt: string;
  progress?: MigrationProgress;
  /** Task log, one line per step, as a human reads it. */
  log: string[];
  result?: MigrationRecord | Record<string, unknown>;
  error?: string;
  /** Who asked for it, where a person did (the admin, or a REST API user and the host that forwarded it). */
  by?: string;
}

/** A stored VM record, in today's shape: a CD-ROM recorded before drives could be empty held its ISO directly. */
function readVmRecord(text: string): VmRecord {
  const record = JSON.parse(text) as VmRecord;
  const cdrom = record.spec.cdrom as (VmRecord['spec']['cdrom'] & { image?: string; pool?: string; volume?: string; sizeBytes?: number }) | undefined;
  if (cdrom && cdrom.medium === undefined && cdrom.image !== undefined) {
    const { image, pool, volume, sizeBytes } = cdrom as { image: string; pool: string; volume: string; sizeBytes: number };
    record.spec = { ...record.spec, cdrom: { medium: { image, pool, volume, sizeBytes } } };
  }
  return record;
}

export class ClusterState {
  constructor(readonly store: Store) {}

  async hosts(): Promise<HostRecord[]> {
    return (await this.store.list(KEYS.hosts)).map((kv) => JSON.parse(kv.value) as HostRecord);
  }

  async members(): Promise<MemberRecord[]> {
    return (await this.store.list('/ferry/members/')).map((kv) => JSON.parse(kv.value) as MemberRecord);
  }

  async member(name: string): Promise<MemberRecord | undefined> {
    const kv = await this.store.get(KEYS.member(name));
    return kv && (JSON.parse(kv.value) as MemberRecord);
  }

  async putMember(member: MemberRecord): Promise<void> {
    await this.store.put(KEYS.member(member.name), JSON.stringify(member));
  }

  async revokedCertificates(): Promise<RevokedCertificate[]> {
    return (await this.store.list(KEYS.revokedAll)).map((kv) => JSON.parse(kv.value) as RevokedCertificate);
  }

  /** Revokes one certificate (a host's earlier one, after it renewed). */
  async revokeCertificate(entry: RevokedCertificate): Promise<void> {
    await this.store.put(KEYS.revoked(entry.fingerprint), JSON.stringify(entry));
  }

  /**
   * Revokes a host's certificate and forgets the host, in one transaction. Its lease-bound host
   * record is its own (under etcd RBAC no other host may delete it): the removed agent drops it when
   * it sees the revocation, or its lease runs out.
   */
  async removeHost(member: MemberRecord, reason: string): Promise<void> {
    const entry: RevokedCertificate = { fingerprint: member.fingerprint, name: member.name, revokedAt: new Date().toISOString(), reason };
    await this.store.txn(
      [],
      [
        { type: 'put', key: KEYS.revoked(member.fingerprint), value: JSON.stringify(entry) },
        { type: 'delete', key: KEYS.member(member.name) },
      ],
    );
  }

  /** A host leaves: its own record goes (the agent of that host only). */
  async deleteOwnHostRecord(name: string): Promise<void> {
    await this.store.delete(KEYS.host(name));
  }

  async host(name: string): Promise<HostRecord | undefined> {
    const kv = await this.store.get(KEYS.host(name));
    return kv && (JSON.parse(kv.value) as HostRecord);
  }

  async vm(name: string): Promise<OwnedVm | undefined> {
    const kv = await this.store.get(KEYS.vm(name));
    return kv && { ...readVmRecord(kv.value), token: kv.modRevision };
  }

  async vms(): Promise<OwnedVm[]> {
    return (await this.store.list(KEYS.vms)).map((kv) => ({ ...readVmRecord(kv.value), token: kv.modRevision }));
  }

  /** Creates the record if no VM of that name exists; returns its token, or undefined if the name is taken. */
  async createVm(record: VmRecord): Promise<number | undefined> {
    const key = KEYS.vm(record.spec.name);
    // The guest address is held in the same transaction: two creates never get the same one.
    const ip = record.ip ? KEYS.guestAddress(record.ip) : undefined;
    const r = await this.store.txn(
      [{ key, modRevision: 0 }, ...(ip ? [{ key: ip, modRevision: 0 }] : [])],
      [{ type: 'put', key, value: JSON.stringify(record) }, ...(ip ? [{ type: 'put' as const, key: ip, value: record.spec.name }] : [])],
    );
    return r.succeeded ? r.revision : undefined;
  }

  /** Whether a guest address is held by a VM (createVm holds it, deleteVm frees it). */
  async addressTaken(ip: string): Promise<boolean> {
    return (await this.store.get(KEYS.guestAddress(ip))) !== undefined;
  }

  /**
   * Changes a VM record only if its token is still `token`; returns the new token or undefined.
   * `extra.hostGone`: only while that host has no live record (a recovery must not win against a host that came back).
   */
  async updateVm(vm: OwnedVm, change: Partial<VmRecord>, extra: { deleteKeys?: string[]; hostGone?: string } = {}): Promise<number | undefined> {
    const key = KEYS.vm(vm.spec.name);
    const { token: _token, ...record } = vm;
    const r = await this.store.txn(
      [{ key, modRevision: vm.token }, ...(extra.hostGone ? [{ key: KEYS.host(extra.hostGone), modRevision: 0 }] : [])],
      [{ type: 'put', key, value: JSON.stringify({ ...record, ...change }) }, ...(extra.deleteKeys ?? []).map((k) => ({ type: 'delete' as const, key: k }))],
    );
    return r.succeeded ? r.revision : undefined;
  }

  async deleteVm(vm: OwnedVm): Promise<boolean> {
    const key = KEYS.vm(vm.spec.name);
    const ip = vm.ip ? [{ type: 'delete' as const, key: KEYS.guestAddress(vm.ip) }] : [];
    return (await this.store.txn([{ key, modRevision: vm.token }], [{ type: 'delete', key }, ...ip])).succeeded;
  }

  async pools(): Promise<StoragePoolConfig[]> {
    return (await this.store.list(KEYS.pools)).map((kv) => JSON.parse(kv.value) as StoragePoolConfig);
  }

  /** Adds a pool if no pool of that name exists; false if the name is taken. */
  async addPool(pool: StoragePoolConfig): Promise<boolean> {
    const key = KEYS.pool(pool.name);
    return (await this.store.txn([{ key, modRevision: 0 }], [{ type: 'put', key, value: JSON.stringify(pool) }])).succeeded;
  }

  async networks(): Promise<NetworkRecord[]> {
    return (await this.store.list(KEYS.networks)).map((kv) => JSON.parse(kv.value) as NetworkRecord);
  }

  async network(name: string): Promise<NetworkRecord | undefined> {
    const kv = await this.store.get(KEYS.network(name));
    return kv && (JSON.parse(kv.value) as NetworkRecord);
  }

  /** Adds a network if none of that name exists; false if the name is taken. */
  async addNetwork(network: NetworkRecord): Promise<boolean> {
    const key = KEYS.network(network.name);
    return (await this.store.txn([{ key, modRevision: 0 }], [{ type: 'put', key, value: JSON.stringify(network) }])).succeeded;
  }

  async deleteNetwork(name: string): Promise<void> {
    await this.store.delete(KEYS.network(name));
  }

  async volumes(): Promise<StoredVolume[]> {
    return (await this.store.list(KEYS.volumes)).map((kv) => ({ ...(JSON.parse(kv.value) as VolumeRecord), revision: kv.modRevision }));
  }

  async volume(pool: string, name: string): Promise<StoredVolume | undefined> {
    const kv = await this.store.get(KEYS.volume(pool, name));
    return kv && { ...(JSON.parse(kv.value) as VolumeRecord), revision: kv.modRevision };
  }

  /** Reserves a volume name (before its image is made); false if taken. */
  async createVolume(volume: VolumeRecord): Promise<boolean> {
    const key = KEYS.volume(volume.pool, volume.name);
    const place = volume.location ? KEYS.volumeLocation(volume.pool, volume.location) : undefined;
    return (
      await this.store.txn(
        [{ key, modRevision: 0 }, ...(place ? [{ key: place, modRevision: 0 }] : [])],
        [{ type: 'put', key, value: JSON.stringify(volume) }, ...(place ? [{ type: 'put' as const, key: place, value: volume.name }] : [])],
      )
    ).succeeded;
  }

  /** Changes a volume record only if nobody changed it since it was read. */
  async updateVolume(volume: StoredVolume, change: Partial<VolumeRecord>): Promise<boolean> {
    const key = KEYS.volume(volume.pool, volume.name);
    const { revision, ...record } = volume;
    const next = { ...record, ...change };
    for (const k of Object.keys(next) as (keyof VolumeRecord)[]) if (next[k] === undefined) delete next[k];
    return (await this.store.txn([{ key, modRevision: revision }], [{ type: 'put', key, value: JSON.stringify(next) }])).succeeded;
  }

  async deleteVolume(volume: StoredVolume): Promise<boolean> {
    const key = KEYS.volume(volume.pool, volume.name);
    const place = volume.location ? [{ type: 'delete' as const, key: KEYS.volumeLocation(volume.pool, volume.location) }] : [];
    const mark = { type: 'delete' as const, key: KEYS.replicaOutdated(volume.pool, volume.name) }; // a volume made later under the name starts clean
    return (await this.store.txn([{ key, modRevision: volume.revision }], [{ type: 'delete', key }, ...place, mark])).succeeded;
  }

  async images(): Promise<ImageRecord[]> {
    return (await this.store.list(KEYS.images)).map((kv) => JSON.parse(kv.value) as ImageRecord);
  }

  async image(name: string): Promise<ImageRecord | undefined> {
    const kv = await this.store.get(KEYS.image(name));
    return kv && (JSON.parse(kv.value) as ImageRecord);
  }

  /** Reserves an image name for an import under way; false if it is taken. */
  async reserveImage(image: ImageRecord): Promise<boolean> {
    const key = KEYS.image(image.name);
    return (await this.store.txn([{ key, modRevision: 0 }], [{ type: 'put', key, value: JSON.stringify(image) }])).succeeded;
  }

  async putImage(image: ImageRecord): Promise<void> {
    await this.store.put(KEYS.image(image.name), JSON.stringify(image));
  }

  async deleteImage(name: string): Promise<void> {
    await this.store.delete(KEYS.image(name));
  }

  async replicaOutdated(pool: string, name: string): Promise<OutdatedReplica | undefined> {
    const kv = await this.store.get(KEYS.replicaOutdated(pool, name));
    return kv ? (JSON.parse(kv.value) as OutdatedReplica) : undefined;
  }

  async putReplicaOutdated(pool: string, name: string, record: OutdatedReplica): Promise<void> {
    await this.store.put(KEYS.replicaOutdated(pool, name), JSON.stringify(record));
  }

  async deleteReplicaOutdated(pool: string, name: string): Promise<void> {
    await this.store.delete(KEYS.replicaOutdated(pool, name));
  }

  async replicaEndpoint(pool: string, name: string, host: string): Promise<ReplicaEndpoint | undefined> {
    const kv = await this.store.get(KEYS.replicaEndpoint(pool, name, host));
    return kv ? (JSON.parse(kv.value) as ReplicaEndpoint) : undefined;
  }

  async putReplicaEndpoint(pool: string, name: string, endpoint: ReplicaEndpoint): Promise<void> {
    await this.store.put(KEYS.replicaEndpoint(pool, name, endpoint.host), JSON.stringify(endpoint));
  }

  async deleteReplicaEndpoint(pool: string, name: string, host: string): Promise<void> {
    await this.store.delete(KEYS.replicaEndpoint(pool, name, host));
  }

  async migration(vm: string): Promise<InFlightMigration | undefined> {
    const kv = await this.store.get(KEYS.migration(vm));
    return kv && (JSON.parse(kv.value) as InFlightMigration);
  }

  async migrations(): Promise<InFlightMigration[]> {
    return (await this.store.list(KEYS.migrations)).map((kv) => JSON.parse(kv.value) as InFlightMigration);
  }

  /** Records a migration before it starts; fails if one is already in flight for the VM. */
  async beginMigration(m: InFlightMigration): Promise<boolean> {
    const key = KEYS.migration(m.vm);
    return (await this.store.txn([{ key, modRevision: 0 }], [{ type: 'put', key, value: JSON.stringify(m) }])).succeeded;
  }

  /** Ends the VM's in-flight migration; with `id`, only that one (a retried end never removes a newer migration's record). */
  async endMigration(vm: string, id?: string): Promise<void> {
    const key = KEYS.migration(vm);
    if (id === undefined) {
      await this.store.delete(key);
      return;
    }
    const stored = await this.store.get(key);
    if (stored && (JSON.parse(stored.value) as InFlightMigration).id === id) await this.store.txn([{ key, modRevision: stored.modRevision }], [{ type: 'delete', key }]);
  }

  async newJob(kind: JobKind, vm: string, host: string, by?: string): Promise<Job> {
    const now = new Date().toISOString();
    const job: Job = { id: `${now.slice(0, 19).replace(/[-:T]/g, '')}-${randomUUID().slice(0, 8)}`, kind, vm, host, state: 'running', createdAt: now, updatedAt: now, log: [], ...(by ? { by } : {}) };
    await this.saveJob(job);
    return job;
  }

  /** Runs `act` as a job of its own: one log line before, the outcome after (its error, rethrown). */
  async asJob<T>(kind: JobKind, vm: string, host: string, what: string, act: () => Promise<T>): Promise<T> {
    const job = await this.newJob(kind, vm, host);
    job.log.push(`${new Date().toISOString()} ${what}`);
    try {
      const result = await act();
      job.state = 'succeeded';
      job.log.push(`${new Date().toISOString()} done`);
      return result;
    } catch (err) {
      job.state = 'failed';
      job.error = (err as Error).message;
      job.log.push(`${new Date().toISOString()} failed: ${job.error}`);
      throw err;
    } finally {
      await this.saveJob(job);
    }
  }

  async saveJob(job: Job): Promise<void> {
    job.updatedAt = new Date().toISOString();
    await this.store.put(KEYS.job(job.id), JSON.stringify(job));
  }

  /**
   * A running job's progress, written only over the record it read and only while that record says
   * running: a progress write that arrives late (a store member died under it and the client tried
   * another) can never overwrite the job's final state. False: not written.
   */
  async saveJobProgress(job: Job): Promise<boolean> {
    const key = KEYS.job(job.id);
    const stored = await this.store.get(key);
    if (!stored || (JSON.parse(stored.value) as Job).state !== 'running') return false;
    job.updatedAt = new Date().toISOString();
    return (await this.store.txn([{ key, modRevision: stored.modRevision }], [{ type: 'put', key, value: JSON.stringify(job) }])).succeeded;
  }

  async job(id: string): Promise<Job | undefined> {
    const kv = await this.store.get(KEYS.job(id));
    return kv && (JSON.parse(kv.value) as Job);
  }

  async jobs(): Promise<Job[]> {
    return (await this.store.list(KEYS.jobs)).map((kv) => JSON.parse(kv.value) as Job);
  }
}
