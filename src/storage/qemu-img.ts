/** Image files through qemu-img: create, inspect. */
import { run } from '../util/exec.ts';
import type { VolumeFormat } from '../qemu/spec.ts';

export async function createImage(file: string, format: VolumeFormat, sizeBytes: number): Promise<void> {
  // qcow2 with a small cluster-table preallocation is what admins get by default; raw files are sparse.
  await run('qemu-img', ['create', '-q', '-f', format, file, String(sizeBytes)], { timeoutMs: 60_000 });
}

/** A qcow2 overlay over `backing`, named as the overlay's header will keep it (relative: resolved beside the overlay). */
export async function createOverlayImage(file: string, backing: string, backingFormat: VolumeFormat, sizeBytes: number): Promise<void> {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, file, String(sizeBytes)], { timeoutMs: 60_000 });
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
  actualSize: number;
}

/** Reads an image's header; `format` forces how it is read (a LUN's size is its raw size, whatever a guest wrote into it). */
export async function imageInfo(file: string, format?: 'raw'): Promise<ImageInfo> {
  const out = JSON.parse(await run('qemu-img', ['info', '-U', '--output=json', ...(format ? ['-f', format] : []), file])) as Record<string, unknown>;
  return { format: String(out['format']), virtualSize: Number(out['virtual-size']), actualSize: Number(out['actual-size'] ?? 0) };
}

/** A -blockdev description as a filename qemu-img accepts: any driver's volume, in or out of a directory. */
export function jsonFilename(blockdev: Record<string, unknown>): string {
  return `json:${JSON.stringify(blockdev)}`;
}

/**
 * Copies an image's contents into an existing volume (`-n`: the target is made by its driver, at
 * its size), skipping zeroes, so a sparse image stays sparse.
 */
export async function convertInto(source: string, sourceFormat: string, target: string, targetFormat: VolumeFormat, timeoutMs = 30 * 60_000): Promise<void> {
  await run('qemu-img', ['convert', '-q', '-n', '-f', sourceFormat, '-O', targetFormat, source, target], { timeoutMs });
}

/** Grows an image to `sizeBytes` (a boot disk bigger than the image it came from). */
export async function resizeImage(file: string, format: VolumeFormat, sizeBytes: number): Promise<void> {
  await run('qemu-img', ['resize', '-q', '-f', format, file, String(sizeBytes)], { timeoutMs: 60_000 });
}
