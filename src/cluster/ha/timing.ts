/**
 * The timing chain that makes a double run impossible (DESIGN invariant 4), in one place. A host
 * that stops renewing its lease must have stopped its guests before any other host may start them:
 *
 *   renew interval < self-fence deadline < watchdog deadline < lease TTL < lease TTL + manager margin
 *
 * - every `renewMs` the agent renews its host lease;
 * - `selfFenceMs` after its last successful renewal (its own monotonic clock) it kills its guests;
 * - `watchdogMs` after the agent's last pet, the watchdog outside the agent kills them (the agent is
 *   frozen or dead, so its own timer cannot);
 * - `leaseTtlMs` after the last renewal the store drops the host's record;
 * - the HA manager starts the host's VMs elsewhere only after it has seen the record gone for
 *   `marginMs` more: slack for the time a renewal's answer takes to reach the host (the host's clock
 *   starts later than the store's) and for clocks that run at slightly different rates.
 *
 * One renewal is stood in for: when etcd's members show that no quorum exists anywhere (each refused
 * the connection or has no leader), no lease can expire and no host can take a VM over until a new
 * leader is elected, and that leader grants every lease its full TTL again. The moment they showed
 * it counts as a renewal (agent.ts): a store outage stops no guest.
 */

export interface HaTiming {
  renewMs: number;
  selfFenceMs: number;
  watchdogMs: number;
  leaseTtlMs: number;
  marginMs: number;
}

export class TimingChainError extends Error {
  override name = 'TimingChainError';
}

export function haTiming(leaseTtlSeconds: number): HaTiming {
  const leaseTtlMs = leaseTtlSeconds * 1000;
  const timing = {
    renewMs: leaseTtlMs / 3,
    selfFenceMs: (leaseTtlMs * 2) / 3,
    watchdogMs: (leaseTtlMs * 5) / 6,
    leaseTtlMs,
    marginMs: Math.max(2000, leaseTtlMs / 5),
  };
  checkTimingChain(timing);
  return timing;
}

/** Throws unless each step of the chain comes strictly after the one before, with room to act between. */
export function checkTimingChain(t: HaTiming): void {
  const steps: Array<[string, number]> = [
    ['renew interval', t.renewMs],
    ['self-fence deadline', t.selfFenceMs],
    ['watchdog deadline', t.watchdogMs],
    ['lease TTL', t.leaseTtlMs],
    ['lease TTL + margin', t.leaseTtlMs + t.marginMs],
  ];
  for (let i = 1; i < steps.length; i++) {
    const [before, a] = steps[i - 1]!;
    const [after, b] = steps[i]!;
    if (!(b > a)) throw new TimingChainError(`the ${after} (${b} ms) must come after the ${before} (${a} ms): a dead host's guests could still run when another host starts them`);
  }
  // Two renewals may fail before the agent fences itself: one lost answer is not a fault.
  if (t.selfFenceMs < 2 * t.renewMs) throw new TimingChainError(`the self-fence deadline (${t.selfFenceMs} ms) leaves room for fewer than two renewals (every ${t.renewMs} ms)`);
  if (t.marginMs < 1000) throw new TimingChainError(`a manager margin of ${t.marginMs} ms is too short to cover a renewal's round trip`);
}

export function describeTiming(t: HaTiming): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s`;
  return `renew every ${s(t.renewMs)} < self-fence at ${s(t.selfFenceMs)} < watchdog at ${s(t.watchdogMs)} < lease TTL ${s(t.leaseTtlMs)} < recovery after ${s(t.leaseTtlMs + t.marginMs)}`;
}
