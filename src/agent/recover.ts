/**
 * Recovery of a VM whose host is gone: this host takes the ownership (compare-
 * and-swap on the VM's record) and boots the VM from its disks. Only once the
 * dead host's lease has expired and a grace period has passed (DESIGN
 * invariant 4: an agent that cannot renew its lease has stopped its guests
 * before it expires), and only with disks this host can open: shared storage,
 * or the replica it keeps of a replicated volume. The building block of the
 * HA manager; `ferry vm recover` for an admin until then.
 */
import { requireUefi } from '../qemu/firmware.ts';
import { stat } from 'node:fs/promises';
import { ReplicatedDriver } from '../storage/replicated.ts';
import { volumeOf } from '../storage/types.ts';
import { requireRoom, requireVm, storageCatalog, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { BOOLEAN, fields, pathParams, VM } from './request-schema.ts';
import { fenceLostHost, type FenceOutcome } from './storage-fencing.ts';

export function recoverRoutes(ctx: AgentContext): Route[] {
  return [
    {
      method: 'POST',
      pattern: '/v1/vms/:name/recover',
      who: 'admin',
      input: { params: pathParams({ name: VM }), body: fields({ acceptDataLoss: BOOLEAN }) },
      handler: async ({ name }, body) => ({ vm: await recoverVm(ctx, name!, { acceptDataLoss: body['acceptDataLoss'] === true, start: true, by: 'admin' }) }),
    },
  ];
}

export interface RecoverOptions {
  /** Boot from a replica that lacks writes (the admin's explicit choice; never the HA manager's). */
  acceptDataLoss: boolean;
  /** false: only take the VM over, stopped (an HA request `stopped`). */
  start: boolean;
  /** Who asks: the admin (`ferry vm recover`), or the HA manager, which waited the fencing margin already. */
  by: 'admin' | 'ha';
}

export async function recoverVm(ctx: AgentContext, name: string, options: RecoverOptions) {
  const { acceptDataLoss } = options;
  const { state, node, runtime } = ctx;
  const vm = await requireVm(ctx, name);
  if (vm.owner === node.name) throw new RefusedError(`'${name}' is owned by ${node.name} already; start it with 'ferry vm start ${name}'`);
  const migration = await state.migration(name);
  if (migration && (await state.host(migration.source)))
    throw new RefusedError(`'${name}' is being migrated from '${migration.source}', whose agent closes the migration; wait for it (see 'ferry job list')`);
  const storage = await storageCatalog(ctx);
  const replicated = (vm.spec.disks ?? []).filter((d) => storage.get(d.pool) instanceof ReplicatedDriver);
  for (const disk of vm.spec.disks ?? []) {
    const driver = storage.get(disk.pool);
    if (driver instanceof ReplicatedDriver) {
      if (!driver.isReplicaHost(volumeOf(disk)))
        throw new RefusedError(`disk ${disk.id} of '${name}' is replicated on ${disk.replicas?.join(' and ')}; recover the VM on '${disk.replicas?.find((h) => h !== vm.owner)}'`);
      if (!(await driver.exists(volumeOf(disk)))) throw new RefusedError(`the replica of ${disk.pool}/${disk.volume} is missing on ${node.name}`);
      const outdated = await state.replicaOutdated(disk.pool, disk.volume);
      if (outdated?.outdated === node.name && !acceptDataLoss)
        throw new RefusedError(
          `the replica of ${disk.pool}/${disk.volume} on ${node.name} is outdated: '${outdated.upToDate}' wrote without it since ${outdated.since}; ` +
            `booting from it would lose those writes. Bring '${outdated.upToDate}' back if you can; if it is lost for good, recover with --accept-data-loss`,
        );
    } else if (!driver.shared) {
      throw new RefusedError(`disk ${disk.id} of '${name}' is in pool '${disk.pool}' (${driver.config.type}), only on the lost host '${vm.owner}'; it cannot be recovered elsewhere`);
    } else {
      await driver.status();
    }
  }
  await requireRoom(ctx, node.name, vm.spec);
  // A host whose agent died may still run the guest (QEMU outlives its agent): then it still writes
  // to the replicas here. No write during the grace period, or the recovery is refused.
  // (The replica file's modification time: the replica server writes it through.)
  const modified = () => Promise.all(replicated.map(async (d) => (await stat((storage.get(d.pool) as ReplicatedDriver).fileOf(volumeOf(d)))).mtimeMs));
  const writesBefore = await modified();
  // The manager waited TTL + margin already (cluster/ha/timing.ts); a replica still gets a second's look.
  const graceMs = options.by === 'ha' ? (replicated.length ? 1000 : 0) : Math.max(2, ctx.node.leaseTtlSeconds / 5) * 1000;
  await requireGone(ctx, vm.owner, graceMs);
  const writesAfter = await modified();
  const stillWriting = replicated.filter((_, i) => writesAfter[i] !== writesBefore[i]);
  if (stillWriting.length)
    throw new RefusedError(
      `'${name}' still writes to ${stillWriting.map((d) => `${d.pool}/${d.volume}`).join(', ')} from '${vm.owner}': its QEMU runs although its agent is gone; ` +
        `stop that QEMU on '${vm.owner}' first (two copies of the guest would write the same disk)`,
    );
  if (vm.spec.boot.kind === 'firmware' && vm.spec.boot.firmware === 'uefi') requireUefi(node.name);
  const job = await state.newJob('recover', name, node.name);
  const by = options.by === 'ha' ? 'the HA manager' : 'the admin';
  job.log.push(`${new Date().toISOString()} host '${vm.owner}' is gone (lease expired); ${by} recovers ${name} on ${node.name}${options.start ? '' : ' (stopped)'}`);
  let owned: number | undefined;
  let fenced: FenceOutcome | undefined;
  try {
    // Storage fencing before anything of it opens here: what the lost host may still run writes no more.
    fenced = await fenceLostHost(ctx, vm.owner, vm.spec);
    for (const line of fenced.done) job.log.push(`${new Date().toISOString()} fenced: ${line}`);
    // Taken only while the lost host is still gone: one that came back keeps its VM (and its fence is lifted below).
    owned = await state.updateVm(vm, { owner: node.name, desired: options.start ? 'running' : 'stopped' }, { hostGone: vm.owner });
    if (owned === undefined) throw new RefusedError(`'${name}' changed while being recovered (another host took it, or '${vm.owner}' came back); see 'ferry vm show ${name}'`);
    // This host served its replicas to the lost primary: from now on its guest writes to them.
    await ctx.replication.stopServing(vm.spec);
    if (options.start) {
      await ctx.replication.beforeStart(vm.spec);
      await runtime.start(vm.spec, storage.attach(vm.spec));
      await ctx.guard?.();
    }
    job.state = 'succeeded';
    job.log.push(`${new Date().toISOString()} ${name} ${options.start ? 'started' : 'is kept stopped'} on ${node.name} from its disks (its memory was lost with '${vm.owner}')`);
    ctx.log(`recovered ${name} from lost host ${vm.owner} (${by})`);
  } catch (err) {
    job.state = 'failed';
    job.error = (err as Error).message;
    // Taken over but not started: the record says so, and whoever asks again starts it here.
    const taken = owned !== undefined ? await state.vm(name) : undefined;
    if (taken && taken.owner === node.name && taken.desired === 'running') await state.updateVm(taken, { desired: 'stopped' }).catch(() => undefined);
    // Not taken because the lost host came back (running its VM): the fence is lifted again. Not when
    // another recovery took the VM: it relies on the same fence.
    if (owned === undefined && fenced && (await state.host(vm.owner).catch(() => undefined))) for (const line of await fenced.undo()) job.log.push(`${new Date().toISOString()} ${line}`);
    throw err;
  } finally {
    await state.saveJob(job);
  }
  return state.vm(name);
}

/**
 * The host's lease has expired, and stays expired for a grace period: long enough for a host
 * that lost the store to have stopped its guests (it does so before its lease runs out).
 */
async function requireGone(ctx: AgentContext, host: string, graceMs: number): Promise<void> {
  const alive = `host '${host}' is alive (its lease is current): migrate or stop the VM there; recover is for VMs whose host is gone`;
  if (await ctx.state.host(host)) throw new RefusedError(alive);
  if (graceMs > 0) await new Promise((r) => setTimeout(r, graceMs));
  if (await ctx.state.host(host)) throw new RefusedError(`${alive} (it came back)`);
}
