/**
 * Storage pools and volumes through the agent API. The store has the records;
 * the agent of the host that holds a volume makes and removes its image.
 */
import { NAME_PATTERN } from '../util/names.ts';
import { ForbiddenError, type Caller } from './authz.ts';
import type { StoredVolume, VolumeRecord } from '../cluster/model.ts';
import type { VolumeFormat } from '../qemu/spec.ts';
import { VolumeInUseError, VolumeNotFoundError } from '../storage/errors.ts';
import { STORAGE_TYPES, backendOf, defaultFormat, poolLocation, type StoragePoolConfig, type StorageType } from '../storage/types.ts';
import { peer, storageCatalog, type AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { fields, HOST, listOf, NO_INPUT, NOTHING, oneOf, pathOnly, POOL, text, VM, VOLUME } from './request-schema.ts';

const NAME = NAME_PATTERN;

/** A host name or address, as NFS servers, iSCSI portals and Ceph pools are given. */
const ENDPOINT = { type: 'string', maxLength: 253, description: 'a host name or an IPv4 address' } as const;

/** `ferry storage add` (and the lab's pools): the fields of every type; parsePool says which a type needs. */
const POOL_BODY = fields(
  {
    name: POOL,
    type: oneOf(STORAGE_TYPES),
    path: text(4096),
    server: ENDPOINT,
    export: text(4096),
    portal: ENDPOINT,
    target: text(223),
    fenceCommand: listOf(text(4096), 64),
    pool: text(255),
    conf: text(4096),
    user: text(255),
  },
  ['name', 'type'],
);

const VOLUME_BODY = fields(
  {
    name: VOLUME,
    pool: POOL,
    format: oneOf(['qcow2', 'raw']),
    sizeBytes: { type: 'integer', minimum: 2 ** 20, maximum: Number.MAX_SAFE_INTEGER, multipleOf: 512, description: 'a size in bytes: at least 1 MiB, a multiple of 512' },
    peer: HOST,
  },
  ['name', 'pool', 'sizeBytes'],
);

export function storageRoutes(ctx: AgentContext): Route[] {
  const { state } = ctx;
  /** A replica host makes or removes its replica only when the volume's other replica host asks. */
  const replicaFor = async (pool: string, name: string, caller: Caller) => {
    const volume = await state.volume(pool, name);
    if (!volume?.replicas?.includes(ctx.node.name)) throw new NotFoundError(`the store records no replica of ${pool}/${name} on ${ctx.node.name}`);
    if (caller.name === ctx.node.name || !volume.replicas.includes(caller.name))
      throw new ForbiddenError(`${pool}/${name} is replicated on ${volume.replicas.join(' and ')}; host '${caller.name}' may not change its replica here`);
    return volume;
  };

  return [
    { method: 'GET', pattern: '/v1/cluster/storage', who: 'admin', input: NO_INPUT, handler: async () => ({ pools: await state.pools() }) },
    { method: 'GET', pattern: '/v1/storage/status', who: 'admin', input: NO_INPUT, handler: async () => ({ host: ctx.node.name, pools: await poolStatus(ctx) }) },
    {
      method: 'POST',
      pattern: '/v1/storage',
      who: 'admin',
      input: { params: NOTHING, body: POOL_BODY },
      handler: async (_, body) => {
        const pool = parsePool(body);
        const twin = (await state.pools()).find((p) => backendOf(p) === backendOf(pool));
        if (twin) throw new RefusedError(`storage pool '${twin.name}' already stores its volumes in ${poolLocation(pool)}; two pools over one backend would hand out the same places`);
        if (!(await state.addPool(pool))) throw new RefusedError(`a storage pool named '${pool.name}' already exists; see 'ferry storage list'`);
        ctx.log(`storage pool ${pool.name} added (${pool.type} at ${poolLocation(pool)})`);
        return { pool, status: (await poolStatus(ctx)).find((p) => p.pool === pool.name) };
      },
    },
    { method: 'GET', pattern: '/v1/cluster/volumes', who: 'admin', input: NO_INPUT, handler: async () => ({ volumes: await state.volumes() }) },
    {
      method: 'POST',
      pattern: '/v1/volumes',
      who: 'admin',
      input: { params: NOTHING, body: VOLUME_BODY },
      handler: async (_, body) => {
        const volume = parseVolume(body, await state.pools());
        return { volume: await createVolume(ctx, volume) };
      },
    },
    {
      // A replica host makes (or removes) its own replica of a volume the store already records.
      method: 'POST',
      pattern: '/v1/replicas/:pool/:name',
      who: 'host',
      input: pathOnly({ pool: POOL, name: VOLUME }),
      handler: async ({ pool, name }, _, caller) => {
        const volume = await replicaFor(pool!, name!, caller);
        await (await storageCatalog(ctx)).get(volume.pool).create(volume);
        ctx.log(`replica of ${pool}/${name} created`);
        return { created: `${pool}/${name}` };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/replicas/:pool/:name',
      who: 'host',
      input: pathOnly({ pool: POOL, name: VOLUME }),
      handler: async ({ pool, name }, _, caller) => {
        await removeOwnReplica(ctx, await replicaFor(pool!, name!, caller));
        return { deleted: `${pool}/${name}` };
      },
    },
    {
      // The replication of a VM's replicated disks, from the host that runs it.
      method: 'GET',
      pattern: '/v1/vms/:name/replication',
      who: 'admin',
      input: pathOnly({ name: VM }),
      handler: async ({ name }) => ({ host: ctx.node.name, volumes: await ctx.replication.statusOf(name!) }),
    },
    {
      method: 'DELETE',
      pattern: '/v1/volumes/:pool/:name',
      who: 'admin',
      input: pathOnly({ pool: POOL, name: VOLUME }),
      handler: async ({ pool, name }) => {
        const volume = await state.volume(pool!, name!);
        if (!volume) throw new NotFoundError(`no volume '${name}' in pool '${pool}'; see 'ferry volume list'`);
        if (volume.image) throw new RefusedError(`volume '${name}' keeps image '${volume.image}'; remove it with 'ferry image delete ${volume.image}'`);
        // A volume whose VM no longer exists (a creation that failed half-way) is not in use.
        if (volume.vm && (await state.vm(volume.vm))) throw new VolumeInUseError(volume.name, volume.vm);
        if (volume.replicas) {
          // Both replicas (each host removes its own, with its endpoint record), then the record (a failure leaves a volume that can be deleted again).
          for (const host of volume.replicas) await replicaCall(ctx, host, 'DELETE', volume);
          await state.deleteReplicaOutdated(volume.pool, volume.name);
          if (!(await state.deleteVolume(volume))) throw new RefusedError(`volume '${name}' changed while being deleted; try again`);
          ctx.log(`volume ${pool}/${name} deleted (replicas on ${volume.replicas.join(' and ')})`);
          return { deleted: `${pool}/${name}` };
        }
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
export async function createVolume(ctx: AgentContext, volume: VolumeRecord, make?: (volume: VolumeRecord) => Promise<void>): Promise<StoredVolume> {
  const driver = (await storageCatalog(ctx)).get(volume.pool);
  await driver.status(); // unreachable pool: refused before anything is written down
  // Drivers that place volumes (iSCSI LUNs) pick a place no other volume of the pool holds.
  const taken = (await ctx.state.volumes()).filter((v) => v.pool === volume.pool && v.location).map((v) => v.location!);
  const location = driver.allocate ? await driver.allocate(volume, taken) : undefined;
  const replicas = driver.config.type === 'replicated' ? [ctx.node.name, await choosePeer(ctx, volume)] : undefined;
  const { peer: _asked, ...requested } = volume;
  const record: VolumeRecord = {
    ...requested,
    ...(driver.shared || replicas ? {} : { host: ctx.node.name }),
    ...(location ? { location } : {}),
    ...(replicas ? { replicas } : {}),
  };
  if (!(await ctx.state.createVolume(record))) {
    const existing = await ctx.state.volume(volume.pool, volume.name);
    if (!existing && location) throw new RefusedError(`another volume took LUN ${location} of pool '${volume.pool}' at the same moment; try again`);
    throw new RefusedError(
      `a volume named '${volume.name}' already exists in pool '${volume.pool}'` +
        (existing?.vm ? ` (attached to VM '${existing.vm}')` : ` (kept from an earlier VM?); delete it with 'ferry volume delete ${volume.name} --pool ${volume.pool}' or choose another name`),
    );
  }
  const made: string[] = [];
  try {
    await (make ? make(record) : driver.create(record));
    made.push(ctx.node.name);
    for (const host of replicas?.slice(1) ?? []) {
      await replicaCall(ctx, host, 'POST', record);
      made.push(host);
    }
  } catch (err) {
    for (const host of made) await (host === ctx.node.name ? driver.delete(record) : replicaCall(ctx, host, 'DELETE', record)).catch(() => undefined);
    const stored = await ctx.state.volume(volume.pool, volume.name);
    if (stored) await ctx.state.deleteVolume(stored);
    throw err;
  }
  ctx.log(`volume ${volume.pool}/${volume.name} created (${volume.format}, ${volume.sizeBytes} bytes${replicas ? `, replicas on ${replicas.join(' and ')}` : ''})`);
  const stored = await ctx.state.volume(volume.pool, volume.name);
  if (!stored) throw new VolumeNotFoundError(volume.pool, volume.name, 'the store lost it right after creation');
  return stored;
}

/** Removes a volume's image(s) and record (the creation of a VM that uses it failed). */
export async function removeVolume(ctx: AgentContext, volume: StoredVolume): Promise<void> {
  if (volume.replicas) for (const host of volume.replicas) await replicaCall(ctx, host, 'DELETE', volume);
  else await (await storageCatalog(ctx)).get(volume.pool).delete(volume);
  await ctx.state.deleteVolume(volume);
}

/**
 * The second replica host: the one asked for (`peer`), else the first other host of the cluster
 * by name that reaches the pool. Refused when there is none: one replica is not a replicated volume.
 */
async function choosePeer(ctx: AgentContext, volume: VolumeRecord): Promise<string> {
  const others = (await ctx.state.hosts()).map((h) => h.name).filter((h) => h !== ctx.node.name).sort();
  if (volume.peer) {
    if (volume.peer === ctx.node.name) throw new RefusedError(`the peer of a replicated volume must be another host than '${ctx.node.name}', which keeps the first replica`);
    if (!others.includes(volume.peer)) throw new RefusedError(`host '${volume.peer}' is not in the cluster (or its agent is down); see 'ferry node list'`);
    return volume.peer;
  }
  if (!others.length) throw new RefusedError(`a replicated volume needs a second host; '${ctx.node.name}' is the only one in the cluster`);
  return others[0]!;
}

/** Makes or removes one host's replica: here directly, elsewhere through that host's agent. */
async function replicaCall(ctx: AgentContext, host: string, method: 'POST' | 'DELETE', volume: VolumeRecord): Promise<void> {
  if (host === ctx.node.name) {
    const driver = (await storageCatalog(ctx)).get(volume.pool);
    await (method === 'POST' ? driver.create(volume) : removeOwnReplica(ctx, volume));
    return;
  }
  await (await peer(ctx, host)).call(method, `/v1/replicas/${volume.pool}/${volume.name}`, {}, 120_000);
}

/**
 * This host's replica of a volume, and the record of where it served it: each replica host removes
 * its own (the store lets a host write only its own replica endpoints, etcd-auth.ts).
 */
async function removeOwnReplica(ctx: AgentContext, volume: VolumeRecord): Promise<void> {
  await (await storageCatalog(ctx)).get(volume.pool).delete(volume);
  await ctx.state.deleteReplicaEndpoint(volume.pool, volume.name, ctx.node.name);
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
    const fence = body['fenceCommand'];
    if (fence !== undefined && (!Array.isArray(fence) || !fence.length || !String(fence[0]).startsWith('/')))
      throw new RefusedError(`--fence-command must name an executable by its absolute path (then its arguments), run as 'COMMAND... fence|unfence ADDRESS HOST'`);
    return { name, type, portal: portal.includes(':') ? portal : `${portal}:3260`, target, ...(fence ? { fenceCommand: (fence as unknown[]).map(String) } : {}) };
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
  const peer = body['peer'] === undefined ? undefined : String(body['peer']);
  if (peer !== undefined && config.type !== 'replicated') throw new RefusedError(`--peer is for replicated pools; pool '${pool}' is ${config.type}`);
  return { pool, name, format, sizeBytes, ...(peer ? { peer } : {}) };
}
