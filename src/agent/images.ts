/**
 * Images: `ferry image import|list|delete`, and the volumes a VM is made of when it boots through
 * firmware — its boot disk from an image (an overlay on shared-dir pools, a copy elsewhere), its
 * UEFI variable store and its cloud-init seed. Every such volume is filled through qemu-img from
 * the pool's own -blockdev description, so one code path serves files, NFS, iSCSI and RBD.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm, statfs } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import type { ImageRecord, StoredVolume } from '../cluster/model.ts';
import { ovmfVarsTemplate, requireUefi } from '../qemu/firmware.ts';
import { buildSeedImage, SEED_BYTES, type CloudInitConfig } from '../qemu/cloud-init.ts';
import { UEFI_VARS_BYTES, type DiskSpec, type IsoMedium, type VolumeFormat } from '../qemu/spec.ts';
import { inspectImageFile } from '../storage/image-file.ts';
import { convertInto, jsonFilename } from '../storage/qemu-img.ts';
import { defaultFormat, type StorageDriver } from '../storage/types.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import type { Caller } from './authz.ts';
import { storageCatalog, type AgentContext } from './context.ts';
import { ApiError, NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { fields, IMAGE, NO_INPUT, pathOnly, pathParams, POOL, text } from './request-schema.ts';
import { createVolume, removeVolume } from './storage-routes.ts';

/** An upload that sends nothing for this long is given up. */
const UPLOAD_IDLE_MS = 60_000;

/** The volume that keeps an image's bytes. */
export function imageVolumeName(image: string): string {
  return `image-${image}`;
}

/** An upload says what it sends (`ferry image import` sets these): the pool, the file's SHA-256, its size and name. */
const IMPORT_QUERY = fields(
  {
    pool: POOL,
    sha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$', description: 'a SHA-256 (64 hex digits)' },
    bytes: { type: 'string', pattern: '^[1-9][0-9]{0,15}$', description: 'a number of bytes' },
    file: text(255),
  },
  ['pool', 'sha256', 'bytes'],
);

export function imageRoutes(ctx: AgentContext): Route[] {
  return [
    { method: 'GET', pattern: '/v1/cluster/images', who: 'admin', input: NO_INPUT, handler: async () => ({ images: await ctx.state.images() }) },
    {
      method: 'POST',
      pattern: '/v1/images/:name',
      who: 'admin',
      input: { params: pathParams({ name: IMAGE }), query: IMPORT_QUERY },
      stream: async ({ name }, request, caller, query) => ({ image: await importImage(ctx, name!, request, caller, query) }),
    },
    {
      method: 'DELETE',
      pattern: '/v1/images/:name',
      who: 'admin',
      input: pathOnly({ name: IMAGE }),
      handler: async ({ name }) => {
        if (!NAME_PATTERN.test(name!)) throw new RefusedError(`image name '${name}' ${NAME_RULE}`);
        const image = await ctx.state.image(name!);
        if (!image) throw new NotFoundError(`no image named '${name}'; see 'ferry image list'`);
        if (image.state === 'importing') throw new RefusedError(`image '${name}' is being imported by ${image.importer ?? 'another host'}; wait for it to finish (an import cut off is removed when that agent starts again)`);
        const users = await imageUsers(ctx, name!);
        if (users.length) throw new RefusedError(`image '${name}' is in use by ${users.join(', ')}; destroy those VMs and delete their volumes first`);
        if (image.host && image.host !== ctx.node.name) throw new RefusedError(`image '${name}' is kept on host '${image.host}' (a local pool); send the request there`);
        const volume = await ctx.state.volume(image.pool, image.volume);
        if (volume) await removeVolume(ctx, volume);
        await ctx.state.deleteImage(name!);
        ctx.log(`image ${name} deleted`);
        return { deleted: name };
      },
    },
  ];
}

