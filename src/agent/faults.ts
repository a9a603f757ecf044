/**
 * Fault points, for the lab's tests (and its fault campaign): moments inside the agent that a test
 * cannot hit from outside by timing alone. Only an agent started by the lab has a fault file
 * (FERRY_FAULTS_FILE, set by lab.ts); elsewhere every point does nothing. A fault fires once: it is
 * removed from the file before it acts, so that a restarted agent does not fire it again.
 *
 * The file holds `{ "<point>": { "action": "<action>", "vm": "<name>" } }`.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AgentContext } from './context.ts';

export type FaultPoint =
  /** Source, in the switchover: before the ownership compare-and-swap. */
  | 'before-ownership-swap'
  /** Source, in the switchover: right after the swap, before the destination is told to resume. */
  | 'after-ownership-swap'
  /** Destination, when the source asks it to finish (the guest already runs there). */
  | 'before-incoming-finish';
export type FaultAction =
  /** The agent dies at once (SIGKILL), as a crash would: no cleanup, no answer. */
  | 'crash'
  /** Another writer changes the VM's record in the store (same content, new revision): the next compare-and-swap on it loses. */
  | 'touch-vm-record'
  /**
   * The agent stops at the point until the lab lets it go (heldMarker's file removed, at most
   * HOLD_MAX_MS): the campaign acts at that exact moment, e.g. kills the store's leader mid-swap.
   */
  | 'hold';

export const FAULT_FILE_ENV = 'FERRY_FAULTS_FILE';

/** The file a held agent writes beside its fault file and waits on (faults are per host: one hold at a time). */
export const heldMarker = (faultFile: string) => `${faultFile}.held`;
const HOLD_MAX_MS = 30_000;

type FaultFile = Partial<Record<FaultPoint, { action: FaultAction; vm: string }>>;

export async function faultPoint(ctx: AgentContext, point: FaultPoint, vm: string): Promise<void> {
  const file = process.env[FAULT_FILE_ENV];
  if (!file || !existsSync(file)) return;
  const faults = JSON.parse(readFileSync(file, 'utf8')) as FaultFile;
  const fault = faults[point];
  if (!fault || fault.vm !== vm) return;
  delete faults[point];
  writeFileSync(file, JSON.stringify(faults));
  ctx.log(`fault injected at ${point}: ${fault.action} (${vm})`);
  if (fault.action === 'crash') process.kill(process.pid, 'SIGKILL');
  if (fault.action === 'hold') {
    const marker = heldMarker(file);
    writeFileSync(marker, JSON.stringify({ point, vm }));
    const until = Date.now() + HOLD_MAX_MS;
    while (existsSync(marker) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    rmSync(marker, { force: true });
    ctx.log(`fault ${point} released (${vm})`);
  }
  if (fault.action === 'touch-vm-record') {
    const now = await ctx.state.vm(vm);
    if (now) await ctx.state.updateVm(now, {});
  }
}
