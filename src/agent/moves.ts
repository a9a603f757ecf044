/**
 * The admin's side of the move jobs: `ferry node drain`, `ferry node maintenance on|off`, and the
 * jobs' progress and cancel. Each request checks, plans and writes the job down; the HA manager's
 * agent runs it (cluster/moves/runner.ts), so it goes on whatever happens to the CLI or this agent.
 */
import { randomUUID } from 'node:crypto';
import { HaRecords } from '../cluster/ha/records.ts';
import { planBalance, spreadOf } from '../cluster/moves/balance.ts';
import { planDrain, replicaWarnings } from '../cluster/moves/plan.ts';
import { predictorFrom } from '../cluster/moves/predict.ts';
import { finished, hostsTakingNoVm, MoveRecords, type HostMaintenance, type MoveItem, type MoveJob, type MoveJobKind, type MoveLimits } from '../cluster/moves/records.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import { callerName, type Caller } from './authz.ts';
import type { AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { BOOLEAN, fields, HOST, listOf, MOVE_JOB_ID, NO_INPUT, NOTHING, oneOf, pathOnly, pathParams, whole } from './request-schema.ts';
import { POLICY_NAMES } from '../migration/policy/policy.ts';
import { migrationParams } from './validate.ts';

/** Two migrations at once out of the drained host, one into each destination (KubeVirt: 2 outbound per node). */
const DEFAULT_PARALLEL = 2;

const PARALLEL = whole(1, 16);
const HOST_PATH = pathParams({ host: HOST });

export function moveRoutes(ctx: AgentContext): Route[] {
  const moves = new MoveRecords(ctx.state.store);
  const ha = new HaRecords(ctx.state.store);

  const plan = async (host: string, to?: string[]): Promise<{ items: MoveItem[]; warnings: string[] }> => {
    const [vms, hosts, pools, rules, unavailable, jobs] = await Promise.all([ctx.state.vms(), ctx.state.hosts(), ctx.state.pools(), ha.rules(), hostsTakingNoVm(ctx.state.store), ctx.state.jobs()]);
    unavailable.delete(host);
    const alive = new Set(hosts.map((h) => h.name));
    for (const t of to ?? []) if (!alive.has(t)) throw new RefusedError(`--to ${t}: no such host is up; see 'ferry node list'`);
    return { items: planDrain({ host, vms, hosts, pools, rules, unavailable, predict: predictorFrom(jobs), ...(to ? { to } : {}) }), warnings: replicaWarnings(host, vms, pools) };
  };

  const newJob = (kind: MoveJobKind, host: string | undefined, items: MoveItem[], limits: MoveLimits, caller: Caller, forMaintenance = false, policy?: string): MoveJob => ({
    id: `${kind}-${host ?? 'cluster'}-${randomUUID().slice(0, 8)}`,
    kind,
    ...(host ? { host } : {}),
    state: items.some((i) => i.progress.state === 'waiting') ? 'running' : 'done',
    limits,
    items,
    createdAt: new Date().toISOString(),
    by: callerName(caller),
    ...(forMaintenance ? { forMaintenance } : {}),
    ...(policy ? { policy } : {}),
  });

  /** A host is drained by one job at a time, and not while VMs are brought back to it. */
  const refuseSecondDrain = async (host: string) => {
    const running = (await moves.jobs()).find((j) => (j.kind === 'drain' || j.kind === 'return') && j.host === host && !finished(j));
    if (running)
      throw new RefusedError(
        `${running.kind === 'drain' ? `host '${host}' is being drained already` : `VMs are being brought back to '${host}'`} (job ${running.id}); follow it with 'ferry job show ${running.id}' or cancel it with 'ferry job cancel ${running.id}'`,
      );
  };

  return [
    {
      method: 'POST',
      pattern: '/v1/nodes/:host/drain',
      who: 'admin',
      input: { params: HOST_PATH, body: fields({ dryRun: BOOLEAN, to: listOf(HOST, 64), parallel: PARALLEL, policy: oneOf(POLICY_NAMES) }) },
      handler: async (params, body, caller) => {
        const host = await member(ctx, params['host']);
        const to = Array.isArray(body['to']) ? body['to'].map(String) : undefined;
        const [limits, policy] = [limitsOf(body['parallel']), policyOf(body['policy'])];
        const { items, warnings } = await plan(host, to);
        if (body['dryRun'] === true) return { plan: items, warnings };
        await refuseSecondDrain(host);
        const job = newJob('drain', host, items, limits, caller, false, policy);
        await moves.createJob(job);
        ctx.log(`drain of ${host} (job ${job.id}): ${items.filter((i) => i.progress.state === 'waiting').length} VM(s) to move, ${items.filter((i) => i.progress.state === 'blocked').length} blocked`);
        return { job, warnings };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/nodes/:host/maintenance',
      who: 'admin',
      input: { params: HOST_PATH, body: fields({ on: BOOLEAN, parallel: PARALLEL }, ['on']) },
      handler: async (params, body, caller) => {
        const host = await member(ctx, params['host']);
        if (typeof body['on'] !== 'boolean') throw new RefusedError('maintenance is switched on or off');
        const current = await moves.maintenance(host);
        if (body['on']) {
          if (current) return { maintenance: current, job: (await moves.job(current.drainId)) ?? null };
          const limits = limitsOf(body['parallel']);
          await refuseSecondDrain(host);
          const { items, warnings } = await plan(host);
          const job = newJob('drain', host, items, limits, caller, true);
          const maintenance: HostMaintenance = { host, since: new Date().toISOString(), by: callerName(caller), drainId: job.id };
          if (!(await moves.beginMaintenance(maintenance, job))) throw new RefusedError(`host '${host}' went into maintenance meanwhile; see 'ferry node list'`);
          ctx.log(`host ${host} in maintenance (${callerName(caller)}); drain ${job.id}`);
          return { maintenance, job, warnings };
        }
        if (!current) throw new RefusedError(`host '${host}' is not in maintenance; see 'ferry node list'`);
        const limits = limitsOf(body['parallel']);
        const drain = await moves.job(current.drainId);
        if (drain && !finished(drain))
          throw new RefusedError(`host '${host}' is still being drained (job ${drain.id}): cancel it first (ferry job cancel ${drain.id}; the VMs moved already stay), then end the maintenance`);
        // The VMs its drain moved come back (Proxmox's failback), where still there and running.
        const vms = new Map((await ctx.state.vms()).map((v) => [v.spec.name, v]));
        const back: MoveItem[] = (drain?.items ?? []).flatMap((item) => {
          const record = vms.get(item.vm);
          if (item.progress.state !== 'moved' || !record || record.owner !== item.to || record.desired !== 'running') return [];
          return [{ vm: item.vm, from: item.to, to: host, memoryMiB: record.spec.memoryMiB, why: `it left ${host} for its maintenance`, progress: { state: 'waiting' } }];
        });
        const job = back.length ? newJob('return', host, back, limits, caller) : undefined;
        await moves.endMaintenance(host, job);
        ctx.log(`host ${host} out of maintenance (${callerName(caller)}); ${back.length} VM(s) come back`);
        return { maintenance: null, job: job ?? null };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/balance',
      who: 'admin',
      input: { params: NOTHING, body: fields({ dryRun: BOOLEAN, parallel: PARALLEL }) },
      handler: async (_, body, caller) => {
        const limits = limitsOf(body['parallel']);
        const [vms, hosts, pools, rules, noVm] = await Promise.all([ctx.state.vms(), ctx.state.hosts(), ctx.state.pools(), ha.rules(), hostsTakingNoVm(ctx.state.store)]);
        const unavailable = new Set(noVm.keys());
        const items = planBalance({ vms, hosts, pools, rules, unavailable });
        const before = spreadOf(vms, hosts, unavailable);
        const moved = new Map(items.map((i) => [i.vm, i.to]));
        const predicted = spreadOf(vms.map((v) => (moved.has(v.spec.name) ? { ...v, owner: moved.get(v.spec.name)! } : v)), hosts, unavailable);
        if (body['dryRun'] === true || !items.length) return { plan: items, before, predicted, job: null };
        const running = (await moves.jobs()).find((j) => j.kind === 'balance' && !finished(j));
        if (running) throw new RefusedError(`a balance is running already (job ${running.id}); follow it with 'ferry job show ${running.id}'`);
        const job = newJob('balance', undefined, items, limits, caller);
        await moves.createJob(job);
        ctx.log(`balance (job ${job.id}): ${items.length} VM(s) to move, spread ${before.spreadPoints} → ${predicted.spreadPoints} points`);
        return { plan: items, before, predicted, job };
      },
    },
    {
      method: 'GET',
      pattern: '/v1/cluster/spread',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => {
        const [vms, hosts, noVm] = await Promise.all([ctx.state.vms(), ctx.state.hosts(), hostsTakingNoVm(ctx.state.store)]);
        return { spread: spreadOf(vms, hosts, new Set(noVm.keys())) };
      },
    },
    { method: 'GET', pattern: '/v1/moves', who: 'admin', input: NO_INPUT, handler: async () => ({ jobs: await moves.jobs(), maintenances: await moves.maintenances() }) },
    {
      method: 'GET',
      pattern: '/v1/moves/:id',
      who: 'admin',
      input: pathOnly({ id: MOVE_JOB_ID }),
      handler: async (params) => ({ job: await requireJob(moves, params['id']) }),
    },
    {
      method: 'POST',
      pattern: '/v1/moves/:id/cancel',
      who: 'admin',
      input: pathOnly({ id: MOVE_JOB_ID }),
      handler: async (params) => {
        const job = await requireJob(moves, params['id']);
        if (finished(job)) throw new RefusedError(`job ${job.id} has ended (${job.state}); nothing to cancel`);
        // The runner cancels the migrations under way (they roll back); finished moves stay. Written
        // against the revision read: the runner's own writes never overwrite it, nor it theirs.
        const cancelling = await moves.updateJob(job.id, (j) => (finished(j) || j.state === 'cancelling' ? undefined : { ...j, state: 'cancelling' }));
        return { job: cancelling };
      },
    },
  ];
}

async function member(ctx: AgentContext, value: string | undefined): Promise<string> {
  if (!value || !NAME_PATTERN.test(value)) throw new RefusedError(`'${value ?? ''}' is not a host name: ${NAME_RULE}`);
  if (!(await ctx.state.member(value))) throw new NotFoundError(`no host '${value}' has joined this cluster; see 'ferry node list'`);
  return value;
}

async function requireJob(moves: MoveRecords, id: string | undefined): Promise<MoveJob> {
  const job = id && /^[a-z]+-[A-Za-z0-9-]+$/.test(id) ? await moves.job(id) : undefined;
  if (!job) throw new NotFoundError(`no drain, return or balance job '${id ?? ''}'; see 'ferry job list'`);
  return job;
}

/** A migration policy by name, checked as `ferry vm migrate --policy` checks it. */
function policyOf(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  return migrationParams({ policy: value }).policy;
}

function limitsOf(value: unknown): MoveLimits {
  const n = value === undefined ? DEFAULT_PARALLEL : Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new RefusedError(`--parallel ${String(value)}: a whole number from 1 to 16`);
  return { total: n, perSource: n, perDestination: Math.max(1, Math.ceil(n / 2)) };
}
