/**
 * A migration as the source host's agent runs it (libvirt's begin, perform and
 * confirm): checked and written down as a job before anything moves, run in
 * the background, with progress and the final record saved to the job.
 * The switchover is the ownership compare-and-swap on the VM's record.
 */
import { randomUUID } from 'node:crypto';
import type { InFlightMigration, Job, OwnedVm } from '../cluster/model.ts';
import { migrate } from '../migration/engine.ts';
import { MigrationRolledBackError } from '../migration/errors.ts';
import { LocalSource } from '../migration/local.ts';
import { retryOnLostPages } from '../migration/retry.ts';
import type { SwitchoverHook } from '../migration/sides.ts';
import { DEFAULT_PARAMS, type MigrationParams, type MigrationProgress, type MigrationRecord } from '../migration/types.ts';
import type { VmInstance } from '../qemu/instance.ts';
import { planMigration } from '../migration/policy/policy.ts';
import { checkToken, peer, requireRoom, storageCatalog, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';
import { RemoteDestination } from './remote-destination.ts';
import { faultPoint } from './faults.ts';

export interface MigrateRequest {
  to: string;
  token: number;
  params?: Partial<MigrationParams>;
}

const running = new Map<string, AbortController>();

/** Checks everything a user can get wrong, then starts the job. Throws (changing nothing) when refused. */
export async function startMigration(ctx: AgentContext, name: string, request: MigrateRequest, by?: string): Promise<Job> {
  const vm = await checkToken(ctx, name, request.token);
  if (vm.owner !== ctx.node.name) throw new RefusedError(`'${name}' runs on ${vm.owner}, not on ${ctx.node.name}; send the request to its owner`);
  if (request.to === ctx.node.name) throw new RefusedError(`'${name}' already runs on ${request.to}; choose another host`);
  const instance = ctx.runtime.get(name);
  if (!instance) throw new RefusedError(`'${name}' is not running; start it with 'ferry vm start ${name}' (only a running VM is live-migrated)`);
  const params = request.params ?? {};
  try {
    planMigration(
      {
        name: params.policy ?? DEFAULT_PARAMS.policy,
        ...(params.allowPostcopy ? { allowPostcopy: true } : {}),
        ...(params.multifd !== undefined ? { multifd: params.multifd } : {}),
        ...(params.postcopyPreempt !== undefined ? { postcopyPreempt: params.postcopyPreempt } : {}),
        ...(params.downtimeLimitMs !== undefined ? { downtimeLimitMs: params.downtimeLimitMs } : {}),
      },
      vm.spec.memoryMiB,
    );
  } catch (err) {
    throw new RefusedError((err as Error).message);
  }
  const destinationAgent = await peer(ctx, request.to);
  await requireRoom(ctx, request.to, vm.spec, { liveFrom: ctx.node.name });

  const job = await ctx.state.newJob('migrate', name, ctx.node.name, by);
  const record: InFlightMigration = { id: randomUUID(), vm: name, source: ctx.node.name, destination: request.to, token: vm.token, jobId: job.id, startedAt: job.createdAt };
  if (!(await ctx.state.beginMigration(record))) {
    job.state = 'failed';
    job.error = `a migration of '${name}' is already in flight`;
    await ctx.state.saveJob(job);
    throw new RefusedError(`a migration of '${name}' is already in flight; wait for it (ferry job list) or cancel it`);
  }
  const cancel = new AbortController();
  running.set(job.id, cancel);
  void runMigration(ctx, vm, record, job, destinationAgent, params, cancel.signal)
    .catch((err: Error) => ctx.log(`[job ${job.id}] could not be closed properly: ${err.message}`))
    .finally(() => running.delete(job.id));
  return job;
}

export function cancelMigration(jobId: string): boolean {
  const c = running.get(jobId);
  c?.abort();
  return Boolean(c);
}

async function runMigration(
  ctx: AgentContext,
  vm: OwnedVm,
  record: InFlightMigration,
  job: Job,
  destinationAgent: Awaited<ReturnType<typeof peer>>,
  params: Partial<MigrationParams>,
  signal: AbortSignal,
): Promise<void> {
  const name = vm.spec.name;
  const instance = ctx.runtime.get(name);
  const log = (line: string) => {
    job.log.push(`${new Date().toISOString()} ${line}`);
    ctx.log(`[job ${job.id}] ${line}`);
  };
  if (!instance) {
    // Stopped or crashed while the request was being checked.
    job.state = 'failed';
    job.error = `'${name}' stopped running before the migration began; nothing was moved`;
    ctx.metrics?.migrationEnded(job);
    await ctx.state.endMigration(name).catch(() => undefined);
    await ctx.state.saveJob(job);
    return;
  }
  // Where the engine compares memory (QEMU < 9.0 under TCG, or --verify-memory always), a migration the check stops is tried again.
  let lastSave = 0;
  log(`migrating ${name} from ${ctx.node.name} to ${record.destination}`);
  try {
    const result = await retryOnLostPages(
      () =>
        migrateOnce(ctx, vm, record, instance, destinationAgent, params, signal, log, (p) => {
          job.progress = p;
          if (p.phase === 'confirm') ctx.runtime.release(name); // the source QEMU is being retired: not ours any more
          if (Date.now() - lastSave > 250 || !p.ram) {
            lastSave = Date.now();
            void ctx.state.saveJobProgress(job).catch(() => undefined);
          }
        }),
      { signal, log },
    );
    await ctx.runtime.forget(name, 'running');
    job.state = 'succeeded';
    job.result = result;
  } catch (err) {
    job.state = 'failed';
    job.error = (err as Error).message;
    if (err instanceof MigrationRolledBackError) job.result = err.record;
    log(`failed: ${job.error}`);
  } finally {
    ctx.metrics?.migrationEnded(job);
    // Both must reach the store, or the VM reads as migrating and the job as running for ever.
    await whileStoreAway(() => ctx.state.endMigration(name, record.id)).catch((err: Error) => log(`could not end the migration record: ${err.message}`));
    await whileStoreAway(() => ctx.state.saveJob(job));
  }
}

/** A write tried again while the store does not answer (a member died under it, no quorum yet), for up to 2 minutes. */
async function whileStoreAway<T>(write: () => Promise<T>): Promise<T> {
  const until = Date.now() + 120_000;
  for (let wait = 250; ; wait = Math.min(wait * 2, 5000)) {
    try {
      return await write();
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/** One attempt: a fresh destination, the ownership swap as the switchover. */
async function migrateOnce(
  ctx: AgentContext,
  vm: OwnedVm,
  record: InFlightMigration,
  instance: VmInstance,
  destinationAgent: Awaited<ReturnType<typeof peer>>,
  params: Partial<MigrationParams>,
  signal: AbortSignal,
  log: (line: string) => void,
  onProgress: (p: MigrationProgress) => void,
): Promise<MigrationRecord> {
  const name = vm.spec.name;
  const destination = new RemoteDestination(destinationAgent, instance.spec, {
    migrationId: record.id,
    source: ctx.node.name,
    accel: instance.accel,
    token: vm.token,
  });
  const switchover: SwitchoverHook = {
    commit: async () => {
      await faultPoint(ctx, 'before-ownership-swap', name);
      let token: number | undefined;
      try {
        token = await ctx.state.updateVm(vm, { owner: record.destination });
      } catch (err) {
        // The store may have applied the swap and lost the answer: what it holds now decides.
        const now = await ctx.state.vm(name);
        if (now?.owner !== record.destination || now.token <= vm.token) throw err;
        token = now.token;
      }
      if (token === undefined) return false;
      destination.ownerToken = token;
      log(`ownership of ${name} moved to ${record.destination} (token ${vm.token} -> ${token})`);
      await faultPoint(ctx, 'after-ownership-swap', name);
      return true;
    },
    revert: async () => {
      const now = await ctx.state.vm(name);
      if (now && now.token === destination.ownerToken) await ctx.state.updateVm(now, { owner: ctx.node.name });
    },
  };
  return migrate({
    source: new LocalSource(instance, { tls: { dir: ctx.node.certDir }, storage: await storageCatalog(ctx), replicas: ctx.replication, log }),
    destination,
    switchover,
    params,
    signal,
    log,
    onProgress,
  });
}
