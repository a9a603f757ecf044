/**
 * Migration policies: what to turn on before the stream starts, and what to do
 * round by round when the copy does not converge. A policy is a pure function
 * of what it has observed, so it can be tested without QEMU and replayed.
 *
 *   minimal-downtime  keep the pause short; never slow the guest; give up (roll back) rather than pause long
 *   balanced          (default) short pause; if the copy does not converge, allow a longer pause step by
 *                     step, then throttle the guest's vCPUs (auto-converge)
 *   must-finish       finish whatever the guest does: XBZRLE from the start, raise the pause limit fast,
 *                     throttle hard, and — only if the caller allows it — switch to post-copy
 */
import type { MigrationCapabilities } from '../sides.ts';

export type PolicyName = 'minimal-downtime' | 'balanced' | 'must-finish';
export const POLICY_NAMES: readonly PolicyName[] = ['minimal-downtime', 'balanced', 'must-finish'];

export interface PolicyOptions {
  name: PolicyName;
  /** Start with this downtime limit instead of the policy's. */
  downtimeLimitMs?: number;
  /** Bytes per second, or unlimited (the default). */
  maxBandwidth?: number | 'unlimited';
  /** Overall limit for the copy; default: the policy's time per GiB of guest memory. */
  timeoutMs?: number;
  /**
   * Allow the switch to post-copy (must-finish only). After that switch the guest's state is split
   * between the hosts: a network failure can lose the VM. Off unless the user says so.
   */
  allowPostcopy?: boolean;
  /** Send RAM over several streams (QEMU's multifd, 2 channels, zero pages detected by the senders); default: the policy's. Not with XBZRLE or post-copy. */
  multifd?: boolean;
  /**
   * With post-copy: the destination's page requests get a channel of their own (postcopy-preempt),
   * ahead of the background copy. Default: on whenever post-copy is allowed — the benchmark measured
   * a client blackout of 84 ms with it against 710 ms without (QEMU 10, TCG, a guest dirtying 3× the
   * link, medians of 10: bench/results/migration-must-finish.txt).
   */
  postcopyPreempt?: boolean;
}

/** What one round of the RAM copy looked like, from QEMU's figures. */
export interface RoundObservation {
  round: number;
  elapsedMs: number;
  remainingBytes: number;
  dirtyRateBytesPerSec: number;
  throughputBytesPerSec: number;
  expectedDowntimeMs: number;
  downtimeLimitMs: number;
}

export type PolicyAction =
  | { kind: 'set-downtime-limit'; ms: number }
  | { kind: 'throttle'; initialPercent: number; incrementPercent: number; triggerThresholdPercent: number }
  | { kind: 'start-postcopy' };

/** One step a policy took, kept in the migration's record. */
export interface PolicyStep {
  atMs: number;
  round: number;
  action: PolicyAction;
  reason: string;
}

export interface MigrationPlan {
  policy: PolicyName;
  /** Capabilities for both sides (QEMU needs postcopy-ram and xbzrle's peers set alike). */
  capabilities: MigrationCapabilities;
  parameters: Record<string, unknown>;
  downtimeLimitMs: number;
  maxBandwidth: number | 'unlimited';
  timeoutMs: number;
  postcopyAllowed: boolean;
}

interface PolicyTable {
  downtimeLimitMs: number;
  /** Raise the limit ×2 after this many rounds that did not converge, up to the cap. */
  raiseAfterRounds: number;
  downtimeCapMs: number;
  /** Throttle the guest after this many non-converging rounds (0: never). */
  throttleAfterRounds: number;
  throttle: { initialPercent: number; incrementPercent: number };
  xbzrle: boolean;
  /**
   * Send RAM over multifd's channels unless told otherwise: the benchmark (QEMU 10, TCG, medians of
   * 3, bench/results/migration-ram.txt) measured 30–72% less total time and no longer blackouts.
   * Not for must-finish: it relies on XBZRLE and post-copy.
   */
  multifd: boolean;
  /** Switch to post-copy after this many non-converging rounds, if allowed (0: never). */
  postcopyAfterRounds: number;
  timeoutPerGiBMs: number;
}

const TABLES: Record<PolicyName, PolicyTable> = {
  'minimal-downtime': {
    downtimeLimitMs: 30, raiseAfterRounds: 0, downtimeCapMs: 30, throttleAfterRounds: 0,
    throttle: { initialPercent: 0, incrementPercent: 0 }, xbzrle: false, multifd: true, postcopyAfterRounds: 0, timeoutPerGiBMs: 120_000,
  },
  balanced: {
    downtimeLimitMs: 50, raiseAfterRounds: 3, downtimeCapMs: 500, throttleAfterRounds: 6,
    throttle: { initialPercent: 20, incrementPercent: 10 }, xbzrle: false, multifd: true, postcopyAfterRounds: 0, timeoutPerGiBMs: 240_000,
  },
  'must-finish': {
    downtimeLimitMs: 50, raiseAfterRounds: 2, downtimeCapMs: 2000, throttleAfterRounds: 3,
    throttle: { initialPercent: 30, incrementPercent: 20 }, xbzrle: true, multifd: false, postcopyAfterRounds: 6, timeoutPerGiBMs: 600_000,
  },
};

const MIN_TIMEOUT_MS = 30_000;

export class InvalidPolicyError extends Error {
  override name = 'InvalidPolicyError';
}

/** How long copying `bytes` of disk may take under a policy before the migration gives up. */
export function diskCopyTimeoutMs(policy: PolicyName, bytes: number): number {
  return Math.max(MIN_TIMEOUT_MS, Math.round((TABLES[policy].timeoutPerGiBMs * bytes) / 2 ** 30));
}

