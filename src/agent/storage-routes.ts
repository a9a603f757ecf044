/**
 * Storage pools and volumes through the agent API. The store has the records;
 * the agent of the host that holds a volume makes and removes its image.
 */
import type { StoredVolume, VolumeRecord } from '../cluster/model.ts';
import type { VolumeFormat } from '../qemu/spec.ts';
import { VolumeInUseError, VolumeNotFoundError } from '../storage/errors.ts';
import { STORAGE_TYPES, backendOf, defaultFormat, poolLocation, type StoragePoolConfig, type StorageType } from '../storage/types.ts';
import { storageCatalog, type AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';

const NAME = /^[a-z][a-z0-9-]{0,62}$/;

export function storageRoutes(ctx: AgentContext): Route[] {
  const { state } = ctx;
  return [
    { method: 'GET', pattern: '/v1/cluster/storage', handler: async () => ({ pools: await state.pools() }) },
    { method: 'GET', pattern: '/v1/storage/status', handler: async () => ({ host: ctx.node.name, pools: await poolStatus(ctx) }) },
    {
      method: 'POST',
      pattern: '/v1/storage',
      handler: async (_, body) => {
        const pool = parsePool(body);
        const twin = (await state.pools()).find((p) => backendOf(p) === backendOf(pool));
        if (twin) throw new RefusedError(`storage pool '${twin.name}' already stores its volumes in ${poolLocation(pool)}; two pools over one backend would hand out the same places`);
        if (!(await state.addPool(pool))) throw new RefusedError(`a storage pool named '${pool.name}' already exists; see 'ferry storage list'`);
        ctx.log(`storage pool ${pool.name} added (${pool.type} at ${poolLocation(pool)})`);
        return { pool, status: (await poolStatus(ctx)).find((p) => p.pool === pool.name) };
      },
    },
    { method: 'GET', pattern: '/v1/cluster/volumes', handler: async () => ({ volumes: await state.volumes() }) },
    {
      method: 'POST',
      pattern: '/v1/volumes',
      handler: async (_, body) => {
        const volume = parseVolume(body, await state.pools());
        return { volume: await createVolume(ctx, volume) };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/volumes/:pool/:name',
      handler: async ({ pool, name }) => {
        const volume = await state.volume(pool!, name!);
        if (!volume) throw new NotFoundError(`no volume '${name}' in pool '${pool}'; see 'ferry volume list'`);
        // A volume whose VM no longer exists (a creation that failed half-way) is not in use.
        if (volume.vm && (await state.vm(volume.vm))) throw new VolumeInUseError(volume.name, volume.vm);
        const driver = (await storageCatalog(ctx)).get(volume.pool);
        if (!driver.shared && volume.host && volume.host !== ctx.node.name)
          throw new RefusedError(`volume '${name}' lives on host '${volume.host}', not on ${ctx.node.name}; send the request there`);
        // The bytes first, the record after: the record keeps the name (and a LUN) taken until the data is gone,
        // and a removal that fails leaves a volume that can be deleted again, not an orphan.
        await driver.delete(volume);
        if (!(await state.deleteVolume(volume))) throw new RefusedError(`volume '${name}' changed while being deleted; try again`);
        ctx.log(`volume ${pool}/${name} deleted`);
        return { deleted: `${pool}/${name}` };
      },
    },
  ];
}

export interface PoolStatusLine {
  pool: string;
  type: StorageType;
  path: string;
  reachable: boolean;
  freeBytes?: number;
  totalBytes?: number;
  error?: string;
}

async function poolStatus(ctx: AgentContext): Promise<PoolStatusLine[]> {
  const catalog = await storageCatalog(ctx);
  return Promise.all(
    catalog.pools().map(async (driver) => {
      const base = { pool: driver.config.name, type: driver.config.type, path: poolLocation(driver.config, ctx.node.name) };
      try {
        return { ...base, reachable: true, ...(await driver.status()) };
      } catch (err) {
        return { ...base, reachable: false, error: (err as Error).message };
      }
    }),
  );
}

/**
 * Reserves the record, then makes the image on this host (local pools) or in
 * the shared directory; an image that cannot be made leaves no record behind.
 */
export async function createVolume(ctx: AgentContext, volume: VolumeRecord): Promise<StoredVolume> {
  const driver = (await storageCatalog(ctx)).get(volume.pool);
  await driver.status(); // unreachable pool: refused before anything is written down
  // Drivers that place volumes (iSCSI LUNs) pick a place no other volume of the pool holds.
  const taken = (await ctx.state.volumes()).filter((v) => v.pool === volume.pool && v.location).map((v) => v.location!);
  const location = driver.allocate ? await driver.allocate(volume, taken) : undefined;
  const record: VolumeRecord = { ...volume, ...(driver.shared ? {} : { host: ctx.node.name }), ...(location ? { location } : {}) };
  if (!(await ctx.state.createVolume(record))) {
    const existing = await ctx.state.volume(volume.pool, volume.name);
    if (!existing && location) throw new RefusedError(`another volume took LUN ${location} of pool '${volume.pool}' at the same moment; try again`);
    throw new RefusedError(
      `a volume named '${volume.name}' already exists in pool '${volume.pool}'` +
        (existing?.vm ? ` (attached to VM '${existing.vm}')` : ` (kept from an earlier VM?); delete it with 'ferry volume delete ${volume.name} --pool ${volume.pool}' or choose another name`),
    );
  }
  try {
    await driver.create(record);
  } catch (err) {
    const stored = await ctx.state.volume(volume.pool, volume.name);
    if (stored) await ctx.state.deleteVolume(stored);
    throw err;
  }
  ctx.log(`volume ${volume.pool}/${volume.name} created (${volume.format}, ${volume.sizeBytes} bytes)`);
  const stored = await ctx.state.volume(volume.pool, volume.name);
  if (!stored) throw new VolumeNotFoundError(volume.pool, volume.name, 'the store lost it right after creation');
  return stored;
}

/** Removes a volume's image and record (the creation of a VM that uses it failed). */
export async function removeVolume(ctx: AgentContext, volume: StoredVolume): Promise<void> {
  await (await storageCatalog(ctx)).get(volume.pool).delete(volume);
  await ctx.state.deleteVolume(volume);
}

function parsePool(body: Record<string, unknown>): StoragePoolConfig {
  const name = String(body['name'] ?? '');
  const type = String(body['type'] ?? '') as StorageType;
  if (!NAME.test(name)) throw new RefusedError(`pool name '${name}' must start with a letter and use only a-z, 0-9 and '-'`);
  if (!STORAGE_TYPES.includes(type)) throw new RefusedError(`pool type '${type}' is not one of ${STORAGE_TYPES.join(', ')}`);
  if (type === 'nfs') {
    const server = String(body['server'] ?? '');
    const exported = String(body['export'] ?? '');
    if (!/^[A-Za-z0-9.-]+$/.test(server)) throw new RefusedError(`an nfs pool needs --server HOST (an IPv4 address or a name), not '${server}'`);
    if (!/^\/[A-Za-z0-9._\/-]*$/.test(exported) || exported.split('/').includes('..')) throw new RefusedError(`an nfs pool needs --export /PATH (the directory the server exports), not '${exported}'`);
    return { name, type, server, export: exported.replace(/\/+$/, '') || '/' };
  }
  if (type === 'iscsi') {
    const portal = String(body['portal'] ?? '');
    const target = String(body['target'] ?? '');
    if (!/^[A-Za-z0-9.-]+(:\d+)?$/.test(portal)) throw new RefusedError(`an iscsi pool needs --portal HOST[:PORT], not '${portal}'`);
    if (!/^(iqn|eui|naa)\.[A-Za-z0-9.:-]+$/.test(target)) throw new RefusedError(`an iscsi pool needs --target IQN (like iqn.2026-11.org.example:store), not '${target}'`);
    return { name, type, portal: portal.includes(':') ? portal : `${portal}:3260`, target };
  }
  if (type === 'rbd') {
    const pool = String(body['pool'] ?? 'rbd');
    const conf = String(body['conf'] ?? '/etc/ceph/ceph.conf');
    const user = String(body['user'] ?? 'admin');
    if (!/^[A-Za-z0-9._-]+$/.test(pool)) throw new RefusedError(`an rbd pool needs --ceph-pool NAME, not '${pool}'`);
    if (!conf.startsWith('/') || /[:,\s]/.test(conf)) throw new RefusedError(`--conf must be the absolute path of ceph.conf on every host, not '${conf}'`);
    if (!/^[A-Za-z0-9._-]+$/.test(user)) throw new RefusedError(`--user must be a cephx id like admin, not '${user}'`);
    return { name, type, pool, conf, user };
  }
  const path = String(body['path'] ?? '');
  if (!path.startsWith('/')) throw new RefusedError(`pool path '${path}' must be absolute ('%h' stands for the host's name)`);
  return { name, type, path };
}

export function parseVolume(body: Record<string, unknown>, pools: StoragePoolConfig[]): VolumeRecord {
  const name = String(body['name'] ?? '');
  const pool = String(body['pool'] ?? '');
  const config = pools.find((p) => p.name === pool);
  if (!config) throw new RefusedError(`no storage pool '${pool}'; see 'ferry storage list'`);
  const format = String(body['format'] ?? defaultFormat(config)) as VolumeFormat;
  const sizeBytes = Number(body['sizeBytes']);
  if (!NAME.test(name)) throw new RefusedError(`volume name '${name}' must start with a letter and use only a-z, 0-9 and '-'`);
  if (!NAME.test(pool)) throw new RefusedError(`give the pool of the volume (--pool NAME); see 'ferry storage list'`);
  if (format !== 'qcow2' && format !== 'raw') throw new RefusedError(`volume format '${format}' must be qcow2 or raw`);
  if (!Number.isInteger(sizeBytes) || sizeBytes < 2 ** 20 || sizeBytes % 512 !== 0)
    throw new RefusedError(`volume size ${body['sizeBytes']} must be at least 1 MiB and a multiple of 512 bytes`);
  return { pool, name, format, sizeBytes };
}
