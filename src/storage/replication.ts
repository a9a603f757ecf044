/**
 * The primary's half of a replicated volume, inside the VM's QEMU: a mirror job
 * that never completes, in `write-blocking` mode, from the disk into the peer's
 * NBD export. Every guest write then completes only once both replicas have it.
 *
 * When the peer goes away, the NBD client gives up after RECONNECT_DELAY_S,
 * the job pauses (`on-target-error: stop`) and its dirty bitmap keeps every
 * block written meanwhile; the guest goes on writing to its own replica.
 * Resuming the job once the peer is back copies exactly those blocks (the job's
 * offset grows by the bytes resynchronised). QEMU 7.2 cannot seed a mirror from
 * a bitmap of ours, so this one job is also the resync: it is never cancelled
 * while the VM runs, except at a migration's switchover, with the guest paused
 * and both replicas equal.
 */
import type { QmpClient } from '../qemu/qmp.ts';
import { QmpCommandError } from '../qemu/errors.ts';
import type { ReplicaEndpoint } from './types.ts';

const PREFIX = 'ferry-replica-';
/** Seconds a write waits for a lost peer before the job pauses and the guest writes on alone. */
const RECONNECT_DELAY_S = 1;
/**
 * Resync unit, DRBD's: one bit per 4 KiB (32 MiB of bitmap per TiB). With a qcow2 cluster (64 KiB)
 * instead, a guest writing random 4 KiB blocks made the resync copy 16 times what it wrote.
 */
const GRANULARITY = 4096;
export const REPLICA_TLS_OBJECT = 'ferry-replica-tls';

export type ReplicationState =
  /** Every write reaches both replicas. */
  | 'in-sync'
  /** The peer is away: writes go to this replica only, and are recorded for the resync. */
  | 'degraded'
  /** The peer is back (or new): the recorded blocks are being copied. */
  | 'resyncing'
  /** No replication job (the VM does not run here, or it has not been set up yet). */
  | 'off';

export interface ReplicationStatus {
  state: ReplicationState;
  /** Bytes the job has copied since it started (initial sync and resyncs). */
  copiedBytes: number;
  /** Bytes it still has to copy. */
  pendingBytes: number;
  error?: string;
}

interface JobInfo {
  device: string;
  len: number;
  offset: number;
  ready: boolean;
  status: string;
  paused: boolean;
  'io-status'?: string;
  error?: string;
}

export function replicationJobId(diskId: string): string {
  return `${PREFIX}${diskId}`;
}

/**
 * Connects to the peer's export and starts the job. `sync: 'none'` when both replicas are known
 * equal (a switchover, a fresh pair); `'full'` otherwise (it copies what differs, zeros cheaply).
 */
export async function startReplication(qmp: QmpClient, diskId: string, peer: ReplicaEndpoint, sync: 'none' | 'full'): Promise<void> {
  await removeReplication(qmp, diskId);
  await connectReplica(qmp, diskId, peer);
  await startReplicationJob(qmp, diskId, sync);
}

/** The NBD client node to the peer's replica (TLS handshake included): the slow half of starting, done ahead where it can be. */
export async function connectReplica(qmp: QmpClient, diskId: string, peer: ReplicaEndpoint): Promise<void> {
  await qmp.execute('blockdev-add', {
    driver: 'nbd',
    'node-name': replicationJobId(diskId),
    server: { type: 'inet', host: peer.address, port: String(peer.port) },
    export: peer.export,
    'tls-creds': REPLICA_TLS_OBJECT,
    'tls-hostname': peer.address,
    'reconnect-delay': RECONNECT_DELAY_S,
  });
}

/** Whether the NBD client node to the peer exists (connectReplica ran). */
export async function replicaConnected(qmp: QmpClient, diskId: string): Promise<boolean> {
  return (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).some((n) => n['node-name'] === replicationJobId(diskId));
}

/** The job itself, into the connected node. */
export async function startReplicationJob(qmp: QmpClient, diskId: string, sync: 'none' | 'full'): Promise<void> {
  const node = replicationJobId(diskId);
  try {
    await qmp.execute('blockdev-mirror', {
      'job-id': node,
      device: diskId,
      target: node,
      sync,
      'copy-mode': 'write-blocking',
      'on-target-error': 'stop',
      granularity: GRANULARITY,
      'auto-dismiss': false,
      'auto-finalize': true,
    });
  } catch (err) {
    await qmp.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
    throw err;
  }
}