/** What needs the image to stay: a VM's overlay on it (a kept, detached one too), a VM with it in its CD-ROM drive. */
async function imageUsers(ctx: AgentContext, image: string): Promise<string[]> {
  const vms = await ctx.state.vms();
  const overlays = (await ctx.state.volumes()).filter((v) => v.backingImage === image).map((v) => (v.vm ? `VM ${v.vm}` : `volume ${v.pool}/${v.name} (an overlay on it)`));
  return [...new Set([...overlays, ...vms.filter((v) => v.spec.cdrom?.medium?.image === image).map((v) => `VM ${v.spec.name}`)])].sort();
}

/**
 * Receives the file, checks its size and SHA-256 against what the client says it sent, finds out
 * what it is from its bytes, and copies it into a new volume of the pool. The name is reserved
 * first (a second import of the same name is refused at once); any failure removes what was made.
 */
async function importImage(ctx: AgentContext, name: string, request: IncomingMessage, caller: Caller, query: Record<string, string>): Promise<ImageRecord> {
  const pool = query['pool'] ?? '';
  const sha256 = (query['sha256'] ?? '').toLowerCase();
  const bytes = Number(query['bytes']);
  const fileName = path.basename(query['file'] ?? name);
  if (!NAME_PATTERN.test(name)) throw new RefusedError(`image name '${name}' ${NAME_RULE}`);
  if (imageVolumeName(name).length > 63) throw new RefusedError(`image name '${name}' is too long: at most ${63 - imageVolumeName('').length} characters (its volume is '${imageVolumeName(name)}')`);
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new RefusedError('the upload must say its SHA-256 (sha256=, 64 hex digits)');
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RefusedError('the upload must say its size (bytes=)');
  const driver = (await storageCatalog(ctx)).get(pool);
  if (driver.config.type === 'replicated')
    throw new RefusedError(`pool '${pool}' is replicated: its volumes belong to one VM and two hosts; import images into a shared or local pool`);
  const free = (await driver.status()).freeBytes;
  if (free !== undefined && free < bytes) throw new RefusedError(`pool '${pool}' on ${ctx.node.name} has ${Math.floor(free / 2 ** 20)} MiB free; the image needs ${Math.ceil(bytes / 2 ** 20)} MiB`);

  const record: ImageRecord = {
    name, kind: 'disk', state: 'importing', pool, volume: imageVolumeName(name), format: defaultFormat(driver.config), sourceFormat: 'unknown',
    virtualBytes: 0, fileBytes: bytes, sha256, fileName, ...(driver.shared ? {} : { host: ctx.node.name }), importer: ctx.node.name, importedAt: new Date().toISOString(), importedBy: caller.name,
  };
  if (!(await ctx.state.reserveImage(record))) {
    const existing = await ctx.state.image(name);
    throw new RefusedError(`an image named '${name}' ${existing?.state === 'importing' ? 'is being imported now' : 'exists already'}; delete it first or choose another name`);
  }
  const uploads = path.join(ctx.node.stateDir, 'uploads');
  const part = path.join(uploads, `${name}-${randomBytes(4).toString('hex')}.part`);
  let volume: StoredVolume | undefined;
  try {
    await mkdir(uploads, { recursive: true, mode: 0o700 });
    const room = await statfs(uploads);
    if (room.bavail * room.bsize < bytes + 2 ** 30)
      throw new RefusedError(`host '${ctx.node.name}' has ${Math.floor((room.bavail * room.bsize) / 2 ** 20)} MiB free in ${uploads} for the upload of ${Math.ceil(bytes / 2 ** 20)} MiB (and 1 GiB to spare); free space there`);
    const received = await receive(request, part, bytes);
    if (received.bytes !== bytes) throw new RefusedError(`the upload ended after ${received.bytes} of ${bytes} bytes; nothing was imported, try again`);
    if (received.sha256 !== sha256) throw new RefusedError(`the file arrived with SHA-256 ${received.sha256}, not ${sha256} as sent; nothing was imported, try again`);
    const what = await inspectImageFile(part, `'${fileName}'`);
    // An ISO stays raw and byte for byte what was sent; a disk image takes the pool's format.
    const format: VolumeFormat = what.kind === 'iso' ? 'raw' : record.format;
    const sizeBytes = Math.ceil(what.virtualBytes / 512) * 512;
    volume = await createVolume(ctx, { pool, name: record.volume, format, sizeBytes, image: name });
    await convertInto(part, what.format, jsonFilename(driver.blockdev(volume)), format);
    const ready: ImageRecord = { ...record, kind: what.kind, state: 'ready', format, sourceFormat: what.format, virtualBytes: what.virtualBytes };
    await ctx.state.putImage(ready);
    ctx.log(`image ${name} imported by ${caller.name}: ${what.kind}, ${what.format} -> ${format}, ${what.virtualBytes} bytes, sha256 ${sha256.slice(0, 16)}…, in pool ${pool}`);
    return ready;
  } catch (err) {
    if (volume) await removeVolume(ctx, volume).catch(() => undefined);
    await ctx.state.deleteImage(name);
    throw err;
  } finally {
    await rm(part, { force: true });
  }
}

