/** The agent's API routes. Every change to a VM carries its fencing token. */
import type { ClusterConfig } from './config.ts';
import { checkToken, freeMemoryMiB, requireRoom, requireVm, type AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { IncomingMigrations } from './incoming.ts';
import type { IncomingRequest } from './remote-destination.ts';
import type { Route } from './server.ts';
import { dryRun } from './predict.ts';
import { cancelMigration, startMigration, type MigrateRequest } from './source-migration.ts';
import { ensureGuestImage, guestBoot } from '../qemu/guest-image.ts';
import { macFor, makeVmSpec } from '../qemu/spec.ts';
import type { OwnedVm } from '../cluster/model.ts';

export function routes(ctx: AgentContext, incoming: IncomingMigrations, cluster: ClusterConfig): Route[] {
  const { state, runtime, node } = ctx;
  const mine = async (name: string, token: unknown): Promise<OwnedVm> => {
    const vm = await checkToken(ctx, name, token);
    if (vm.owner !== node.name) throw new RefusedError(`'${name}' is owned by ${vm.owner}; send the request to that host`);
    return vm;
  };

  return [
    { method: 'GET', pattern: '/v1/health', handler: async () => ({ host: node.name, vms: await runtime.list() }) },

    {
      method: 'GET',
      pattern: '/v1/cluster/hosts',
      handler: async () => ({
        hosts: await Promise.all((await state.hosts()).map(async (h) => ({ ...h, freeMemoryMiB: await freeMemoryMiB(ctx, h.name) }))),
      }),
    },
    { method: 'GET', pattern: '/v1/cluster/vms', handler: async () => ({ vms: await state.vms() }) },
    { method: 'GET', pattern: '/v1/cluster/vms/:name', handler: async ({ name }) => ({ vm: await requireVm(ctx, name!), migration: await state.migration(name!) }) },

    {
      method: 'POST',
      pattern: '/v1/vms',
      handler: async (_, body) => {
        const name = String(body['name'] ?? '');
        const memoryMiB = Number(body['memoryMiB'] ?? 256);
        const uuid = crypto.randomUUID();
        const ip = (body['ip'] as string | undefined) ?? (await allocateIp(ctx, cluster));
        const net = cluster.guestNetwork;
        const spec = makeVmSpec({
          name,
          uuid,
          memoryMiB,
          vcpus: Number(body['vcpus'] ?? 1),
          accel: (body['accel'] as 'auto' | 'tcg' | 'kvm' | undefined) ?? 'auto',
          boot: guestBoot(await ensureGuestImage(), {
            ...(ip ? { ip: `${ip}/${net?.prefixLength ?? 24}` } : {}),
            memcheckMiB: Number(body['memcheckMiB'] ?? Math.min(64, Math.floor(memoryMiB / 4))),
            dirtyMiBps: Number(body['dirtyMiBps'] ?? 0),
          }),
          nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: node.bridge } }],
        });
        await requireRoom(ctx, node.name, memoryMiB, name);
        const token = await state.createVm({ spec, owner: node.name, desired: 'running', ...(ip ? { ip } : {}) });
        if (token === undefined) throw new RefusedError(`a VM named '${name}' already exists; choose another name or destroy it first`);
        const job = await state.newJob('create', name, node.name);
        try {
          await runtime.start(spec);
          job.state = 'succeeded';
        } catch (err) {
          job.state = 'failed';
          job.error = (err as Error).message;
          const vm = await state.vm(name);
          if (vm) await state.deleteVm(vm); // nothing half-made stays behind
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
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        if (runtime.get(name!)) throw new RefusedError(`'${name}' is already running on ${node.name}`);
        await runtime.start(vm.spec);
        return { vm: await state.vm(name!) };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/stop',
      handler: async ({ name }, body) => {
        await mine(name!, body['token']);
        if (!runtime.get(name!)) throw new RefusedError(`'${name}' is not running`);
        return { outcome: await runtime.stop(name!, body['force'] === true) };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/vms/:name',
      handler: async ({ name }, body) => {
        const vm = await mine(name!, body['token']);
        if (await state.migration(name!)) throw new RefusedError(`'${name}' is being migrated; wait for the migration to end`);
        if (runtime.get(name!)) await runtime.stop(name!, true);
        if (!(await state.deleteVm(vm))) throw new RefusedError(`'${name}' changed while being destroyed; try again`);
        return { destroyed: name };
      },
    },
    { method: 'GET', pattern: '/v1/vms/:name/console', handler: async ({ name }) => ({ log: await runtime.consoleLog(name!) }) },
    {
      method: 'POST',
      pattern: '/v1/vms/:name/migrate',
      handler: async ({ name }, body) => ({ job: await startMigration(ctx, name!, body as unknown as MigrateRequest) }),
    },

    { method: 'POST', pattern: '/v1/vms/:name/predict', handler: async ({ name }, body) => dryRun(ctx, name!, String(body['to'] ?? '')) },
    { method: 'GET', pattern: '/v1/jobs', handler: async () => ({ jobs: await state.jobs() }) },
    {
      method: 'GET',
      pattern: '/v1/jobs/:id',
      handler: async ({ id }) => {
        const job = await state.job(id!);
        if (!job) throw new NotFoundError(`no job ${id}; see 'ferry job list'`);
        return { job };
      },
    },
    { method: 'POST', pattern: '/v1/jobs/:id/cancel', handler: async ({ id }) => ({ cancelled: cancelMigration(id!) }) },

    { method: 'POST', pattern: '/v1/incoming', handler: async (_, body) => incoming.prepare(body as unknown as IncomingRequest) },
    { method: 'GET', pattern: '/v1/incoming/:id', handler: async ({ id }) => ({ state: incoming.get(id!).state }) },
    { method: 'POST', pattern: '/v1/incoming/:id/wait', handler: async ({ id }, body) => incoming.wait(id!, Number(body['timeoutMs'] ?? 10_000)) },
    { method: 'GET', pattern: '/v1/incoming/:id/running', handler: async ({ id }) => ({ running: await incoming.running(id!) }) },
    { method: 'POST', pattern: '/v1/incoming/:id/digest', handler: async ({ id }) => ({ digest: await incoming.digest(id!) }) },
    { method: 'POST', pattern: '/v1/incoming/:id/resume', handler: async ({ id }, body) => (await incoming.resume(id!, body['token']), {}) },
    { method: 'POST', pattern: '/v1/incoming/:id/finish', handler: async ({ id }) => (await incoming.finish(id!), {}) },
    { method: 'POST', pattern: '/v1/incoming/:id/abort', handler: async ({ id }) => (await incoming.abort(id!), {}) },
  ];
}

async function allocateIp(ctx: AgentContext, cluster: ClusterConfig): Promise<string | undefined> {
  const net = cluster.guestNetwork;
  if (!net) return undefined;
  const used = new Set((await ctx.state.vms()).map((v) => v.ip));
  for (let i = net.first; i <= net.last; i++) if (!used.has(`${net.prefix}.${i}`)) return `${net.prefix}.${i}`;
  throw new RefusedError(`no free guest address left in ${net.prefix}.${net.first}-${net.last}`);
}
