/**
 * The two sides of a migration, as the orchestrator sees them. Locally both are
 * QEMU processes on this machine (local.ts); between hosts the destination is
 * the destination agent behind its API. The orchestrator never touches QMP.
 */
import type { VmSpec } from '../qemu/spec.ts';
import type { RamProgress } from './types.ts';

/** QEMU migration capabilities ferry turns on, set identically on both sides where QEMU needs that. */
export type MigrationCapabilities = Record<string, boolean>;

export interface QemuMigrationSummary {
  status: string;
  downtimeMs: number | null;
  setupMs: number | null;
  totalMs: number | null;
  bytes: number;
  rounds: number;
  error?: string;
}

export interface SourceSide {
  readonly spec: VmSpec;
  /** begin: why this VM cannot be migrated now (not running, already migrating...); empty when it can. */
  checkMigratable(): Promise<string[]>;
  /** perform: set capabilities and parameters, then start sending to the prepared destination. */
  startMigration(destination: PreparedDestination, capabilities: MigrationCapabilities, parameters: Record<string, unknown>): Promise<void>;
  /** perform: change migration parameters while the stream runs (the policy's steps). */
  setParameters(parameters: Record<string, unknown>): Promise<void>;
  /** perform: switch a running precopy stream to post-copy (postcopy-ram must have been set on both sides). */
  startPostcopy(): Promise<void>;
  /** perform: one progress sample. */
  progress(): Promise<RamProgress>;
  /** One hash per MiB of the paused guest's RAM (qemu/ram-scan.ts). */
  memoryDigest(): Promise<string[]>;
  /** QEMU's figures once the stream has ended (completed, failed or cancelled). */
  summary(): Promise<QemuMigrationSummary>;
  /** Rollback: stop an active migration and make sure the guest runs here again. */
  cancelAndResume(): Promise<void>;
  /** confirm: the VM runs elsewhere now; stop this QEMU and release its resources. */
  retire(): Promise<void>;
  /** Resolves if the source QEMU exits unexpectedly. */
  readonly lost: Promise<string>;
}

export interface PreparedDestination {
  /** Where the source sends the stream (unix:..., tcp:host:port). */
  uri: string;
  /** When the stream is TLS: the name the destination's certificate carries, for the source to check. */
  tlsHostname?: string;
}

export interface DestinationSide {
  /** The spec the destination will run, for the compatibility check in begin. */
  readonly spec: VmSpec;
  /** prepare: start QEMU paused with `-incoming defer`, same devices, and listen. */
  prepare(capabilities: MigrationCapabilities): Promise<PreparedDestination>;
  /** perform: resolves when the destination has loaded all state (it is still paused), rejects if it failed. */
  incomingComplete(timeoutMs: number): Promise<void>;
  /** perform, post-copy only: resolves when the destination has the device state and waits, paused, to run. */
  postcopyReady(): Promise<void>;
  /** One hash per MiB of the loaded, still paused guest's RAM. */
  memoryDigest(): Promise<string[]>;
  /** switchover: run the guest here (cont) and announce its MACs. */
  resume(): Promise<void>;
  /** Whether the guest's vCPUs run here now (after a resume that reported an error, it may still have run). */
  isRunning(): Promise<boolean>;
  /** finish: confirm the guest runs here and drop what only the migration needed. */
  finish(): Promise<void>;
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
