/**
 * The two sides of a migration, as the orchestrator sees them. Locally both are
 * QEMU processes on this machine (local.ts); between hosts the destination is
 * the destination agent behind its API. The orchestrator never touches QMP.
 */
import type { Accel, VmSpec } from '../qemu/spec.ts';
import type { VmInstance } from '../qemu/instance.ts';
import type { RamProgress } from './types.ts';
import type { IncomingDisk } from '../storage/types.ts';
import type { QemuVersion } from '../qemu/version.ts';
import type { QemuBuild } from '../qemu/host-probe.ts';

/** QEMU migration capabilities ferry turns on, set identically on both sides where QEMU needs that. */
export type MigrationCapabilities = Record<string, boolean>;

/** What the destination must know about one source disk, from begin on. */
export interface DiskNeed {
  id: string;
  /** Bytes the source's image occupies: what a copy moves at most. */
  allocatedBytes: number;
}

export type NbdServerAddress = { type: 'unix'; path: string } | { type: 'inet'; host: string; port: number };

/** Where the source mirrors the disks that the destination copies (export name = disk id). */
export interface NbdTargets {
  server: NbdServerAddress;
  disks: string[];
  /** Between hosts: the name the destination's certificate carries. */
  tlsHostname?: string;
}

export interface DiskProgress {
  totalBytes: number;
  copiedBytes: number;
  /** Every mirror job caught up: from now on guest writes reach both copies. */
  ready: boolean;
}

export interface QemuMigrationSummary {
  status: string;
  /** When the source QEMU stopped the guest for the final copy (its STOP event), ms since the epoch. */
  stoppedAt?: number;
  downtimeMs: number | null;
  setupMs: number | null;
  totalMs: number | null;
  bytes: number;
  rounds: number;
  error?: string;
}

export interface SourceSide {
  readonly spec: VmSpec;
  /** The accelerator the source QEMU runs under (some features are unsafe under TCG). */
  readonly accel: Accel;
  /** The version of the running source QEMU (not of the binary installed now: a VM outlives upgrades). */
  qemuVersion(): Promise<QemuVersion>;
  /** begin: why this VM cannot be migrated now (not running, already migrating...); empty when it can. */
  checkMigratable(): Promise<string[]>;
  /** begin: how much of each disk a copy would move. */
  diskNeeds(): Promise<DiskNeed[]>;
  /**
   * perform, before RAM: mirror the disks the destination copies into its NBD exports.
   * The source then completes the mirrors by itself in QEMU's pre-switchover pause.
   */
  startDiskMirror(targets: NbdTargets, speedBytesPerSec?: number): Promise<void>;
  /** perform: the mirror jobs' progress; rejects when a job failed. */
  diskProgress(): Promise<DiskProgress>;
  /** perform: set capabilities and parameters, then start sending to the prepared destination. */
  startMigration(destination: PreparedDestination, capabilities: MigrationCapabilities, parameters: Record<string, unknown>): Promise<void>;
  /** perform: change migration parameters while the stream runs (the policy's steps). */
  setParameters(parameters: Record<string, unknown>): Promise<void>;
  /** perform: switch a running precopy stream to post-copy (postcopy-ram must have been set on both sides). */
  startPostcopy(): Promise<void>;
  /** finish, post-copy: break off a stream that hangs (a link that drops packets), so that it can be recovered. */
  pausePostcopy(): Promise<void>;
  /** finish, post-copy: send the rest of the pages to the destination's recovery listener. */
  resumePostcopy(uri: string): Promise<void>;
  /** perform: one progress sample. */
  progress(): Promise<RamProgress>;
  /** One hash per MiB of the paused guest's RAM (qemu/ram-scan.ts). */
  memoryDigest(): Promise<string[]>;
  /** QEMU's figures once the stream has ended (completed, failed or cancelled). */
  summary(): Promise<QemuMigrationSummary>;
  /** Rollback: stop an active migration and make sure the guest runs here again. */
  cancelAndResume(): Promise<void>;
  /** confirm: the VM runs elsewhere now; stop this QEMU and release its resources (and the stale copies of disks it mirrored). */
  retire(): Promise<void>;
  /** Resolves if the source QEMU exits unexpectedly. */
  readonly lost: Promise<string>;
}

