/** ferry image import|list|delete: disk images and ISOs that VMs are made from. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { ImageRecord } from '../../cluster/model.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { mib, table } from '../format.ts';
import type { Command } from '../command.ts';
import { ProgressDisplay } from '../progress.ts';

const USAGE = `Usage:
  ferry image import NAME FILE --pool POOL [--host HOST]
      FILE: a qcow2, raw, vmdk, vdi, vhdx or vpc disk image, or an ISO 9660 image; what it is comes from
      its bytes (qemu-img and the ISO's volume descriptor), never from its name. Disk images are kept in
      the pool's format (qcow2 on directories, raw on rbd and iscsi), ISOs byte for byte. The upload is
      checked against the file's SHA-256. On a local pool the image is kept on --host (default: the first).
  ferry image list
  ferry image delete NAME              refused while a VM's disk is an overlay on it or its CD-ROM holds it
VMs are made from images with 'ferry vm create NAME --image IMAGE' or '--cdrom IMAGE'.
Every command takes --json.`;

export const imageCommand: Command = {
  summary: 'disk images and ISOs: import, list, delete',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: { pool: { type: 'string' }, host: { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } },
    });
    const [verb, name, file] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    const cli = await Cli.load(values.context);
    switch (verb) {
      case 'import': {
        if (!name || !file) throw new UsageError('ferry image import NAME FILE --pool POOL');
        if (!values.pool) throw new UsageError('--pool POOL is required: where the image is kept; see ferry storage list');
        const host = values.host ?? cli.context.agents[0]?.name;
        if (!host) throw new UsageError('the cluster has no hosts');
        const started = Date.now();
        const image = await uploadImage(cli, host, name, file, values.pool);
        return out(
          `image ${image.name} imported in ${((Date.now() - started) / 1000).toFixed(1)} s: ${image.kind === 'iso' ? 'ISO' : `disk (${image.sourceFormat}${image.sourceFormat !== image.format ? ` -> ${image.format}` : ''})`}, ` +
            `${mib(image.virtualBytes)}, pool ${image.pool}${image.host ? ` on ${image.host}` : ''}, sha256 ${image.sha256}`,
          image,
        );
      }
      case 'list': {
        const { images } = await (await cli.anyAgent()).call<{ images: ImageRecord[] }>('GET', '/v1/cluster/images');
        return out(
          table(
            ['image', 'kind', 'format', 'size', 'pool', 'host', 'state', 'sha256', 'file'],
            images.map((i) => [i.name, i.kind, i.format, mib(i.virtualBytes), i.pool, i.host ?? '-', i.state, i.sha256.slice(0, 16), i.fileName]),
          ),
          images,
        );
      }
      case 'delete': {
        if (!name) throw new UsageError('ferry image delete NAME');
        const { images } = await (await cli.anyAgent()).call<{ images: ImageRecord[] }>('GET', '/v1/cluster/images');
        const image = images.find((i) => i.name === name);
        if (!image) throw new UsageError(`no image named '${name}'; see ferry image list`);
        const agent = image.host ? cli.agent(image.host) : await cli.anyAgent();
        await agent.call('DELETE', `/v1/images/${encodeURIComponent(name)}`, {}, 120_000);
        return out(`image ${name} deleted`, { deleted: name });
      }
      default:
        throw new UsageError(USAGE);
    }
  },
};

/** Checksums a file, then uploads it to `host` as image `name` in `pool`, with progress on a terminal. */
export async function uploadImage(cli: Cli, host: string, name: string, file: string, pool: string): Promise<ImageRecord> {
  const info = await stat(file).catch(() => undefined);
  if (!info?.isFile()) throw new UsageError(`${file} is not a file`);
  const progress = new ProgressDisplay();
  try {
    const sha256 = await fileSha256(file, (done) => progress.update(`checksumming ${path.basename(file)}: ${percent(done, info.size)}`));
    const query = new URLSearchParams({ pool, sha256, bytes: String(info.size), file: path.basename(file) });
    const { image } = await cli.agent(host).upload<{ image: ImageRecord }>(`/v1/images/${encodeURIComponent(name)}?${query}`, file, info.size, (sent) =>
      progress.update(sent < info.size ? `uploading ${path.basename(file)} to ${host}: ${percent(sent, info.size)} (${mib(sent)} of ${mib(info.size)})` : `${host} is writing the image into pool ${pool}…`),
    );
    return image;
  } finally {
    progress.clear();
  }
}

async function fileSha256(file: string, onProgress: (bytes: number) => void): Promise<string> {
  const hash = createHash('sha256');
  let done = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    onProgress(done);
  }
  return hash.digest('hex');
}

function percent(done: number, total: number): string {
  return `${total ? Math.floor((done / total) * 100) : 100}%`;
}
