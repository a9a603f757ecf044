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

/**
 * Cuts `lost` off every pool of `spec` that can do so; returns what was done, a line each.
 * Fencing twice is harmless (a recovery tried again, a second VM of the same host).
 */
export async function fenceLostHost(ctx: AgentContext, lost: string, spec: VmSpec): Promise<string[]> {
  const catalog = await storageCatalog(ctx);
  const drivers = [...new Set((spec.disks ?? []).map((d) => d.pool))].map((pool) => catalog.get(pool)).filter((d) => d.fence !== undefined);
  if (!drivers.length) return [];
  const address = (await ctx.state.member(lost))?.address;
  if (!address)
    throw new RefusedError(
      `cannot fence '${lost}' from ${drivers.map((d) => `pool '${d.config.name}'`).join(', ')}: the cluster does not know its address (its agent never ran a version that records it). ` +
        `Make sure it is down, then start its agent once or remove it (ferry node remove ${lost})`,
    );
  const records = new HaRecords(ctx.state.store);
  const done: string[] = [];
  for (const driver of drivers) {
    await records.putFence({ host: lost, pool: driver.config.name, address, by: ctx.node.name, at: new Date().toISOString() });
    done.push(await driver.fence!({ name: lost, address }));
  }
  return done;
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
  const catalog = await storageCatalog(ctx);
  let lifted = true;
  for (const fence of fences) lifted = (await liftFence(ctx, records, catalog.pools().find((d) => d.config.name === fence.pool), fence)) && lifted;
  return lifted;
}

async function liftFence(ctx: AgentContext, records: HaRecords, driver: StorageDriver | undefined, fence: StorageFence): Promise<boolean> {
  try {
    if (driver?.unfence) ctx.log(await driver.unfence({ name: fence.host, address: fence.address }));
    await records.removeFence(fence);
    return true;
  } catch (err) {
    ctx.log(`could not lift the storage fence of pool '${fence.pool}' (set by ${fence.by} at ${fence.at}): ${(err as Error).message}; trying again`);
    return false;
  }
}