export interface PreparedDestination {
  /** Where the source sends the stream (unix:..., tcp:host:port). */
  uri: string;
  /** What the destination does with each disk: open the same bytes, or receive a copy. */
  disks: { id: string; mode: IncomingDisk }[];
  /** Present when some disks are copied. */
  nbd?: NbdTargets;
  /** When the stream is TLS: the name the destination's certificate carries, for the source to check. */
  tlsHostname?: string;
}

/** Moments of the switchover on the destination, from its QEMU's events (ms since the epoch; null: not seen). */
export interface DestinationTimes {
  /** The incoming stream completed: every page and the device state are loaded (MIGRATION completed). */
  loadedAt: number | null;
  /** The guest's vCPUs run here (RESUME). */
  resumedAt: number | null;
}

export interface DestinationSide {
  /** The spec the destination will run, for the compatibility check in begin. */
  readonly spec: VmSpec;
  /** begin: the QEMU the destination would start (its version, its machine types). */
  qemu(): Promise<QemuBuild>;
  /** begin: why the destination cannot take this VM — its disks (pool unreachable from it, no room) or its NICs (network missing there); empty when it can. */
  checkResources(needs: DiskNeed[]): Promise<string[]>;
  /** prepare: make the volumes, start QEMU paused with `-incoming defer`, same devices, and listen (NBD exports for copied disks). */
  prepare(capabilities: MigrationCapabilities, needs: DiskNeed[]): Promise<PreparedDestination>;
  /** perform: resolves when the destination has loaded all state (it is still paused), rejects if it failed. */
  incomingComplete(timeoutMs: number): Promise<void>;
  /** perform, post-copy only: resolves when the destination has the device state and waits, paused, to run. */
  postcopyReady(): Promise<void>;
  /** One hash per MiB of the loaded, still paused guest's RAM. */
  memoryDigest(): Promise<string[]>;
  /**
   * finish, post-copy, after the stream broke: listen again for the source (QEMU's postcopy
   * recovery) and say where. Breaks off a stream that only hangs first. Rejects while it cannot
   * listen (the link's address is gone); the caller tries again.
   */
  recoverPostcopy(): Promise<string>;
  /** switchover: run the guest here (cont) and announce its MACs. */
  resume(): Promise<void>;
  /** Whether the guest's vCPUs run here now (after a resume that reported an error, it may still have run). */
  isRunning(): Promise<boolean>;
  /** finish: confirm the guest runs here and drop what only the migration needed; says when it loaded and resumed. */
  finish(): Promise<DestinationTimes>;
  /** Rollback: kill the destination QEMU and remove everything prepare made. Safe to call twice. */
  abort(): Promise<void>;
  /** Resolves if the destination QEMU exits unexpectedly. */
  readonly lost: Promise<string>;
}

/**
 * The switchover decision: in a cluster, the ownership compare-and-swap. Until
 * `commit` returns true the destination must stay paused; when it returns
 * false the source resumes. `revert` undoes a commit whose resume then failed.
 */
export interface SwitchoverHook {
  commit(): Promise<boolean>;
  revert?(): Promise<void>;
}

export const ALWAYS_SWITCH: SwitchoverHook = { commit: async () => true };

/**
 * How a migration moves the replication of replicated disks (implemented by the agent, which
 * owns the replica exports). The source's jobs complete in sync at its pre-switchover pause;
 * once its stream completed it serves its replicas; the destination, once its stream completed,
 * stops serving its own and connects to the source's, and before its guest runs starts
 * replicating into them. On rollback the source takes them back.
 */
export interface ReplicaHandover {
  pauseForSwitchover(instance: VmInstance): Promise<void>;
  serveAfterSwitchover(spec: VmSpec): Promise<void>;
  stopServing(spec: VmSpec): Promise<void>;
  resumeAfterRollback(instance: VmInstance, sync: 'none' | 'full'): Promise<void>;
  prepareTakeOver(instance: VmInstance): Promise<void>;
  /** Destination, rolled back: serve this host's replicas again, for the source to replicate into. */
  abortTakeOver(spec: VmSpec): Promise<void>;
  takeOver(instance: VmInstance): Promise<void>;
}