export function planMigration(options: PolicyOptions, guestMemoryMiB: number): MigrationPlan {
  const table = TABLES[options.name];
  if (!table) throw new InvalidPolicyError(`unknown policy '${options.name}'; choose one of ${POLICY_NAMES.join(', ')}`);
  if (options.allowPostcopy && options.name !== 'must-finish')
    throw new InvalidPolicyError(`post-copy is only used by the must-finish policy, not ${options.name}`);
  const downtimeLimitMs = options.downtimeLimitMs ?? table.downtimeLimitMs;
  if (!Number.isInteger(downtimeLimitMs) || downtimeLimitMs < 1 || downtimeLimitMs > 60_000)
    throw new InvalidPolicyError(`downtime limit ${downtimeLimitMs} ms must be a whole number between 1 and 60000`);
  const timeoutMs = options.timeoutMs ?? Math.max(MIN_TIMEOUT_MS, Math.round((table.timeoutPerGiBMs * guestMemoryMiB) / 1024));
  const postcopyAllowed = Boolean(options.allowPostcopy) && table.postcopyAfterRounds > 0;
  if (options.multifd && postcopyAllowed) throw new InvalidPolicyError('multifd and post-copy cannot be combined (QEMU 10); choose one');
  const multifd = options.multifd ?? (table.multifd && !postcopyAllowed);
  if (options.postcopyPreempt && !postcopyAllowed) throw new InvalidPolicyError('postcopy-preempt needs post-copy (must-finish with --allow-postcopy)');
  // XBZRLE's cache does not work across multifd's channels: multifd replaces it.
  const xbzrle = table.xbzrle && !multifd;
  const capabilities: MigrationCapabilities = {
    xbzrle,
    'auto-converge': table.throttleAfterRounds > 0,
    'postcopy-ram': postcopyAllowed,
    // Said either way: a QEMU keeps its capabilities, and a VM that arrived over multifd must not send with it unasked.
    multifd,
    'postcopy-preempt': options.postcopyPreempt ?? postcopyAllowed,
  };
  const parameters: Record<string, unknown> = {};
  // QEMU >= 9 finds zero pages in the multifd senders' threads instead of the migration thread (its default there; said explicitly).
  if (multifd) parameters['zero-page-detection'] = 'multifd';
  if (xbzrle) parameters['xbzrle-cache-size'] = Math.max(16, Math.min(256, guestMemoryMiB / 4)) * 2 ** 20;
  // Auto-converge is armed but idle until the policy lowers the trigger threshold (100%: dirty ≥ sent).
  if (table.throttleAfterRounds > 0) Object.assign(parameters, { 'throttle-trigger-threshold': 100, 'cpu-throttle-initial': 1, 'cpu-throttle-increment': 1 });
  return { policy: options.name, capabilities, parameters, downtimeLimitMs, maxBandwidth: options.maxBandwidth ?? 'unlimited', timeoutMs, postcopyAllowed };
}

/** A round converges when the data left can go in the allowed pause, or the copy outruns the guest's writing clearly. */
export function converging(o: RoundObservation): boolean {
  if (o.throughputBytesPerSec <= 0) return true; // no figures yet
  const leftMs = (o.remainingBytes / o.throughputBytesPerSec) * 1000;
  return leftMs <= o.downtimeLimitMs || o.dirtyRateBytesPerSec < 0.5 * o.throughputBytesPerSec;
}

/** Decides, after each round, what to change. Keeps its own count of rounds that did not converge. */
export class PolicyController {
  private stuckRounds = 0;
  private downtimeLimitMs: number;
  private throttled = false;
  private postcopy = false;
  readonly steps: PolicyStep[] = [];

  constructor(readonly plan: MigrationPlan) {
    this.downtimeLimitMs = plan.downtimeLimitMs;
  }

  get inPostcopy(): boolean {
    return this.postcopy;
  }

  onRound(o: RoundObservation): PolicyAction[] {
    const table = TABLES[this.plan.policy];
    if (this.postcopy || converging(o)) return [];
    this.stuckRounds++;
    const why = `round ${o.round}: ${(o.dirtyRateBytesPerSec / 2 ** 20).toFixed(1)} MiB/s dirtied vs ${(o.throughputBytesPerSec / 2 ** 20).toFixed(1)} MiB/s sent, ${(o.remainingBytes / 2 ** 20).toFixed(1)} MiB left`;
    const actions: PolicyAction[] = [];
    const take = (action: PolicyAction, reason: string) => {
      actions.push(action);
      this.steps.push({ atMs: o.elapsedMs, round: o.round, action, reason });
    };
    if (table.raiseAfterRounds && this.stuckRounds % table.raiseAfterRounds === 0 && this.downtimeLimitMs < table.downtimeCapMs) {
      this.downtimeLimitMs = Math.min(table.downtimeCapMs, this.downtimeLimitMs * 2);
      take({ kind: 'set-downtime-limit', ms: this.downtimeLimitMs }, `not converging (${why}); allow a ${this.downtimeLimitMs} ms pause`);
    }
    if (table.throttleAfterRounds && !this.throttled && this.stuckRounds >= table.throttleAfterRounds) {
      this.throttled = true;
      take(
        { kind: 'throttle', initialPercent: table.throttle.initialPercent, incrementPercent: table.throttle.incrementPercent, triggerThresholdPercent: 50 },
        `still not converging after ${this.stuckRounds} rounds (${why}); throttling the guest's vCPUs`,
      );
    }
    if (this.plan.postcopyAllowed && table.postcopyAfterRounds && this.stuckRounds >= table.postcopyAfterRounds) {
      this.postcopy = true;
      take({ kind: 'start-postcopy' }, `throttling did not make it converge (${why}); switching to post-copy as allowed`);
    }
    return actions;
  }
}
