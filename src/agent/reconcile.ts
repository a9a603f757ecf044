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
import { CancelPendingError } from '../migration/errors.ts';
import type { VmSpec } from '../qemu/spec.ts';
import { volumeOf } from '../storage/types.ts';
import { peer, storageCatalog, type AgentContext } from './context.ts';
import type { InstanceState } from './runtime.ts';
import { replicatedDisks } from '../storage/replicated.ts';
import { ip } from '../net/netns.ts';

/** How long reconcile waits for a source's migration to cancel before leaving it to the background. */
const RECONCILE_CANCEL_WAIT_MS = 1500;

export async function reconcile(ctx: AgentContext): Promise<void> {
  for (const recorded of await ctx.runtime.recorded()) {
    try {
      await reconcileInstance(ctx, recorded);
    } catch (err) {
      // One VM that cannot be sorted out must not keep the agent (and every other VM) down.
      ctx.log(`could not recover ${recorded.vm} (${recorded.role}): ${(err as Error).message}; it needs a look`);
      // Its QEMU died meanwhile (the watchdog, a crash): then it is simply not running, and must say so
      // (or HA, which believes the record, never starts it again).
      if (!isAlive(recorded.pid)) await recordEnded(ctx, recorded).catch(() => undefined);
    }
  }
  await closeMigrations(ctx);
  // What a QEMU that never got written down left (the agent died in a prepare, between making a
  // destination's volume or tap and launching its QEMU): nothing here uses it, and it would refuse
  // the next migration to this host.
  await removeStrayTaps(ctx).catch((err: Error) => ctx.log(`could not look for stray taps: ${err.message}`));
  await removeStrayLocalCopies(ctx).catch((err: Error) => ctx.log(`could not look for stray local copies: ${err.message}`));
}

/** ferry's taps (ft + 10 hex digits) in this host's namespace that no QEMU adopted here uses. */
async function removeStrayTaps(ctx: AgentContext): Promise<void> {
  const inUse = ctx.runtime.tapsInUse();
  const links = (await ip(ctx.node.netns, '-o', 'link', 'show')).split('\n');
  for (const tap of links.map((l) => /^\d+: (ft[0-9a-f]{10})[@:]/.exec(l)?.[1]).filter((t): t is string => !!t)) {
    if (inUse.has(tap)) continue;
    await ctx.runtime.network.detach(tap);
    ctx.log(`removed tap ${tap}: no QEMU here uses it (left by a destination that never launched, or by an earlier run)`);
  }
}

/** Local copies of the disks of VMs another host runs, with no migration of them involving this host. */
async function removeStrayLocalCopies(ctx: AgentContext): Promise<void> {
  const me = ctx.node.name;
  const involved = new Set((await ctx.state.migrations()).filter((m) => m.source === me || m.destination === me).map((m) => m.vm));
  for (const vm of await ctx.state.vms()) {
    if (vm.owner === me || involved.has(vm.spec.name) || ctx.runtime.get(vm.spec.name)) continue;
    await removeStaleLocalVolumes(ctx, vm.spec, `${vm.spec.name} runs on ${vm.owner}`);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A recorded QEMU that is gone: its host resources released and, if it was this host's running copy, the VM recorded as stopped. */
async function recordEnded(ctx: AgentContext, recorded: InstanceState): Promise<void> {
  if (recorded.role === 'running' && ctx.runtime.get(recorded.vm)?.process.pid === recorded.pid) ctx.runtime.release(recorded.vm);
  await ctx.runtime.forgetDead(recorded);
  const vm = await ctx.state.vm(recorded.vm);
  if (recorded.role === 'running' && vm?.owner === ctx.node.name && vm.desired === 'running') {
    await ctx.state.updateVm(vm, { desired: 'stopped' });
    ctx.log(`'${recorded.vm}' ended while the agent was down: recorded as stopped`);
  }
}

async function reconcileInstance(ctx: AgentContext, recorded: InstanceState): Promise<void> {
  const me = ctx.node.name;
  const instance = await ctx.runtime.adopt(recorded);
  const vm = await ctx.state.vm(recorded.vm);
  if (!instance) {
    // Its QEMU died while no agent watched (a crash, the watchdog). Its taps outlive it (a destination's
    // QEMU that exited when its stream broke), and so does the half copy of its local disks when the VM
    // is another host's.
    await recordEnded(ctx, recorded);
    if (vm && vm.owner !== me) await removeStaleLocalVolumes(ctx, recorded.spec, `${recorded.vm} is owned by ${vm.owner}`);
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
      // Briefly: the agent renews its lease and pets its watchdog only once reconcile is done, and a
      // stream stuck on a dead link would hold it past the watchdog's deadline (every HA guest here
      // killed). A cancel QEMU cannot finish yet completes in the background.
      if (!(replicated && isFencePaused(instance)))
        await new LocalSource(instance, { log: ctx.log }).cancelAndResume(RECONCILE_CANCEL_WAIT_MS).catch((err: Error) => {
          if (!(err instanceof CancelPendingError)) throw err;
          ctx.log(`${recorded.vm}: ${err.message}`);
        });
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
