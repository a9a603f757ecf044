/**
 * DRBD's fencing for replicated volumes: once a guest write has missed the
 * peer, the peer's replica is outdated, and the guest may not run on until
 * that is written down in the store, where a recovery reads it. Otherwise a
 * primary that loses its peer and the store at once (a partition, or a peer
 * that dies while the store is away) would go on completing writes that only
 * its own replica has, and a recovery on the peer after it was fenced would
 * lose them without a word.
 *
 * QEMU 7.2's mirror completes the guest's write when the copy to the peer
 * fails (and reports BLOCK_JOB_ERROR), so the guest is paused right after
 * the first failed write, not before it: what the guest can see complete
 * unmarked is what it wrote in those few milliseconds.
 *
 * The pause is written down in the instance's directory: an agent that
 * restarts meanwhile finds it and leaves the guest paused until the mark is
 * written.
 */
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { VmInstance } from '../qemu/instance.ts';

const MARKER = 'fence-paused';

const markerOf = (instance: VmInstance) => path.join(instance.dir, MARKER);

/** Pauses a running guest for fencing; false if it was not running (a migration's pause, say), which is left alone. */
export async function pauseForFence(instance: VmInstance, volume: string): Promise<boolean> {
  const { status } = await instance.qmp.execute<{ status: string }>('query-status');
  if (status !== 'running') return false;
  // The marker first: an agent that dies between the two finds a paused guest and a reason.
  await writeFile(markerOf(instance), `${volume}\n`);
  await instance.qmp.execute('stop');
  return true;
}

/** Whether the guest is paused for fencing (by this agent or by an earlier run of it). */
export function isFencePaused(instance: VmInstance): boolean {
  return existsSync(markerOf(instance));
}

/** Lets a guest paused for fencing run again (the peer is written down as outdated). */
export async function resumeAfterFence(instance: VmInstance): Promise<void> {
  if (!isFencePaused(instance)) return;
  const { status } = await instance.qmp.execute<{ status: string }>('query-status');
  if (status === 'paused') await instance.qmp.execute('cont');
  await rm(markerOf(instance), { force: true });
}
