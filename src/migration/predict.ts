/**
 * Predicting a migration before anything moves: a round-by-round simulation
 * of pre-copy with the policy's escalation, from three measured figures — how
 * much of the guest's RAM is not zero (zero pages cost almost nothing to send),
 * how fast the guest dirties memory, and how fast the link carries data.
 */
import { converging, PolicyController, type MigrationPlan } from './policy/policy.ts';

export interface PredictionInput {
  guestBytes: number;
  nonZeroBytes: number;
  dirtyRateBytesPerSec: number;
  linkBytesPerSec: number;
  /** Fixed cost of starting the destination and the stream (ms). */
  setupMs: number;
  /** Disk bytes a local-storage migration copies before RAM (0 for shared storage). */
  diskCopyBytes?: number;
}

export interface Prediction {
  policy: string;
  converges: boolean;
  totalMs: number;
  downtimeMs: number;
  rounds: number;
  bytes: number;
  /** The policy steps the simulation took. */
  steps: string[];
  /** When it does not converge: why. */
  reason?: string;
}

const MAX_ROUNDS = 200;

export function predictMigration(input: PredictionInput, plan: MigrationPlan): Prediction {
  const link = plan.maxBandwidth === 'unlimited' ? input.linkBytesPerSec : Math.min(input.linkBytesPerSec, plan.maxBandwidth);
  const policy = new PolicyController(plan);
  let dirtyRate = input.dirtyRateBytesPerSec;
  let limitMs = plan.downtimeLimitMs;
  let toSend = input.nonZeroBytes;
  // Disks are mirrored before RAM moves; the mirror then keeps up with the guest's writes.
  let elapsedMs = input.setupMs + ((input.diskCopyBytes ?? 0) / input.linkBytesPerSec) * 1000;
  let bytes = 0;
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    const roundMs = (toSend / link) * 1000;
    // The final pause: what is left fits in the allowed downtime.
    if (round > 1 && roundMs <= limitMs) {
      return { policy: plan.policy, converges: true, totalMs: Math.round(elapsedMs + roundMs), downtimeMs: Math.round(roundMs), rounds: round, bytes: bytes + toSend, steps: policy.steps.map((s) => s.reason) };
    }
    elapsedMs += roundMs;
    bytes += toSend;
    if (elapsedMs > plan.timeoutMs)
      return { policy: plan.policy, converges: false, totalMs: plan.timeoutMs, downtimeMs: 0, rounds: round, bytes, steps: policy.steps.map((s) => s.reason), reason: `does not finish within the ${Math.round(plan.timeoutMs / 1000)} s timeout; would roll back` };
    const dirtied = Math.min(input.nonZeroBytes, dirtyRate * (roundMs / 1000));
    const observation = { round: round + 1, elapsedMs, remainingBytes: dirtied, dirtyRateBytesPerSec: dirtyRate, throughputBytesPerSec: link, expectedDowntimeMs: (dirtied / link) * 1000, downtimeLimitMs: limitMs };
    if (!converging(observation)) {
      for (const action of policy.onRound(observation)) {
        if (action.kind === 'set-downtime-limit') limitMs = action.ms;
        // Auto-converge throttles the vCPUs from the initial percentage up, 
        // which slows dirtying about as much (QEMU caps the throttle at 99%).
        if (action.kind === 'throttle') dirtyRate *= 1 - Math.min(0.99, (action.initialPercent + 3 * action.incrementPercent) / 100);
        if (action.kind === 'start-postcopy')
          return { policy: plan.policy, converges: true, totalMs: Math.round(elapsedMs + (input.nonZeroBytes / link) * 1000), downtimeMs: 0, rounds: round, bytes: bytes + input.nonZeroBytes, steps: policy.steps.map((s) => s.reason), reason: 'finishes in post-copy' };
      }
    }
    toSend = dirtied;
  }
  return { policy: plan.policy, converges: false, totalMs: Math.round(elapsedMs), downtimeMs: 0, rounds: MAX_ROUNDS, bytes, steps: policy.steps.map((s) => s.reason), reason: 'does not converge' };
}
