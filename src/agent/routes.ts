/** The agent's API routes. Every change to a VM carries its fencing token. */
import type { ClusterConfig } from './config.ts';
import { checkToken, freeMemoryMiB, requireVm, type AgentContext } from './context.ts';
import { ApiError, NotFoundError, RefusedError } from './errors.ts';
import { GuestAgentRefusedError, GuestAgentUnavailableError, guestAgentCall, guestInfo } from '../qemu/guest-agent.ts';
import type { IncomingMigrations } from './incoming.ts';
import type { IncomingRequest } from './remote-destination.ts';
import type { JsonRoute, Route } from './server.ts';
import { dryRun, type HistoryChoice } from './predict.ts';
import { migrationParams } from './validate.ts';
import { removeHost, revokeAdminCertificate } from './membership.ts';
import { cancelMigration, startMigration, type MigrateRequest } from './source-migration.ts';
import { localQemuBuild } from '../qemu/host-probe.ts';
import type { VmSpec } from '../qemu/spec.ts';
import type { OwnedVm } from '../cluster/model.ts';
import type { DiskNeed } from '../migration/sides.ts';
import { storageRoutes } from './storage-routes.ts';
import { recoverRoutes } from './recover.ts';
import { refuseIfHaDecides, startOwnVm, stopOwnVm } from './vm-start.ts';
import { HaRecords } from '../cluster/ha/records.ts';
import { haRoutes } from './ha.ts';
import { moveRoutes } from './moves.ts';
import { cpuRoutes } from './cpu.ts';
import { userRoutes } from './users.ts';
import { callerName } from './authz.ts';
import type { MigrationRecord } from '../migration/types.ts';
import { readClusterCpuModel } from '../cluster/cpu.ts';
import { MoveRecords } from '../cluster/moves/records.ts';
import { createVm } from './vm-create.ts';
import { imageRoutes } from './images.ts';
import { networkRoutes } from './networks.ts';
import { changeCdrom, parseCdromChange } from './cdrom.ts';
import { storageCatalog } from './context.ts';
import { BOOLEAN, fields, HOST, IMAGE, JOB_ID, NO_INPUT, NOTHING, oneOf, pathOnly, pathParams, text, TOKEN, VM, whole, type JsonInput, type Schema } from './request-schema.ts';
import { VM_CREATE_BODY } from './vm-create.ts';

/**
 * The routes of one incoming migration (/v1/incoming/:id/...): for hosts, and each answers only the
 * migration's source host — its certificate, not the request, says which. An id that is gone
 * already reaches the handler, which says so (or, for abort, does nothing).
 */
function sourceOnly(incoming: IncomingMigrations, routes: Omit<JsonRoute, 'who' | 'input'>[]): Route[] {
  return routes.map((r) => ({
    ...r,
    who: 'host',
    input: { params: pathParams({ id: MIGRATION_ID }), body: INCOMING_BODIES[r.pattern] ?? NOTHING },
    handler: async (params, body, caller) => {
      incoming.requireSource(params['id']!, caller);
      return r.handler(params, body, caller);
    },
  }));
}

/**
 * An incoming migration's id: what its source host gave it (a UUID), compared with the source's
 * in-flight record before anything is made; any id of this shape gets that answer.
 */
const MIGRATION_ID = { type: 'string', pattern: '^[A-Za-z0-9-]{1,64}$', description: "a migration id (1 to 64 of A-Z a-z 0-9 '-')" } as const;

/** The VM a host-to-host request is about: its spec as the source sends it (only its name is read: the rest comes from the store). */
const SENT_SPEC: Schema = { type: 'object', required: ['name'], properties: { name: VM }, description: "a VM spec naming the VM" };
const DISK_NEEDS: Schema = {
  type: 'array',
  maxItems: 64,
  items: fields({ id: { type: 'string', pattern: '^disk[0-9]{1,3}$', description: 'a disk id like disk0' }, allocatedBytes: whole(0, 2 ** 53 - 1, 'a number of bytes') }, ['id', 'allocatedBytes']),
};

