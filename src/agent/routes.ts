/** The agent's API routes. Every change to a VM carries its fencing token. */
import type { ClusterConfig } from './config.ts';
import { checkToken, freeMemoryMiB, requireRoom, requireVm, type AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { IncomingMigrations } from './incoming.ts';
import type { IncomingRequest } from './remote-destination.ts';
import type { Route } from './server.ts';
import { dryRun, type HistoryChoice } from './predict.ts';
import { migrationParams } from './validate.ts';
import { removeHost } from './membership.ts';
import { cancelMigration, startMigration, type MigrateRequest } from './source-migration.ts';
import { guestBoot, guestImage } from '../qemu/guest-image.ts';
import { localQemuBuild } from '../qemu/host-probe.ts';
import { newestCommonMachineType } from '../cluster/compatibility.ts';
import { macFor, makeVmSpec, type DiskSpec, type VmSpec, type VolumeFormat } from '../qemu/spec.ts';
import type { OwnedVm, StoredVolume } from '../cluster/model.ts';
import type { DiskNeed } from '../migration/sides.ts';
import { createVolume, removeVolume, storageRoutes } from './storage-routes.ts';
import { recoverRoutes } from './recover.ts';
import { storageCatalog } from './context.ts';
import { defaultFormat, type StoragePoolConfig } from '../storage/types.ts';

/**
 * The routes of one incoming migration (/v1/incoming/:id/...): for hosts, and each answers only the
 * migration's source host — its certificate, not the request, says which. An id that is gone
 * already reaches the handler, which says so (or, for abort, does nothing).
 */
function sourceOnly(incoming: IncomingMigrations, routes: Omit<Route, 'who'>[]): Route[] {
  return routes.map((r) => ({
    ...r,
    who: 'host',
    handler: async (params, body, caller) => {
      incoming.requireSource(params['id']!, caller);
      return r.handler(params, body, caller);
    },
  }));
}

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

  return [
    ...storageRoutes(ctx),
    ...recoverRoutes(ctx),
    {
      method: 'GET',
      pattern: '/v1/health',
      who: 'admin-or-host',
      handler: async () => ({ host: node.name, vms: await runtime.list(), store: await storeAnswers(ctx) }),
    },

    { method: 'GET', pattern: '/v1/host/qemu', who: 'admin-or-host', handler: async () => ({ qemu: await localQemuBuild() }) },

    {
      method: 'GET',
      pattern: '/v1/cluster/hosts',
      who: 'admin',
      handler: async () => ({
        hosts: await Promise.all((await state.hosts()).map(async (h) => ({ ...h, freeMemoryMiB: await freeMemoryMiB(ctx, h.name) }))),
      }),
    },
    {
      method: 'POST',
      pattern: '/v1/cluster/hosts/:name/remove',
      who: 'admin',
      handler: async ({ name }, body) => removeHost(ctx, name!, typeof body['reason'] === 'string' ? body['reason'].slice(0, 200) : 'removed with ferry node remove'),
    },
    { method: 'GET', pattern: '/v1/cluster/vms', who: 'admin', handler: async () => ({ vms: await state.vms() }) },
    { method: 'GET', pattern: '/v1/cluster/vms/:name', who: 'admin', handler: async ({ name }) => ({ vm: await requireVm(ctx, name!), migration: await state.migration(name!) }) },

    {
      method: 'POST',
      pattern: '/v1/vms',
      who: 'admin',
      handler: async (_, body) => {
        const name = String(body['name'] ?? '');
        const memoryMiB = Number(body['memoryMiB'] ?? 256);
        const uuid = crypto.randomUUID();
        const ip = body['ip'] === undefined ? await allocateIp(ctx, cluster) : await requestedIp(ctx, cluster, body['ip']);
        const net = cluster.guestNetwork;
        const diskRequests = (body['disks'] as DiskRequest[] | undefined) ?? [];
        const pools = diskRequests.length ? await state.pools() : [];
        const diskcheck = body['diskcheckRate'] !== undefined ? { ratePerSec: Number(body['diskcheckRate']) } : undefined;
        if (diskcheck && !diskRequests.length) throw new RefusedError('diskcheck needs a disk; give the VM one with --disk SIZE');
        // Pinned to a versioned machine type every host provides: the VM can move to any of them, and keeps it across QEMU upgrades.
        const hosts = await state.hosts();
        const machine = newestCommonMachineType(hosts);
        if (!machine && hosts.some((h) => h.qemu)) throw new RefusedError(`the hosts' QEMUs have no q35 machine type in common (${hosts.map((h) => `${h.name}: QEMU ${h.qemu?.version ?? 'unknown'}`).join(', ')}); upgrade the oldest`);
        const spec = makeVmSpec({
          name,
          uuid,
          memoryMiB,
          ...(machine ? { machine } : {}),
          vcpus: Number(body['vcpus'] ?? 1),
          accel: (body['accel'] as 'auto' | 'tcg' | 'kvm' | undefined) ?? 'auto',
          boot: guestBoot(guestImage(), {
            ...(ip ? { ip: `${ip}/${net?.prefixLength ?? 24}` } : {}),
            memcheckMiB: Number(body['memcheckMiB'] ?? Math.min(64, Math.floor(memoryMiB / 4))),
            dirtyMiBps: Number(body['dirtyMiBps'] ?? 0),
            ...(diskcheck ? { diskcheck } : {}),
          }),
          nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: node.bridge } }],
          disks: diskRequests.map((d, i) => diskSpec(name, i, d, pools)),
        });
        await requireRoom(ctx, node.name, memoryMiB, name);
        if ((await state.vm(name)) !== undefined) throw new RefusedError(`a VM named '${name}' already exists; choose another name or destroy it first`);
        // Volumes first (each refused if its pool is unreachable from here), so a VM record never names a missing disk.
        const volumes: StoredVolume[] = [];
        const job = await state.newJob('create', name, node.name);
        try {
          for (const [i, disk] of spec.disks.entries()) {
            const peer = diskRequests[i]?.peer;
            volumes.push(await createVolume(ctx, { pool: disk.pool, name: disk.volume, format: disk.format, sizeBytes: disk.sizeBytes, vm: name, ...(peer ? { peer } : {}) }));
          }
          // Where a driver placed a volume (an iSCSI LUN, the replica hosts) is part of how every host opens it.
          spec.disks = spec.disks.map((d, i) => {
            const v = volumes[i];
            return { ...d, ...(v?.location ? { location: v.location } : {}), ...(v?.replicas ? { replicas: v.replicas } : {}) };
          });
          const token = await state.createVm({ spec, owner: node.name, desired: 'running', ...(ip ? { ip } : {}) });
          if (token === undefined) {
            if (ip && (await state.addressTaken(ip))) throw new RefusedError(`the guest address ${ip} was taken by another VM created at the same moment; try again`);
            throw new RefusedError(`a VM named '${name}' already exists; choose another name or destroy it first`);
          }
          try {
            await ctx.replication.beforeStart(spec);
            await runtime.start(spec, (await storageCatalog(ctx)).attachments(spec.disks));
          } catch (err) {
            const vm = await state.vm(name);
            if (vm) await state.deleteVm(vm);
            throw err;
          }
          job.state = 'succeeded';
        } catch (err) {
          job.state = 'failed';
          job.error = (err as Error).message;
          for (const v of volumes) await removeVolume(ctx, v).catch(() => undefined); // nothing half-made stays behind
          throw err;
        } finally {
          await state.saveJob(job);
        }
        return { vm: await state.vm(name), job };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/start',
      who: 'admin',
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        if (runtime.get(name!)) throw new RefusedError(`'${name}' is already running on ${node.name}`);
        await ctx.replication.beforeStart(vm.spec);
        await runtime.start(vm.spec, (await storageCatalog(ctx)).attachments(vm.spec.disks ?? []));
        return { vm: await state.vm(name!) };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/stop',
      who: 'admin',
      handler: async ({ name }, body) => {
        await mine(name!, body['token']);
        if (!runtime.get(name!)) throw new RefusedError(`'${name}' is not running`);
        return { outcome: await runtime.stop(name!, body['force'] === true) };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/vms/:name',
      who: 'admin',
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
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
    { method: 'GET', pattern: '/v1/vms/:name/console', who: 'admin', handler: async ({ name }) => ({ log: await runtime.consoleLog(name!) }) },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/migrate',
      who: 'admin',
      handler: async ({ name }, body) => ({ job: await startMigration(ctx, name!, { ...(body as unknown as MigrateRequest), params: migrationParams(body['params']) }) }),
    },

    // A dry run sends 3 × 16 MiB to the destination and scans the guest's RAM: one at a time per host.
    { method: 'POST', pattern: '/v1/vms/:name/predict', who: 'admin', handler: async ({ name }, body) => oneDryRunAtATime(() => dryRun(ctx, name!, String(body['to'] ?? ''), (body['history'] ?? 'all') as HistoryChoice)) },
    { method: 'GET', pattern: '/v1/jobs', who: 'admin', handler: async () => ({ jobs: await state.jobs() }) },
    {
      method: 'GET',
      pattern: '/v1/jobs/:id',
      who: 'admin',
      handler: async ({ id }) => {
        const job = await state.job(id!);
        if (!job) throw new NotFoundError(`no job ${id}; see 'ferry job list'`);
        return { job };
      },
    },
    { method: 'POST', pattern: '/v1/jobs/:id/cancel', who: 'admin', handler: async ({ id }) => ({ cancelled: cancelMigration(id!) }) },

    { method: 'POST', pattern: '/v1/incoming', who: 'host', handler: async (_, body, caller) => incoming.prepare(body as unknown as IncomingRequest, caller.name) },
    {
      method: 'POST',
      pattern: '/v1/incoming/check-storage',
      who: 'host',
      handler: async (_, body, caller) => ({ problems: await incoming.checkStorage(String((body['spec'] as VmSpec | undefined)?.name ?? ''), (body['disks'] as DiskNeed[]) ?? [], caller.name) }),
    },
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

interface DiskRequest {
  sizeBytes: number;
  pool: string;
  format?: VolumeFormat;
  /** Replicated pools: the host for the second replica. */
  peer?: string;
}

function diskSpec(vm: string, index: number, request: DiskRequest, pools: StoragePoolConfig[]): DiskSpec {
  if (!request.pool) throw new RefusedError(`disk ${index} of '${vm}' names no storage pool; add one with 'ferry storage add' and give it as --disk SIZE,storage=NAME`);
  const pool = pools.find((p) => p.name === request.pool);
  if (!pool) throw new RefusedError(`disk ${index} of '${vm}': no storage pool '${request.pool}'; see 'ferry storage list'`);
  if (request.peer !== undefined && pool.type !== 'replicated') throw new RefusedError(`disk ${index} of '${vm}': peer= is for replicated pools; pool '${pool.name}' is ${pool.type}`);
  return { id: `disk${index}`, pool: request.pool, volume: `${vm}-disk${index}`, format: request.format ?? defaultFormat(pool), sizeBytes: Number(request.sizeBytes) };
}

/**
 * A guest address the user asked for: a plain IPv4 address (it goes into the guest's kernel command
 * line), inside the cluster's guest range, and not a host's or another VM's.
 */
async function requestedIp(ctx: AgentContext, cluster: ClusterConfig, value: unknown): Promise<string> {
  const ip = String(value);
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new RefusedError(`guest address '${ip}' is not an IPv4 address like 10.80.0.120`);
  const net = cluster.guestNetwork;
  const last = Number(m[4]);
  if (net && (!ip.startsWith(`${net.prefix}.`) || last < net.first || last > net.last))
    throw new RefusedError(`guest address ${ip} is outside the cluster's guest range ${net.prefix}.${net.first}-${net.last}`);
  if ((await ctx.state.hosts()).some((h) => h.address === ip)) throw new RefusedError(`guest address ${ip} is a host's address`);
  if ((await ctx.state.vms()).some((v) => v.ip === ip) || (await ctx.state.addressTaken(ip))) throw new RefusedError(`guest address ${ip} is taken by another VM`);
  return ip;
}

async function allocateIp(ctx: AgentContext, cluster: ClusterConfig): Promise<string | undefined> {
  const net = cluster.guestNetwork;
  if (!net) return undefined;
  const used = new Set((await ctx.state.vms()).map((v) => v.ip));
  for (let i = net.first; i <= net.last; i++) {
    const ip = `${net.prefix}.${i}`;
    if (!used.has(ip) && !(await ctx.state.addressTaken(ip))) return ip;
  }
  throw new RefusedError(`no free guest address left in ${net.prefix}.${net.first}-${net.last}`);
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
