/**
 * Storage fencing (DESIGN invariant 4, after the lease and the watchdog): before a lost host's VM
 * starts elsewhere, the backends that can cut a host off do so — Ceph blocklists its RBD clients, an
 * iSCSI target with a fence command withdraws its initiator — so that a QEMU it still runs (a reset
 * that failed, a process the watchdog could not kill) writes nothing more to the disk.
 *
 * The fence is written down before it is done (`/ferry/ha/fences/HOST/POOL`), and lifted by the
 * fenced host itself once it is back and runs nothing it does not own.
 */
import { HaRecords, type StorageFence } from '../cluster/ha/records.ts';
import type { VmSpec } from '../qemu/spec.ts';
import type { StorageDriver } from '../storage/types.ts';
import { storageCatalog, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';
import { isIP } from 'node:net';

/** What a recovery fenced, and how to take it back if the recovery does not take the VM after all. */
export interface FenceOutcome {
  done: string[];
  undo(): Promise<string[]>;
}

/**
 * Cuts `lost` off every pool of `spec` that can do so. Fencing twice is harmless (a recovery tried
 * again, a second VM of the same host). All or nothing: a pool that cannot fence undoes the others.
 */
export async function fenceLostHost(ctx: AgentContext, lost: string, spec: VmSpec): Promise<FenceOutcome> {
  const catalog = await storageCatalog(ctx);
  const drivers = [...new Set((spec.disks ?? []).map((d) => d.pool))].map((pool) => catalog.get(pool)).filter((d) => d.fence !== undefined);
  const records = new HaRecords(ctx.state.store);
  const fenced: StorageFence[] = [];
  const undo = async () => {
    const lines: string[] = [];
    for (const fence of fenced.splice(0)) lines.push(await liftFence(ctx, records, catalog.get(fence.pool), fence));
    return lines;
  };
  if (!drivers.length) return { done: [], undo };
  const address = (await ctx.state.member(lost))?.address;
  if (!address || !isIP(address))
    throw new RefusedError(
      `cannot fence '${lost}' from ${drivers.map((d) => `pool '${d.config.name}'`).join(', ')}: ` +
        (address
          ? `its storage address '${address}' is not an IP address (set "storageAddress" in its node.json to the address it reaches storage from). `
          : 'the cluster does not know the address it reaches storage from (its agent never ran a version that records it). ') +
        `Start its agent once if you can; a VM on those pools is not started elsewhere unfenced`,
    );
  const done: string[] = [];
  try {
    for (const driver of drivers) {
      const fence: StorageFence = { host: lost, pool: driver.config.name, address, by: ctx.node.name, at: new Date().toISOString() };
      await records.putFence(fence);
      fenced.push(fence);
      done.push(await driver.fence!({ name: lost, address }));
    }
  } catch (err) {
    await undo();
    throw err;
  }
  return { done, undo };
}

/** Lifts every fence of `host` (it left the cluster for good: a new machine may come at its address). */
export async function liftFencesOf(ctx: AgentContext, host: string): Promise<string[]> {
  const records = new HaRecords(ctx.state.store);
  const catalog = await storageCatalog(ctx);
  const lines: string[] = [];
  for (const fence of await records.fencesOf(host)) lines.push(await liftFence(ctx, records, catalog.pools().find((d) => d.config.name === fence.pool), fence));
  return lines;
}

/**
 * Lifts the fences of this host, if it has any and runs only guests it owns (a guest it ran before
 * it was fenced, and that another host now owns, must be gone first). Called when it registers, and
 * at its renewals until none is left; true when none is.
 */
export async function liftOwnFences(ctx: AgentContext): Promise<boolean> {
  const records = new HaRecords(ctx.state.store);
  const fences = await records.fencesOf(ctx.node.name);
  if (!fences.length) return true;
  for (const { name } of await ctx.runtime.list()) {
    const vm = await ctx.state.vm(name);
    if (vm?.owner !== ctx.node.name) {
      ctx.log(`storage fencing stays: '${name}' still runs here, but ${vm ? `'${vm.owner}'` : 'no host'} owns it; lifted once it is stopped`);
      return false;
    }
  }
  await liftFencesOf(ctx, ctx.node.name);
  return (await records.fencesOf(ctx.node.name)).length === 0;
}

/** Lifts one fence; what happened, a line (an error is said, not thrown: the record stays for another try). */
async function liftFence(ctx: AgentContext, records: HaRecords, driver: StorageDriver | undefined, fence: StorageFence): Promise<string> {
  try {
    const line = driver?.unfence ? await driver.unfence({ name: fence.host, address: fence.address }) : `pool '${fence.pool}' is gone: nothing to lift`;
    await records.removeFence(fence);
    ctx.log(line);
    return line;
  } catch (err) {
    const line = `could not lift the storage fence of ${fence.host} on pool '${fence.pool}' (set by ${fence.by} at ${fence.at}): ${(err as Error).message}; tried again later`;
    ctx.log(line);
    return line;
  }
}