/** Writes the request body to `file`, hashing it on the way; a stalled upload is cut off, a longer one than announced too. */
async function receive(request: IncomingMessage, file: string, announced: number): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const count = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      if (bytes > announced) return done(new RefusedError(`the upload sent more than the ${announced} bytes it announced; nothing was imported`));
      hash.update(chunk);
      done(null, chunk);
    },
  });
  request.setTimeout(UPLOAD_IDLE_MS, () => request.destroy(new ApiError(408, `the upload stalled (nothing for ${UPLOAD_IDLE_MS / 1000} s)`)));
  try {
    await pipeline(request, count, createWriteStream(file, { mode: 0o600 }));
  } finally {
    request.setTimeout(0);
  }
  return { bytes, sha256: hash.digest('hex') };
}

/**
 * At agent start: imports this host was doing when it stopped will never finish. Their records,
 * volumes and partial uploads go (an image is ready, or it is not there).
 */
export async function removeStaleImports(ctx: AgentContext): Promise<void> {
  await rm(path.join(ctx.node.stateDir, 'uploads'), { recursive: true, force: true });
  for (const image of await ctx.state.images()) {
    if (image.state !== 'importing' || image.importer !== ctx.node.name) continue;
    const volume = await ctx.state.volume(image.pool, image.volume);
    if (volume) await removeVolume(ctx, volume).catch((err: Error) => ctx.log(`warning: the volume of the unfinished import of '${image.name}' could not be removed: ${err.message}`));
    await ctx.state.deleteImage(image.name);
    ctx.log(`the import of image '${image.name}', cut off when this agent stopped, is removed`);
  }
}

/** A disk made from an image (a boot disk, or an imported VM's other disks): which image, which pool, at least how big. */
export interface ImageDiskRequest {
  image: string;
  pool: string;
  sizeBytes?: number;
}

/** The ready image of that name, for a use that needs `kind`; refused in words a user can act on. */
/** An ISO image as a CD-ROM's medium (its size rounded up to whole sectors, as QEMU sees it). */
export function isoMedium(image: ImageRecord): IsoMedium {
  return { image: image.name, pool: image.pool, volume: image.volume, sizeBytes: Math.ceil(image.virtualBytes / 512) * 512 };
}

export async function readyImage(ctx: AgentContext, name: string, kind: 'disk' | 'iso'): Promise<ImageRecord> {
  const image = await ctx.state.image(name);
  if (!image) throw new RefusedError(`no image named '${name}'; see 'ferry image list' (import one with 'ferry image import ${name} FILE')`);
  if (image.state !== 'ready') throw new RefusedError(`image '${name}' is still being imported`);
  if (image.kind !== kind)
    throw new RefusedError(kind === 'disk' ? `image '${name}' is an ISO; attach it with --cdrom ${name} (and --boot cdrom to install from it)` : `image '${name}' is a disk image, not an ISO; boot from it with --image ${name}`);
  if (image.host && image.host !== ctx.node.name)
    throw new RefusedError(`image '${name}' is kept on host '${image.host}' (pool '${image.pool}' is local to each host); create the VM there (--host ${image.host}) or import the image into a shared pool`);
  return image;
}

/**
 * A disk from an image (the boot disk): on a shared-dir pool an overlay whose backing file is the image's volume (it takes
 * no time and no room; every host opens both by the same relative name), elsewhere a full copy (a
 * local disk must be copyable alone in a migration, and block backends have no backing files).
 */
