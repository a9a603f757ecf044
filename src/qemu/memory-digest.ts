/**
 * A digest of a paused guest's RAM: one hash per MiB of guest-physical memory,
 * taken with QMP `pmemsave`. Comparing the digests of a migration's paused
 * source and paused destination proves the destination got every page — a
 * check against the migration losing pages, which QEMU 7.2 under TCG was seen
 * to do for busy guests that need many rounds.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { VmInstance } from './instance.ts';

const CHUNK = 2 ** 20;

/** Guest-physical RAM ranges of a q35 guest: low memory up to 2 GiB, the rest above 4 GiB. */
function ramRanges(memoryMiB: number): [number, number][] {
  const low = Math.min(memoryMiB, 2048) * CHUNK;
  const ranges: [number, number][] = [[0, low]];
  if (memoryMiB > 2048) ranges.push([4 * 1024 * CHUNK, (memoryMiB - 2048) * CHUNK]);
  return ranges;
}

export async function memoryDigest(instance: VmInstance): Promise<string[]> {
  const digest: string[] = [];
  for (const [start, size] of ramRanges(instance.spec.memoryMiB)) {
    const file = path.join(instance.dir, 'memory.dump');
    await instance.qmp.execute('pmemsave', { val: start, size, filename: file }, 120_000);
    try {
      let hash = createHash('sha1');
      let filled = 0;
      for await (const piece of createReadStream(file, { highWaterMark: CHUNK })) {
        let buf = piece as Buffer;
        while (buf.length) {
          const take = Math.min(CHUNK - filled, buf.length);
          hash.update(buf.subarray(0, take));
          filled += take;
          buf = buf.subarray(take);
          if (filled === CHUNK) {
            digest.push(hash.digest('hex'));
            hash = createHash('sha1');
            filled = 0;
          }
        }
      }
      if (filled) digest.push(hash.digest('hex'));
    } finally {
      await rm(file, { force: true });
    }
  }
  return digest;
}

/** MiB chunks (by index) whose digests differ. */
export function differingChunks(a: string[], b: string[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) out.push(i);
  return out;
}
