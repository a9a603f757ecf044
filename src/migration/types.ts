/** The vocabulary of a live migration: phases, parameters, progress and the final record. */
import type { IncomingDisk } from '../storage/types.ts';
import type { MigrationPlan, PolicyName, PolicyStep } from './policy/policy.ts';
import type { DiskProgress } from './sides.ts';

/**
 * The protocol phases, after libvirt's begin/prepare/perform/finish/confirm.
 * Owner of each: begin, perform, confirm = source; prepare, finish = destination;
 * switchover = the orchestrator (ownership decision), between the two.
 */
export type MigrationPhase = 'begin' | 'prepare' | 'perform' | 'switchover' | 'finish' | 'confirm';

export interface MigrationParams {
  /** What to do when the copy does not converge (policy/policy.ts). */
  policy: PolicyName;
  /** Bytes per second for the RAM stream. QEMU 7.2 silently caps at 128 MiB/s unless this is set, so it always is. */
  maxBandwidth: number | 'unlimited';
  /** Longest pause QEMU may plan for the final copy, in ms; default: the policy's. */
  downtimeLimitMs?: number;
  /** Give up (cancel and roll back) when the RAM copy has not finished after this long; default: the policy's time per GiB. */
  performTimeoutMs?: number;
  /** Let must-finish switch to post-copy (a network failure after the switch can lose the VM). */
  allowPostcopy: boolean;
  /** How often progress is read from QEMU. */
  progressIntervalMs: number;
  /**
   * Before switchover, compare the paused source's and destination's RAM (a hash per MiB) and roll
   * back on any difference. It lengthens the pause by the time to read and hash RAM on both sides,
   * so 'auto' does it only where a known defect of the source QEMU loses pages (QEMU < 9.0 under
   * TCG, qemu/version.ts); 'always' is a diagnostic.
   */
  verifyMemory: 'always' | 'never' | 'auto';
  /** RAM over several streams (policy/policy.ts, PolicyOptions.multifd); unset: the policy's choice. */
  multifd?: boolean;
  /** Post-copy page requests on a channel of their own (PolicyOptions.postcopyPreempt); unset: on with post-copy. */
  postcopyPreempt?: boolean;
  /** Let a VM move to a host whose QEMU is older than its source's (backward migration: best effort upstream). */
  allowOlderDestination: boolean;
}

export const DEFAULT_PARAMS: MigrationParams = {
  policy: 'balanced',
  maxBandwidth: 'unlimited',
  allowPostcopy: false,
  progressIntervalMs: 200,
  verifyMemory: 'auto',
  allowOlderDestination: false,
};

/** "Unlimited" as QEMU understands it: its maximum accepted max-bandwidth. */
export const UNLIMITED_BANDWIDTH = 2 ** 50; // 1 PiB/s

/** RAM figures of one progress sample, from the source's query-migrate. */
export interface RamProgress {
  /** QEMU's migration status: setup, active, device, completed, ... */
  qemuStatus: string;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  /** Bytes the guest dirties per second (QEMU's dirty-pages-rate × page size). */
  dirtyRateBytesPerSec: number;
  /** QEMU's estimate of the final pause if it stopped now, in ms. */
  expectedDowntimeMs: number;
  /** Round = QEMU's dirty-sync-count: 1 during the first full pass. */
  round: number;
  throughputBytesPerSec: number;
  /** How much QEMU throttles the guest's vCPUs now (auto-converge), in percent; 0 when it does not. */
  throttlePercent: number;
}

export interface MigrationProgress {
  phase: MigrationPhase;
  elapsedMs: number;
  ram?: RamProgress;
  /** Disks mirrored to the destination (local storage): bytes copied so far. */
  disk?: DiskProgress;
}

/** One disk in the record: opened where it was (shared), copied, or taken over from its replica on the destination. */
export interface DiskOutcome {
  id: string;
  mode: IncomingDisk;
}

export type MigrationOutcome = 'completed' | 'rolled-back';

export interface PhaseTiming {
  phase: MigrationPhase;
  ms: number;
}

/** What a migration did, kept as its final record whatever the outcome. */
export interface MigrationRecord {
  vm: string;
  outcome: MigrationOutcome;
  startedAt: string;
  totalMs: number;
  /** QEMU's own figure for the pause on the source (vCPUs stopped until the stream ended). */
  downtimeMs: number | null;
  /** QEMU's setup time: from 'migrate' until the RAM copy began. */
  setupMs: number | null;
  /** RAM bytes sent over the migration stream. */
  bytes: number;
  /** The VM's disks and what the migration did with each. */
  disks: DiskOutcome[];
  /** Bytes the disk mirrors copied (0 when every disk is shared). */
  diskBytes: number;
  rounds: number;
  phases: PhaseTiming[];
  params: MigrationParams;
  /** The plan the policy made: limits, capabilities, timeout. */
  plan: Omit<MigrationPlan, 'parameters'>;
  /** Every step the policy took, in order. */
  steps: PolicyStep[];
  /** Whether the migration switched to post-copy. */
  postcopy: boolean;
  /** For a rolled-back migration: the phase that failed and why. */
  failure?: {
    phase: MigrationPhase;
    reason: string;
    /** The memory check caught pages QEMU lost in the stream: nothing changed, trying again is safe. */
    lostPages?: boolean;
  };
  /** What a user should know about a migration that completed (e.g. a switchover the destination did not confirm). */
  warnings?: string[];
  /** The switchover's moments, for the breakdown of the guest's blackout (completed migrations). */
  switchover?: SwitchoverTimeline;
  /** What a client of the guest saw, where one was probing it (`ferry vm migrate` in the lab): its longest gap. */
  clientBlackout?: { ms: number; packetsLost: number; packetsSent: number; reportedBy: string };
  /**
   * How many attempts the migration took, this one included (an attempt the memory check stopped
   * is tried again with a fresh destination). `totalMs` and every other figure are this attempt's.
   */
  attempts: number;
  /** The attempts before this one, in order, each with what stopped it (empty when it took one). */
  earlierAttempts: EarlierAttempt[];
  /** From the first attempt's start to this one's end: `totalMs` plus the failed attempts and the gaps between them. */
  totalMsAllAttempts: number;
}

/** An attempt that rolled back before the one the record describes. */
export interface EarlierAttempt {
  startedAt: string;
  totalMs: number;
  /** The phase that failed and why. */
  phase: MigrationPhase;
  reason: string;
}

/**
 * When each step of a switchover happened, in ms since the epoch (all hosts of a lab share one
 * clock; between machines the figures are as good as their clocks' agreement). null: not seen.
 */
export interface SwitchoverTimeline {
  /** The source QEMU stopped the guest (its STOP event): the blackout starts. */
  stoppedAt: number | null;
  /** The destination loaded the last RAM and the device state (its MIGRATION completed event). */
  loadedAt: number | null;
  /** The memory check ended (only when one ran). */
  verifiedAt: number | null;
  /** The ownership compare-and-swap returned: the destination owns the VM. */
  ownedAt: number | null;
  /** The destination's guest runs (its RESUME event). */
  resumedAt: number | null;
}