export async function makeDiskFromImage(ctx: AgentContext, vm: string, id: string, request: ImageDiskRequest, made: StoredVolume[]): Promise<DiskSpec> {
  const image = await readyImage(ctx, request.image, 'disk');
  const driver = (await storageCatalog(ctx)).get(request.pool);
  if (driver.config.type === 'replicated') throw new RefusedError(`a boot disk from an image cannot go on replicated pool '${request.pool}' yet; use a shared or local pool`);
  const sizeBytes = Math.max(request.sizeBytes ?? 0, Math.ceil(image.virtualBytes / 512) * 512);
  if (request.sizeBytes !== undefined && request.sizeBytes < image.virtualBytes)
    throw new RefusedError(`--disk-size ${request.sizeBytes} bytes is smaller than image '${image.name}' (${image.virtualBytes} bytes); give at least that`);
  const overlay = driver.createOverlay !== undefined && image.pool === request.pool && image.format === 'qcow2';
  const imageDriver = (await storageCatalog(ctx)).get(image.pool);
  const imageVolume = await ctx.state.volume(image.pool, image.volume);
  if (!imageVolume) throw new RefusedError(`the volume of image '${image.name}' (${image.pool}/${image.volume}) is gone; import the image again`);
  const format = overlay ? 'qcow2' : defaultFormat(driver.config);
  const volume = await createVolume(ctx, {
    pool: request.pool, name: `${vm}-${id}`, format, sizeBytes, vm, ...(overlay ? { backingImage: image.name } : {}),
  }, overlay ? (v) => driver.createOverlay!(v, imageVolume) : undefined);
  made.push(volume);
  if (!overlay) await convertInto(jsonFilename(imageDriver.blockdev(imageVolume)), image.format, jsonFilename(driver.blockdev(volume)), format);
  ctx.log(`${vm}: disk ${request.pool}/${volume.name} ${overlay ? 'is an overlay on' : 'copied from'} image ${image.name}`);
  return diskOf(volume, id, { image: image.name });
}

/** The UEFI variable store: a copy of OVMF's empty template, the VM's own from then on. */
export async function makeUefiVars(ctx: AgentContext, vm: string, id: string, pool: string, made: StoredVolume[]): Promise<DiskSpec> {
  requireUefi(ctx.node.name);
  const driver = (await storageCatalog(ctx)).get(pool);
  const volume = await createVolume(ctx, { pool, name: `${vm}-vars`, format: 'raw', sizeBytes: UEFI_VARS_BYTES, vm });
  made.push(volume);
  await fill(driver, volume, ovmfVarsTemplate());
  return diskOf(volume, id, { bus: 'pflash' });
}

/** The cloud-init seed, built here and copied into a volume of the VM's pool. */
export async function makeSeed(ctx: AgentContext, vm: string, id: string, pool: string, config: CloudInitConfig, made: StoredVolume[]): Promise<DiskSpec> {
  const driver = (await storageCatalog(ctx)).get(pool);
  const dir = path.join(ctx.node.stateDir, 'uploads');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, `${vm}-seed-${randomBytes(4).toString('hex')}.img`);
  try {
    await buildSeedImage(config, file);
    const volume = await createVolume(ctx, { pool, name: `${vm}-seed`, format: 'raw', sizeBytes: SEED_BYTES, vm });
    made.push(volume);
    await fill(driver, volume, file);
    return diskOf(volume, id, {});
  } finally {
    await rm(file, { force: true });
  }
}

async function fill(driver: StorageDriver, volume: StoredVolume, rawFile: string): Promise<void> {
  await convertInto(rawFile, 'raw', jsonFilename(driver.blockdev(volume)), volume.format);
}

function diskOf(volume: StoredVolume, id: string, extra: Partial<DiskSpec>): DiskSpec {
  return {
    id, pool: volume.pool, volume: volume.name, format: volume.format, sizeBytes: volume.sizeBytes,
    ...(volume.location ? { location: volume.location } : {}),
    ...extra,
  };
}