/** prepare, from the migration's source host (remote-destination.ts sends it). */
const INCOMING_PREPARE: JsonInput = {
  params: NOTHING,
  body: fields(
    {
      migrationId: MIGRATION_ID,
      source: HOST,
      spec: SENT_SPEC,
      accel: oneOf(['kvm', 'tcg']),
      token: TOKEN,
      capabilities: { type: 'object', description: "the migration's capabilities (an object)" },
      disks: DISK_NEEDS,
    },
    ['migrationId', 'spec', 'accel', 'token', 'capabilities'],
  ),
};

/** The bodies of the routes of one incoming migration that take one. */
const INCOMING_BODIES: Record<string, ReturnType<typeof fields>> = {
  '/v1/incoming/:id/wait': fields({ timeoutMs: whole(0, 60_000) }),
  '/v1/incoming/:id/resume': fields({ token: TOKEN }, ['token']),
};

let dryRunning = false;

async function oneDryRunAtATime<T>(body: () => Promise<T>): Promise<T> {
  if (dryRunning) throw new RefusedError('another dry run is measuring on this host; try again when it is done');
  dryRunning = true;
  try {
    return await body();
  } finally {
    dryRunning = false;
  }
}

export function routes(ctx: AgentContext, incoming: IncomingMigrations, cluster: ClusterConfig): Route[] {
  const { state, runtime, node } = ctx;
  const mine = async (name: string, token: unknown): Promise<OwnedVm> => {
    const vm = await checkToken(ctx, name, token);
    if (vm.owner !== node.name) throw new RefusedError(`'${name}' is owned by ${vm.owner}; send the request to that host`);
    return vm;
  };

  /** A guest agent call on a VM running here; 503 when the guest does not answer. */
  const askGuest = async <T>(name: string, call: (socket: string) => Promise<T>): Promise<T> => {
    const instance = runtime.require(name);
    if (!instance.spec.guestAgent) throw new RefusedError(`'${name}' has no guest agent channel (ferry's own test guest has none; VMs made from images have one)`);
    try {
      return await call(instance.guestAgentSocket);
    } catch (err) {
      if (err instanceof GuestAgentUnavailableError) throw new ApiError(503, err.message);
      if (err instanceof GuestAgentRefusedError) throw new ApiError(409, err.message);
      throw err;
    }
  };

  /** start, stop, destroy: a VM of this host, with its token (the CLI sends --force with each). */
  const OWN_VM_ACTION: JsonInput = { params: pathParams({ name: VM }), body: fields({ token: TOKEN, force: BOOLEAN }, ['token']) };

  return [
    ...storageRoutes(ctx),
    ...recoverRoutes(ctx),
    ...haRoutes(ctx),
    ...moveRoutes(ctx),
    ...cpuRoutes(ctx),
    ...userRoutes(ctx),
    ...imageRoutes(ctx),
    ...networkRoutes(ctx),
    {
      method: 'GET',
      pattern: '/v1/health',
      who: 'admin-or-host',
      input: NO_INPUT,
      handler: async () => ({ host: node.name, vms: await runtime.list(), store: await storeAnswers(ctx) }),
    },

    { method: 'GET', pattern: '/v1/host/qemu', who: 'admin-or-host', input: NO_INPUT, handler: async () => ({ qemu: await localQemuBuild() }) },

    {
      method: 'GET',
      pattern: '/v1/cluster/hosts',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => ({
        hosts: await Promise.all((await state.hosts()).map(async (h) => ({ ...h, freeMemoryMiB: await freeMemoryMiB(ctx, h.name) }))),
        clusterMaintenance: (await new HaRecords(state.store).maintenance()) ?? null,
        maintenance: await new MoveRecords(state.store).maintenances(),
        clusterCpuModel: (await readClusterCpuModel(state.store)) ?? null,
      }),
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/hosts/:name/remove',
      who: 'admin',
      input: { params: pathParams({ name: HOST }), body: fields({ reason: text(1000) }) },
      handler: async ({ name }, body) => removeHost(ctx, name!, typeof body['reason'] === 'string' ? body['reason'].slice(0, 200) : 'removed with ferry node remove'),
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/certificates/revoke',
      who: 'admin',
      input: {
        params: NOTHING,
        body: fields({ fingerprint: { type: 'string', pattern: '^[0-9a-f]{64}$', description: 'a SHA-256 fingerprint (64 lower-case hex digits)' }, reason: text(1000) }, ['fingerprint']),
      },
      handler: async (_, body, caller) => ({ revoked: await revokeAdminCertificate(ctx, caller, String(body['fingerprint'] ?? ''), typeof body['reason'] === 'string' ? body['reason'].slice(0, 200) : 'revoked by the admin') }),
    },
    {
      method: 'GET',
      pattern: '/v1/cluster/vms',
      who: 'admin',
      input: NO_INPUT,
      handler: async () => ({ vms: await state.vms(), clusterMaintenance: (await new HaRecords(state.store).maintenance()) ?? null }),
    },
    { method: 'GET', pattern: '/v1/cluster/vms/:name', who: 'admin', input: pathOnly({ name: VM }), handler: async ({ name }) => ({ vm: await requireVm(ctx, name!), migration: await state.migration(name!) }) },

    { method: 'POST', pattern: '/v1/vms', who: 'admin', input: { params: NOTHING, body: VM_CREATE_BODY }, handler: async (_, body) => createVm(ctx, cluster, body) },
    {
      // What the guest says about itself, where it runs the QEMU guest agent.
      method: 'GET',
      pattern: '/v1/vms/:name/guest',
      who: 'admin',
      input: pathOnly({ name: VM }),
      handler: async ({ name }) => ({ host: node.name, ...(await askGuest(name!, (socket) => guestInfo(socket))) }),
    },
    {
      // Filesystems frozen for a consistent snapshot, then thawed (status: 'frozen' or 'thawed').
      method: 'POST',
      pattern: '/v1/vms/:name/guest/fsfreeze',
      who: 'admin',
      input: { params: pathParams({ name: VM }), body: fields({ action: oneOf(['freeze', 'thaw', 'status']), token: TOKEN }, ['action']) },
      handler: async ({ name }, body) => {
        const action = String(body['action'] ?? '');
        const command = ({ freeze: 'guest-fsfreeze-freeze', thaw: 'guest-fsfreeze-thaw', status: 'guest-fsfreeze-status' } as Record<string, string>)[action];
        if (!command) throw new RefusedError(`fsfreeze action '${action}' must be freeze, thaw or status`);
        if (action !== 'status') await mine(name!, body['token']);
        const result = await askGuest(name!, async (socket) => {
          try {
            return await guestAgentCall<number | string>(socket, command, undefined, 30_000);
          } catch (err) {
            // A freeze that did not answer in time may still have frozen the guest: say which it is now.
            if (!(err instanceof GuestAgentUnavailableError) || action !== 'freeze') throw err;
            const now = await guestAgentCall<string>(socket, 'guest-fsfreeze-status', undefined, 5_000).catch(() => 'unknown');
            throw new GuestAgentUnavailableError(`${err.message}; the guest's filesystems are ${now} now${now === 'frozen' ? ` (thaw them with 'ferry vm fsfreeze ${name} thaw')` : ''}`);
          }
        });
        ctx.log(`${name}: guest filesystems ${action === 'status' ? `are ${result}` : `${action === 'freeze' ? 'frozen' : 'thawed'} (${result})`}`);
        return { action, result };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/cdrom',
      who: 'admin',
      input: { params: pathParams({ name: VM }), body: fields({ action: oneOf(['eject', 'insert']), image: IMAGE, token: TOKEN }, ['action', 'token']) },
      handler: async ({ name }, body) => ({ vm: await changeCdrom(ctx, await mine(name!, body['token']), parseCdromChange(body)) }),
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/start',
      who: 'admin',
      input: OWN_VM_ACTION,
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        await refuseIfHaDecides(ctx, name!, 'start');
        await startOwnVm(ctx, vm);
        return { vm: await state.vm(name!) };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/stop',
      who: 'admin',
      input: OWN_VM_ACTION,
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        if (!runtime.get(name!)) throw new RefusedError(`'${name}' is not running`);
        await refuseIfHaDecides(ctx, name!, 'stop');
        return { outcome: await stopOwnVm(ctx, vm, body['force'] === true) };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/vms/:name',
      who: 'admin',
      input: OWN_VM_ACTION,
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        if (await new HaRecords(state.store).resource(name!))
          throw new RefusedError(`'${name}' is under HA: the manager would keep bringing it back; remove it from HA first (ferry ha remove ${name})`);
        if (await state.migration(name!)) throw new RefusedError(`'${name}' is being migrated; wait for the migration to end`);
        if (runtime.get(name!)) await runtime.stop(name!, true);
        // Its volumes stay (data is never deleted implicitly), detached, where they are. Detached
        // first: a crash between the two steps then leaves a VM without volumes, not volumes held by no VM.
        const kept: string[] = [];
        const storage = await storageCatalog(ctx);
        for (const disk of vm.spec.disks ?? []) {
          const volume = await state.volume(disk.pool, disk.volume);
          if (!volume || volume.vm !== name) continue;
          const { vm: _vm, ...detached } = volume;
          await state.updateVolume({ ...detached, revision: volume.revision }, storage.get(disk.pool).shared ? {} : { host: node.name });
          kept.push(`${disk.pool}/${disk.volume}`);
        }
        if (!(await state.deleteVm(vm))) throw new RefusedError(`'${name}' changed while being destroyed; try again`);
        return { destroyed: name, keptVolumes: kept };
      },
    },
    { method: 'GET', pattern: '/v1/vms/:name/console', who: 'admin', input: pathOnly({ name: VM }), handler: async ({ name }) => ({ log: await runtime.consoleLog(name!) }) },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/migrate',
      who: 'operator',
      input: {
        params: pathParams({ name: VM }),
        // The parameters' names, types and ranges are migrationParams' to check (validate.ts).
        body: fields({ to: HOST, token: TOKEN, params: { type: 'object', description: 'an object of migration parameters' } }, ['to', 'token']),
      },
      handler: async ({ name }, body, caller) => ({ job: await startMigration(ctx, name!, { ...(body as unknown as MigrateRequest), params: migrationParams(body['params']) }, callerName(caller)) }),
    },

    // A dry run sends 3 × 16 MiB to the destination and scans the guest's RAM: one at a time per host.
    {
      method: 'POST',
      pattern: '/v1/vms/:name/predict',
      who: 'operator',
      input: { params: pathParams({ name: VM }), body: fields({ to: HOST, history: oneOf(['all', 'other-vms', 'none']) }, ['to']) },
      handler: async ({ name }, body) => oneDryRunAtATime(() => dryRun(ctx, name!, String(body['to'] ?? ''), (body['history'] ?? 'all') as HistoryChoice)),
    },
    { method: 'GET', pattern: '/v1/jobs', who: 'admin', input: NO_INPUT, handler: async () => ({ jobs: await state.jobs() }) },
    {
      method: 'GET',
      pattern: '/v1/jobs/:id',
      who: 'admin',
      input: pathOnly({ id: JOB_ID }),
      handler: async ({ id }) => {
        const job = await state.job(id!);
        if (!job) throw new NotFoundError(`no job ${id}; see 'ferry job list'`);
        return { job };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/jobs/:id/cancel',
      who: 'operator',
      input: pathOnly({ id: JOB_ID }),
      handler: async ({ id }, _body, caller) => {
        const cancelled = cancelMigration(id!);
        if (cancelled) ctx.log(`job ${id} cancelled by ${callerName(caller)}`);
        return { cancelled };
      },
    },

    {
      method: 'POST',
      pattern: '/v1/jobs/:id/blackout',
      who: 'admin',
      input: {
        params: pathParams({ id: JOB_ID }),
        body: fields({ blackoutMs: whole(0, 3_600_000), packetsLost: whole(0, 1e9), packetsSent: whole(0, 1e9) }, ['blackoutMs', 'packetsLost', 'packetsSent']),
      },
      // The blackout a probing client measured (the CLI's lab probe), kept in the migration's record once.
      handler: async ({ id }, body, caller) => {
        const job = await state.job(id!);
        if (!job || job.kind !== 'migrate' || job.host !== node.name || job.state !== 'succeeded' || !job.result) throw new NotFoundError(`no completed migration ${id} run by ${node.name}`);
        const record = job.result as MigrationRecord;
        if (record.clientBlackout) throw new RefusedError(`migration ${id} has its client blackout already`);
        record.clientBlackout = { ms: body['blackoutMs'] as number, packetsLost: body['packetsLost'] as number, packetsSent: body['packetsSent'] as number, reportedBy: callerName(caller) };
        await state.saveJob(job);
        ctx.metrics?.blackoutMeasured(record.clientBlackout.ms);
        return { clientBlackout: record.clientBlackout };
      },
    },
    { method: 'POST', pattern: '/v1/incoming', who: 'host', input: INCOMING_PREPARE, handler: async (_, body, caller) => incoming.prepare(body as unknown as IncomingRequest, caller.name) },
    // '/v1/incoming/check-storage': its name before it checked networks too, for agents of an older ferry during an upgrade.
    ...['/v1/incoming/check', '/v1/incoming/check-storage'].map((pattern): Route => ({
      method: 'POST',
      pattern,
      who: 'host',
      input: { params: NOTHING, body: fields({ spec: SENT_SPEC, disks: DISK_NEEDS }, ['spec']) },
      handler: async (_, body, caller) => ({ problems: await incoming.check(String((body['spec'] as VmSpec | undefined)?.name ?? ''), (body['disks'] as DiskNeed[]) ?? [], caller.name) }),
    })),
    ...sourceOnly(incoming, [
      { method: 'GET', pattern: '/v1/incoming/:id', handler: async ({ id }) => ({ state: incoming.get(id!).state }) },
      { method: 'POST', pattern: '/v1/incoming/:id/wait', handler: async ({ id }, body) => incoming.wait(id!, Number(body['timeoutMs'] ?? 10_000)) },
      { method: 'GET', pattern: '/v1/incoming/:id/running', handler: async ({ id }) => ({ running: await incoming.running(id!) }) },
      { method: 'POST', pattern: '/v1/incoming/:id/recover-postcopy', handler: async ({ id }) => ({ uri: await incoming.recoverPostcopy(id!) }) },
      { method: 'POST', pattern: '/v1/incoming/:id/digest', handler: async ({ id }) => ({ digest: await incoming.digest(id!) }) },
      { method: 'POST', pattern: '/v1/incoming/:id/resume', handler: async ({ id }, body) => (await incoming.resume(id!, body['token']), {}) },
      { method: 'POST', pattern: '/v1/incoming/:id/finish', handler: async ({ id }) => ({ times: await incoming.finish(id!) }) },
      { method: 'POST', pattern: '/v1/incoming/:id/abort', handler: async ({ id }) => (await incoming.abort(id!), {}) },
    ]),
  ];
}

/** How long the health check waits for the store before it says this agent cannot reach it. */
const STORE_CHECK_MS = 1500;

/** Whether this agent reaches the cluster's store now (an agent cut off from it answers, but cannot serve cluster reads). */
async function storeAnswers(ctx: AgentContext): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), STORE_CHECK_MS)));
  try {
    return await Promise.race([ctx.state.hosts().then(() => true, () => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

