/**
 * Recovery when an agent starts: every QEMU an earlier run wrote down is
 * compared with the store, and the store wins. A copy this host owns keeps (or
 * resumes) running; a copy it does not own is removed. An in-flight migration
 * this host was the source of is closed: rolled back if ownership had not
 * moved, completed if it had. After this, exactly one host runs each VM and
 * the store agrees with what runs.
 */
import { isFencePaused } from './replica-fence.ts';
import { LocalSource } from '../migration/local.ts';
import type { VmSpec } from '../qemu/spec.ts';
import { volumeOf } from '../storage/types.ts';
import { peer, storageCatalog, type AgentContext } from './context.ts';
import type { InstanceState } from './runtime.ts';
import { replicatedDisks } from '../storage/replicated.ts';

export async function reconcile(ctx: AgentContext): Promise<void> {
  for (const recorded of await ctx.runtime.recorded()) {
    try {
      await reconcileInstance(ctx, recorded);
    } catch (err) {
      // One VM that cannot be sorted out must not keep the agent (and every other VM) down.
      ctx.log(`could not recover ${recorded.vm} (${recorded.role}): ${(err as Error).message}; it needs a look`);
    }
  }
  await closeMigrations(ctx);
}

async function reconcileInstance(ctx: AgentContext, recorded: InstanceState): Promise<void> {
  const me = ctx.node.name;
  const instance = await ctx.runtime.adopt(recorded);
  const vm = await ctx.state.vm(recorded.vm);
  if (!instance) {
    // Its taps outlive it (a destination's QEMU that exited when its stream broke while the agent was down),
    // and so does the half copy of its local disks when the VM is another host's.
    await ctx.runtime.forgetDead(recorded);
    if (vm && vm.owner !== me) await removeStaleLocalVolumes(ctx, recorded.spec, `${recorded.vm} is owned by ${vm.owner}`);
    // Its QEMU died while no agent watched (a crash, the watchdog): the record says it is not running.
    if (recorded.role === 'running' && vm?.owner === me && vm.desired === 'running') {
      await ctx.state.updateVm(vm, { desired: 'stopped' });
      ctx.log(`'${recorded.vm}' ended while the agent was down: recorded as stopped`);
    }
    return;
  }
  if (vm?.owner === me) {
    const before = (await instance.qmp.execute<{ status: string }>('query-status')).status;
    // This copy is the owner's and must run: a source may be mid-stream or paused at the end of a
    // stream that never switched over (cancel, resume); a destination may have won the swap but
    // never been resumed (cont).
    const replicated = replicatedDisks(recorded.spec).length > 0;
    if (recorded.role === 'running') {
      // A stream that completed: this host may serve its replicas already, which the guest needs back.
      if (replicated && before === 'postmigrate') await ctx.replication.stopServing(recorded.spec);
      // A guest paused because a write missed its peer stays paused until the replication
      // manager has written the peer down as outdated (replica-fence.ts).
      if (!(replicated && isFencePaused(instance))) await new LocalSource(instance).cancelAndResume();
    } else if (before !== 'running') {
      // A destination that won the swap: its NBD exports (a disk copy) must be gone before the guest
      // writes, and its replicated disks replicate into the old primary's replicas.
      await instance.qmp.execute('nbd-server-stop').catch(() => undefined);
      if (replicated) await ctx.replication.takeOver(instance);
      await instance.qmp.execute('cont');
    }
    // Replication that had ended for the switchover is started again by the next pass (in full).
    ctx.log(`recovered ${recorded.vm}: was ${before}, now running (this host owns it)`);
    await ctx.runtime.adoptRunning(instance);
    if (recorded.role === 'incoming') await ctx.runtime.forget(recorded.vm, 'incoming');
  } else {
    await instance.destroy();
    await ctx.runtime.forget(recorded.vm, recorded.role);
    ctx.log(`removed a stale ${recorded.role} copy of ${recorded.vm} (owner: ${vm?.owner ?? 'none'})`);
    if (vm) await removeStaleLocalVolumes(ctx, recorded.spec, `${recorded.vm} is owned by ${vm.owner}`);
  }
}

/**
 * Local volumes of a VM that another host owns are stale here: a half copy of
 * an aborted incoming migration, or the source's copy after the swap. Only
 * called once the store says so; shared volumes and replicas are never touched.
 */
async function removeStaleLocalVolumes(ctx: AgentContext, spec: VmSpec, why: string): Promise<void> {
  const storage = await storageCatalog(ctx);
  for (const disk of spec.disks ?? []) {
    try {
      const driver = storage.get(disk.pool);
      // A replica is this host's half of a replicated volume, not a stale copy: it stays.
      if (driver.shared || disk.replicas?.length || !(await driver.exists(volumeOf(disk)))) continue;
      await driver.delete(volumeOf(disk));
      ctx.log(`removed the stale local copy of volume ${disk.pool}/${disk.volume} (${why})`);
    } catch (err) {
      ctx.log(`could not remove the stale local copy of ${disk.pool}/${disk.volume}: ${(err as Error).message}`);
    }
  }
}

async function closeMigrations(ctx: AgentContext): Promise<void> {
  const me = ctx.node.name;
  for (const m of await ctx.state.migrations()) {
    if (m.source !== me && m.destination !== me) continue;
    const vm = await ctx.state.vm(m.vm);
    const job = await ctx.state.job(m.jobId);
    const switched = vm?.owner === m.destination;
    if (m.source === me && switched && vm) {
      // The swap happened but this agent died before telling the destination to run: tell it now.
      await peer(ctx, m.destination)
        .then((client) => client.call('POST', `/v1/incoming/${m.id}/resume`, { token: vm.token }))
        .catch(() => undefined); // already running, or its agent restarted and resumed it itself
    }
    if (m.source === me && !switched) {
      // Tell the destination to drop its paused copy; it may be gone already.
      await peer(ctx, m.destination)
        .then((client) => client.call('POST', `/v1/incoming/${m.id}/abort`, {}))
        .catch(() => undefined);
    }
    if (job && job.state === 'running') {
      job.state = switched ? 'succeeded' : 'failed';
      job.log.push(`${new Date().toISOString()} agent of ${me} restarted during the migration; ${switched ? `ownership had moved: ${m.vm} runs on ${m.destination}` : `rolled back: ${m.vm} runs on ${m.source}`}`);
      if (!switched) job.error = `interrupted by the restart of ${me}'s agent; rolled back`;
      await ctx.state.saveJob(job);
    }
    await ctx.state.endMigration(m.vm);
  }
}
