/**
 * What an uploaded file really is. The format comes from qemu-img and the file's own bytes, never
 * from its name: an ISO 9660 image (its volume descriptor at 32 KiB), a disk image in one of the
 * formats QEMU reads, or a raw disk with a partition table. Anything else is refused.
 */
import { open } from 'node:fs/promises';
import { run } from '../util/exec.ts';
import { StorageError } from './errors.ts';

export type ImageKind = 'disk' | 'iso';

/** Formats ferry imports; all but qcow2 and raw are converted to the pool's format on import. */
export const IMPORTABLE_FORMATS = ['qcow2', 'raw', 'vmdk', 'vdi', 'vhdx', 'vpc'] as const;
export type ImportableFormat = (typeof IMPORTABLE_FORMATS)[number];

export interface InspectedImage {
  kind: ImageKind;
  format: ImportableFormat;
  /** The disk size a guest sees. */
  virtualBytes: number;
}

export class NotAnImageError extends StorageError {
  override name = 'NotAnImageError';
  constructor(what: string, detail: string) {
    super(`${what} is not a disk image or ISO: ${detail}`);
  }
}

/**
 * qemu-img reads untrusted bytes here: it runs with 1 GiB of address space and 30 s of CPU at most
 * (as OpenStack does for uploaded images), so a crafted header cannot exhaust the host.
 */
const QEMU_IMG_LIMITS = ['--as=1073741824', '--cpu=30'];

export async function inspectImageFile(file: string, what: string): Promise<InspectedImage> {
  let info: Record<string, unknown>;
  try {
    info = JSON.parse(await run('prlimit', [...QEMU_IMG_LIMITS, 'qemu-img', 'info', '--output=json', file], { timeoutMs: 60_000 })) as Record<string, unknown>;
  } catch (err) {
    throw new NotAnImageError(what, `qemu-img cannot read it (${(err as Error).message.split('\n')[0]})`);
  }
  const format = String(info['format']);
  const virtualBytes = Number(info['virtual-size']);
  if (!(IMPORTABLE_FORMATS as readonly string[]).includes(format))
    throw new NotAnImageError(what, `qemu-img reads it as '${format}'; ferry imports ${IMPORTABLE_FORMATS.join(', ')} and ISO 9660`);
  if (info['backing-filename'])
    throw new NotAnImageError(what, `it is an overlay on '${String(info['backing-filename'])}'; flatten it first ('qemu-img convert -O qcow2 IN OUT')`);
  // An image must hold its own bytes: a qcow2 external data file or a VMDK extent elsewhere would make
  // the import copy some other file of the host (a key, say) into the volume.
  const outside = externalFiles(info, file);
  if (outside.length)
    throw new NotAnImageError(what, `it refers to data outside itself (${outside.join(', ')}); make it self-contained first ('qemu-img convert -O qcow2 IN OUT')`);
  if (format !== 'raw') return { kind: 'disk', format: format as ImportableFormat, virtualBytes };
  // qemu-img calls every file it cannot place "raw": look at the bytes.
  const head = Buffer.alloc(32 * 1024 + 8);
  const handle = await open(file, 'r');
  const { bytesRead } = await handle.read(head, 0, head.length, 0).finally(() => handle.close());
  if (bytesRead >= 32 * 1024 + 6 && head.toString('latin1', 32 * 1024 + 1, 32 * 1024 + 6) === 'CD001') return { kind: 'iso', format: 'raw', virtualBytes };
  const mbr = bytesRead >= 512 && head[510] === 0x55 && head[511] === 0xaa;
  const gpt = bytesRead >= 520 && head.toString('latin1', 512, 520) === 'EFI PART';
  if (mbr || gpt) return { kind: 'disk', format: 'raw', virtualBytes };
  throw new NotAnImageError(what, 'it has no partition table (MBR or GPT) and no ISO 9660 volume descriptor');
}

/** Files an image would read besides itself (qcow2 data-file, VMDK extents, any child but its own file). */
function externalFiles(info: Record<string, unknown>, file: string): string[] {
  const found: string[] = [];
  const specific = (info['format-specific'] as { data?: Record<string, unknown> } | undefined)?.data ?? {};
  if (specific['data-file']) found.push(`data file ${String(specific['data-file'])}`);
  for (const extent of (specific['extents'] as { filename?: string }[] | undefined) ?? []) if (extent.filename && extent.filename !== file) found.push(`extent ${extent.filename}`);
  for (const child of (info['children'] as { name?: string }[] | undefined) ?? []) if (child.name !== 'file' && !found.length) found.push(`child '${child.name}'`);
  return found;
}
