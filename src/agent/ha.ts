/**
 * High availability on the agent: the admin's HA requests (`ferry ha …`), the HA manager this agent
 * runs (one agent of the cluster is the active one, cluster/ha/manager.ts), and what the manager asks
 * of a host. Those host routes answer only the host that holds the manager key at that moment: a
 * host's certificate alone starts nothing.
 */
import { HaManager } from '../cluster/ha/manager.ts';
import { HA_KEYS, HA_REQUESTS, HaRecords, type HaRequest, type HaResource, type HaRule } from '../cluster/ha/records.ts';
import { describeTiming, haTiming } from '../cluster/ha/timing.ts';
import type { OwnedVm } from '../cluster/model.ts';
import type { Store } from '../cluster/store/types.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import type { Caller } from './authz.ts';
import { ForbiddenError } from './authz.ts';
import { peer, requireRoom, requireVm, storageCatalog, type AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import { recoverVm } from './recover.ts';
import { cancelMigration, startMigration } from './source-migration.ts';
import { migrationParams } from './validate.ts';
import { MoveRunner } from '../cluster/moves/runner.ts';
import { startOwnVm, stopOwnVm } from './vm-start.ts';
import type { Route } from './server.ts';
import { BOOLEAN, fields, HOST, JOB_ID, listOf, NO_INPUT, NOTHING, oneOf, pathOnly, pathParams, RULE, text, VM, whole, type ObjectSchema } from './request-schema.ts';
import { POLICY_NAMES } from '../migration/policy/policy.ts';

const REQUEST = oneOf(HA_REQUESTS);
const COUNT = whole(0, 10);

/** `ferry ha rule add`: about hosts (nodes, with strict and failback) or about VMs together or apart. */
const RULE_BODY = fields(
  {
    name: RULE,
    vms: listOf(VM, 256),
    nodes: listOf(fields({ host: HOST, priority: whole(0, 1000, 'a priority from 0 to 1000') }, ['host']), 64),
    strict: BOOLEAN,
    failback: BOOLEAN,
    together: BOOLEAN,
  },
  ['name', 'vms'],
);

const DEFAULT_MAX_RESTART = 1;
const DEFAULT_MAX_RELOCATE = 1;

export function startHaManager(ctx: AgentContext, store: Store): HaManager {
  const migrateOn = async (host: string, vm: string, to: string, policy?: string) =>
    (await (await peer(ctx, host)).call<{ job: { id: string } }>('POST', `/v1/ha/hosts/migrate/${vm}`, { to, ...(policy ? { policy } : {}) }, 30_000)).job.id;
  const moves = new MoveRunner(
    store,
    {
      migrate: migrateOn,
      cancel: async (host, vm, jobId) => void (await (await peer(ctx, host)).call('POST', `/v1/ha/hosts/cancel/${vm}`, { jobId }, 30_000)),
    },
    ctx.log,
  );
  const manager = new HaManager({
    whileManager: (token) => moves.tick(token),
    store,
    me: ctx.node.name,
    timing: haTiming(ctx.node.leaseTtlSeconds),
    log: ctx.log,
    actions: {
      recover: async (host, vm, start) => void (await (await peer(ctx, host)).call('POST', `/v1/ha/hosts/recover/${vm}`, { start }, 120_000)),
      start: async (host, vm) => void (await (await peer(ctx, host)).call('POST', `/v1/ha/hosts/start/${vm}`, {}, 120_000)),
      stop: async (host, vm) => void (await (await peer(ctx, host)).call('POST', `/v1/ha/hosts/stop/${vm}`, {}, 120_000)),
      migrate: async (host, vm, to) => void (await migrateOn(host, vm, to)),
      release: async (host, vm, to) => void (await (await peer(ctx, host)).call('POST', `/v1/ha/hosts/release/${vm}`, { to }, 30_000)),
    },
  });
  manager.start();
  return manager;
}

export function haRoutes(ctx: AgentContext): Route[] {
  const records = new HaRecords(ctx.state.store);
  const requireManager = async (caller: Caller) => {
    const manager = await records.manager();
    if (!manager || manager.host !== caller.name)
      throw new ForbiddenError(`host '${caller.name}' is not the HA manager${manager ? ` ('${manager.host}' is)` : ' (there is none now)'}; only the manager asks hosts to take VMs over`);
  };
  /** The manager asks, about a VM this host owns. */
  const ownedHereAsked = async (caller: Caller, vm: string) => {
    await requireManager(caller);
    const record = await requireVm(ctx, vm);
    if (record.owner !== ctx.node.name) throw new RefusedError(`'${vm}' is owned by ${record.owner}, not ${ctx.node.name}`);
    return record;
  };
  /** A route the manager calls on the host that owns the VM; answers the VM's record afterwards unless `act` answers. */
  const askedOfOwner = (verb: string, body: ObjectSchema, act: (record: OwnedVm, body: Record<string, unknown>) => Promise<unknown>): Route => ({
    method: 'POST',
    pattern: `/v1/ha/hosts/${verb}/:vm`,
    who: 'host',
    input: { params: pathParams({ vm: VM }), body },
    handler: async (params, body, caller) => {
      const vm = nameParam(params['vm'], 'VM');
      return (await act(await ownedHereAsked(caller, vm), body)) ?? { vm: await ctx.state.vm(vm) };
    },
  });
  return [
    {
      method: 'GET',
      pattern: '/v1/ha',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => ({
        manager: (await records.manager()) ?? null,
        maintenance: (await records.maintenance()) ?? null,
        timing: describeTiming(haTiming(ctx.node.leaseTtlSeconds)),
        resources: await records.resources(),
        statuses: await records.statuses(),
        rules: await records.rules(),
      }),
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/maintenance',
      who: 'admin',
      input: { params: NOTHING, body: fields({ on: BOOLEAN, force: BOOLEAN, reason: text(1000) }, ['on']) },
      handler: async (_, body, caller) => {
        if (typeof body['on'] !== 'boolean') throw new RefusedError('cluster maintenance is switched on or off');
        const current = await records.maintenance();
        if (!body['on']) {
          await records.setMaintenance(undefined);
          if (current) ctx.log(`cluster maintenance off (${caller.name}); it was on since ${current.since}`);
          return { maintenance: null, was: current ?? null };
        }
        if (current) return { maintenance: current };
        const recovering = (await records.statuses()).filter((s) => s.actual === 'recovering');
        if (recovering.length && body['force'] !== true)
          throw new RefusedError(
            `the HA manager is recovering ${recovering.map((s) => `${s.vm}${s.host ? ` on ${s.host}` : ''}`).join(', ')}: maintenance now would leave that half done. ` +
              "Wait until 'ferry ha status' shows it running, or pass --force",
          );
        const maintenance = { since: new Date().toISOString(), by: caller.name, ...(typeof body['reason'] === 'string' && body['reason'] ? { reason: body['reason'].slice(0, 200) } : {}) };
        await records.setMaintenance(maintenance);
        ctx.log(`cluster maintenance on (${caller.name}${maintenance.reason ? `: ${maintenance.reason}` : ''})`);
        return { maintenance };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/ha/rules',
      who: 'admin',
      input: { params: NOTHING, body: RULE_BODY },
      handler: async (_, body) => {
        const rule = await parseRule(ctx, body);
        if (!(await records.addRule(rule))) throw new RefusedError(`there is a rule named '${rule.name}' already; remove it first (ferry ha rule remove ${rule.name}) or choose another name`);
        ctx.log(`HA: rule ${rule.name} added`);
        return { rule };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/ha/rules/:name',
      who: 'admin',
      input: pathOnly({ name: RULE }),
      handler: async (params) => {
        const name = nameParam(params['name'], 'rule');
        if (!(await records.removeRule(name))) throw new NotFoundError(`no HA rule named '${name}'; see 'ferry ha rule list'`);
        return { removed: name };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/ha/resources',
      who: 'admin',
      input: { params: NOTHING, body: fields({ vm: VM, request: REQUEST, maxRestart: COUNT, maxRelocate: COUNT }, ['vm']) },
      handler: async (_, body) => {
        const vm = String(body['vm'] ?? '');
        if (!NAME_PATTERN.test(vm)) throw new RefusedError(`'${vm}' is not a VM name`);
        await requireVm(ctx, vm);
        if (await records.resource(vm)) throw new RefusedError(`'${vm}' is under HA already; change it with 'ferry ha set ${vm} …'`);
        const resource: HaResource = {
          vm,
          request: parseRequest(body['request'] ?? 'started'),
          maxRestart: parseCount(body['maxRestart'] ?? DEFAULT_MAX_RESTART, 'max-restart'),
          maxRelocate: parseCount(body['maxRelocate'] ?? DEFAULT_MAX_RELOCATE, 'max-relocate'),
          addedAt: new Date().toISOString(),
        };
        await records.putResource(resource);
        ctx.log(`HA: ${vm} added (${resource.request}, max-restart ${resource.maxRestart}, max-relocate ${resource.maxRelocate})`);
        return { resource };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/ha/resources/:vm',
      who: 'admin',
      input: { params: pathParams({ vm: VM }), body: fields({ request: REQUEST, maxRestart: COUNT, maxRelocate: COUNT }) },
      handler: async (params, body) => {
        const vm = nameParam(params['vm'], 'VM');
        const current = await records.resource(vm);
        if (!current) throw new NotFoundError(`'${vm}' is not under HA; add it with 'ferry ha add ${vm}'`);
        const status = await records.status(vm);
        const request = body['request'] === undefined ? current.request : parseRequest(body['request']);
        if (status?.actual === 'error' && request !== 'disabled')
          throw new RefusedError(`'${vm}' is in error (${status.reason ?? 'see ferry ha status'}): set it disabled first (ferry ha set ${vm} --state disabled), then started`);
        const resource: HaResource = {
          ...current,
          request,
          ...(body['maxRestart'] !== undefined ? { maxRestart: parseCount(body['maxRestart'], 'max-restart') } : {}),
          ...(body['maxRelocate'] !== undefined ? { maxRelocate: parseCount(body['maxRelocate'], 'max-relocate') } : {}),
        };
        await records.putResource(resource);
        // Into or out of `disabled`: past failures (and `error`) are forgotten, the count starts afresh.
        if (request === 'disabled' || current.request === 'disabled') await ctx.state.store.delete(HA_KEYS.status(vm));
        return { resource };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/ha/resources/:vm',
      who: 'admin',
      input: pathOnly({ vm: VM }),
      handler: async (params) => {
        const vm = nameParam(params['vm'], 'VM');
        if (!(await records.resource(vm))) throw new NotFoundError(`'${vm}' is not under HA`);
        await records.removeResource(vm);
        return { removed: vm };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/ha/hosts/recover/:vm',
      who: 'host',
      input: { params: pathParams({ vm: VM }), body: fields({ start: BOOLEAN }) },
      handler: async (params, body, caller) => {
        const vm = nameParam(params['vm'], 'VM');
        await requireManager(caller);
        return { vm: await recoverVm(ctx, vm, { acceptDataLoss: false, start: body['start'] !== false, by: 'ha' }) };
      },
    },
    askedOfOwner('start', NOTHING, async (record) => {
      if (ctx.runtime.get(record.spec.name)) return;
      await ctx.state.asJob('start', record.spec.name, ctx.node.name, `the HA manager starts ${record.spec.name} on ${ctx.node.name} (HA requests it started)`, () => startOwnVm(ctx, record));
    }),
    askedOfOwner('stop', NOTHING, async (record) => {
      const name = record.spec.name;
      if (ctx.runtime.get(name)) await ctx.state.asJob('stop', name, ctx.node.name, `the HA manager stops ${name} on ${ctx.node.name} (HA requests it stopped)`, () => stopOwnVm(ctx, record, false));
      else if (record.desired !== 'stopped') await ctx.state.updateVm(record, { desired: 'stopped' });
    }),
    // Failback: the same checks and job as the admin's `ferry vm migrate`; the manager does not wait for the end.
    askedOfOwner('migrate', fields({ to: HOST, policy: oneOf(POLICY_NAMES) }, ['to']), async (record, body) => ({
      job: await startMigration(ctx, record.spec.name, { to: nameParam(stringOf(body['to']), 'host'), token: record.token, params: migrationParams(body['policy'] === undefined ? undefined : { policy: body['policy'] }) }),
    })),
    askedOfOwner('cancel', fields({ jobId: JOB_ID }, ['jobId']), async (record, body) => {
      const jobId = String(body['jobId'] ?? '');
      const job = /^[0-9]{14}-[0-9a-f]{8}$/.test(jobId) ? await ctx.state.job(jobId) : undefined;
      if (job?.kind !== 'migrate' || job.vm !== record.spec.name || job.host !== ctx.node.name)
        throw new RefusedError(`'${jobId}' is not a migration of '${record.spec.name}' from ${ctx.node.name}`);
      return { cancelled: cancelMigration(jobId), vm: record.spec.name };
    }),
    askedOfOwner('release', fields({ to: HOST }, ['to']), async (record, body) => {
      const vm = record.spec.name;
      const to = nameParam(stringOf(body['to']), 'host');
      // Recorded stopped too: a start under way says running before its QEMU exists.
      if (ctx.runtime.get(vm) || record.desired !== 'stopped') throw new RefusedError(`'${vm}' runs (or is starting) on ${ctx.node.name}: it is moved by migration, not handed over`);
      if (!(await ctx.state.host(to))) throw new RefusedError(`host '${to}' has no live lease; '${vm}' stays on ${ctx.node.name}`);
      await requireRoom(ctx, to, record.spec);
      const storage = await storageCatalog(ctx);
      const unmovable = (record.spec.disks ?? []).find((d) => !storage.get(d.pool).shared);
      if (unmovable) throw new RefusedError(`disk ${unmovable.id} of '${vm}' is in pool '${unmovable.pool}', which ${to} does not share with ${ctx.node.name}`);
      await ctx.state.asJob('handover', vm, ctx.node.name, `the HA manager hands the stopped ${vm} from ${ctx.node.name} to ${to} (it failed to start here)`, async () => {
        if ((await ctx.state.updateVm(record, { owner: to, desired: 'stopped' })) === undefined) throw new RefusedError(`'${vm}' changed while being handed over; the manager looks again`);
      });
      ctx.log(`HA: stopped ${vm} handed over to ${to} (it failed to start here)`);
    }),
  ];
}

function parseRequest(value: unknown): HaRequest {
  if (typeof value === 'string' && (HA_REQUESTS as readonly string[]).includes(value)) return value as HaRequest;
  throw new RefusedError(`--state ${String(value)}: choose ${HA_REQUESTS.join(', ')}`);
}

function parseCount(value: unknown, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 10) throw new RefusedError(`--${flag} ${String(value)}: a whole number from 0 to 10`);
  return n;
}

/** A placement rule from a request: names that exist, priorities that are numbers, one kind only. */
async function parseRule(ctx: AgentContext, body: Record<string, unknown>): Promise<HaRule> {
  const name = String(body['name'] ?? '');
  if (!NAME_PATTERN.test(name)) throw new RefusedError(`'${name}' is not a rule name: ${NAME_RULE}`);
  const vms = Array.isArray(body['vms']) ? body['vms'].map(String) : [];
  if (!vms.length) throw new RefusedError('--vms names the VMs the rule is about (a comma-separated list)');
  for (const vm of vms) await requireVm(ctx, vm);
  if (body['nodes'] !== undefined) {
    if (body['together'] !== undefined) throw new RefusedError('a rule is about hosts (--nodes) or about VMs together or apart, not both');
    const nodes = (Array.isArray(body['nodes']) ? body['nodes'] : []).map((n) => n as { host?: unknown; priority?: unknown });
    if (!nodes.length) throw new RefusedError('--nodes names at least one host (HOST[:PRIORITY],...)');
    const members = new Set((await ctx.state.members()).map((m) => m.name));
    const parsed = nodes.map((n) => {
      const host = String(n.host ?? '');
      const priority = Number(n.priority ?? 0);
      if (!members.has(host)) throw new RefusedError(`no host '${host}' has joined this cluster; see 'ferry node list'`);
      if (!Number.isInteger(priority) || priority < 0 || priority > 1000) throw new RefusedError(`${host}:${String(n.priority)}: a priority is a whole number from 0 to 1000`);
      return { host, priority };
    });
    return { name, kind: 'nodes', vms, nodes: parsed, strict: body['strict'] === true, failback: body['failback'] === true };
  }
  if (typeof body['together'] !== 'boolean') throw new RefusedError('say what the rule asks: --nodes HOST[:PRIORITY],... [--strict], or --together, or --apart');
  if (vms.length < 2) throw new RefusedError('keeping VMs together or apart takes at least two VMs');
  return { name, kind: 'vms', vms, together: body['together'] };
}

function stringOf(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** A name from the path, checked before it becomes part of a store key (a decoded '%2F' is a '/'). */
function nameParam(value: string | undefined, what: string): string {
  if (!value || !NAME_PATTERN.test(value)) throw new RefusedError(`'${value ?? ''}' is not a ${what} name: ${NAME_RULE}`);
  return value;
}