async function job(qmp: QmpClient, diskId: string): Promise<JobInfo | undefined> {
  return (await qmp.execute<JobInfo[]>('query-block-jobs')).find((j) => j.device === replicationJobId(diskId));
}

export async function replicationStatus(qmp: QmpClient, diskId: string): Promise<ReplicationStatus> {
  const info = await job(qmp, diskId);
  if (!info || info.status === 'concluded' || info.status === 'null' || info.status === 'aborting') return { state: 'off', copiedBytes: info?.offset ?? 0, pendingBytes: 0, ...(info?.error ? { error: info.error } : {}) };
  const pendingBytes = Math.max(0, info.len - info.offset);
  const state: ReplicationState = info.paused || info['io-status'] === 'failed' ? 'degraded' : info.ready && pendingBytes === 0 ? 'in-sync' : 'resyncing';
  return { state, copiedBytes: info.offset, pendingBytes };
}

/** Where the job writes: host:port of the peer's server, read from QEMU (it outlives an agent restart). */
export async function replicationTarget(qmp: QmpClient, diskId: string): Promise<string | undefined> {
  const node = (await qmp.execute<{ 'node-name': string; file: string }[]>('query-named-block-nodes')).find((n) => n['node-name'] === replicationJobId(diskId));
  const m = node?.file.match(/^nbd[^:]*:\/\/\[?([^\]/]+?)\]?:(\d+)\//);
  return m ? `${m[1]}:${m[2]}` : undefined;
}

/** After the peer came back: let the paused job copy what was written meanwhile. Fails harmlessly if it is not paused. */
export async function resumeReplication(qmp: QmpClient, diskId: string): Promise<boolean> {
  try {
    await qmp.execute('block-job-resume', { device: replicationJobId(diskId) });
    return true;
  } catch (err) {
    if (err instanceof QmpCommandError && /not paused|not found|No active block job/i.test(err.description)) return false;
    throw err;
  }
}

/**
 * Ends replication of a disk. With `inSync` (the switchover: guest paused), the job must be in
 * sync and is completed cleanly, so the peer's replica is known equal; otherwise it is dropped.
 */
export async function stopReplication(qmp: QmpClient, diskId: string, options: { inSync: boolean }): Promise<void> {
  const id = replicationJobId(diskId);
  const info = await job(qmp, diskId);
  if (options.inSync && info?.error) throw new Error(`the replication of ${diskId} failed (${info.error}): the peer's replica is not a copy of this one`);
  if (options.inSync) {
    // 'resyncing' is fine here: cancelling a ready mirror copies what is left before it ends (a
    // guest write still in flight at the pause shows as a moment of resyncing).
    const status = await replicationStatus(qmp, diskId);
    if (status.state === 'degraded' || status.state === 'off' || !info?.ready)
      throw new Error(`the replication of ${diskId} is ${status.state}, not in sync: the peer's replica is not a copy of this one`);
  }
  if (info && !['concluded', 'null'].includes(info.status)) {
    await qmp.execute('block-job-cancel', { device: id, force: !options.inSync }).catch(ignoreMissing);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const now = await job(qmp, diskId);
      if (!now || now.status === 'concluded' || now.status === 'null') break;
      if (Date.now() > deadline) throw new Error(`the replication job of ${diskId} is still ${now.status} 10 s after it was cancelled`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  await removeReplication(qmp, diskId);
}

/** Removes a concluded job and the NBD client node (leftovers from an earlier run). */
async function removeReplication(qmp: QmpClient, diskId: string): Promise<void> {
  const id = replicationJobId(diskId);
  const info = await job(qmp, diskId);
  if (info && (info.status === 'concluded' || info.status === 'null')) await qmp.execute('job-dismiss', { id }).catch(ignoreMissing);
  const nodes = (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).map((n) => n['node-name']);
  if (nodes.includes(id)) await qmp.execute('blockdev-del', { 'node-name': id }).catch(ignoreMissing);
}

/** The TLS credentials the NBD client presents to the peer (the agent's certificate). */
export async function ensureReplicaTls(qmp: QmpClient, tlsDir: string): Promise<void> {
  const objects = await qmp.execute<{ name: string }[]>('qom-list', { path: '/objects' });
  if (objects.some((o) => o.name === REPLICA_TLS_OBJECT)) return;
  await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: REPLICA_TLS_OBJECT, dir: tlsDir, endpoint: 'client', 'verify-peer': true });
}

function ignoreMissing(err: unknown): void {
  if (err instanceof QmpCommandError && /not found|No node|does not exist|No active block job|Cannot find/i.test(err.description)) return;
  throw err;
}
