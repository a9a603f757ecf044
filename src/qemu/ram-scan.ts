/**
 * Reading a guest's RAM (from the memfd it lives in, or through QMP `pmemsave` for a QEMU started
 * without one): a digest (one hash per MiB of
 * guest-physical memory) and the count of non-zero pages. Comparing the digests
 * of a migration's paused source and paused destination proves the destination
 * got every page — a check against the migration losing pages, which QEMU 7.2
 * under TCG was seen to do for bandwidth-limited streams of busy guests.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readlink, rm } from 'node:fs/promises';
import path from 'node:path';
import type { VmInstance } from './instance.ts';

const CHUNK = 2 ** 20;
const ZERO_CHUNK = Buffer.alloc(CHUNK);

/** Guest-physical RAM ranges of a q35 guest: low memory up to 2 GiB, the rest above 4 GiB. */
function ramRanges(memoryMiB: number): [number, number][] {
  const low = Math.min(memoryMiB, 2048) * CHUNK;
  const ranges: [number, number][] = [[0, low]];
  if (memoryMiB > 2048) ranges.push([4 * 1024 * CHUNK, (memoryMiB - 2048) * CHUNK]);
  return ranges;
}

/** How a scan read the RAM: both sides of a memory check must read it the same way. */
export type RamView = 'memfd' | 'pmemsave';

/** The guest RAM's memfd, opened through QEMU's file descriptor table (see argv.ts). */
async function ramMemfd(instance: VmInstance): Promise<string | undefined> {
  const dir = `/proc/${instance.process.pid}/fd`;
  for (const fd of await readdir(dir).catch(() => [] as string[])) {
    const target = await readlink(path.join(dir, fd)).catch(() => '');
    if (target.startsWith('/memfd:memory-backend-memfd')) return path.join(dir, fd);
  }
  return undefined;
}

/** Hands the guest's RAM over in 1 MiB pieces (the last may be shorter): from its memfd, else dumped with pmemsave. */
async function scanRam(instance: VmInstance, visit: (chunk: Buffer) => void): Promise<RamView> {
  const memfd = await ramMemfd(instance);
  if (memfd) {
    await readInChunks(memfd, visit);
    return 'memfd';
  }
  await dumpRam(instance, visit);
  return 'pmemsave';
}

async function readInChunks(file: string, visit: (chunk: Buffer) => void): Promise<void> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const piece of createReadStream(file, { highWaterMark: CHUNK })) {
    pending = pending.length ? Buffer.concat([pending, piece as Buffer]) : (piece as Buffer);
    while (pending.length >= CHUNK) {
      visit(pending.subarray(0, CHUNK));
      pending = pending.subarray(CHUNK);
    }
  }
  if (pending.length) visit(pending);
}

/** A QEMU started without the memfd (by an older ferry): its RAM dumped with pmemsave, guest-physical range by range. */
async function dumpRam(instance: VmInstance, visit: (chunk: Buffer) => void): Promise<void> {
  for (const [start, size] of ramRanges(instance.spec.memoryMiB)) {
    const file = path.join(instance.dir, 'memory.dump');
    await instance.qmp.execute('pmemsave', { val: start, size, filename: file }, 120_000);
    try {
      await readInChunks(file, visit);
    } finally {
      await rm(file, { force: true });
    }
  }
}

/**
 * One SHA-1 per MiB of guest RAM, after the view it was read through (`view:memfd`); the guest
 * should be paused for the result to mean anything.
 */
export async function memoryDigest(instance: VmInstance): Promise<string[]> {
  const digest: string[] = [];
  // Most of a guest's RAM is zero: comparing a MiB with zeros is far cheaper than hashing it.
  const view = await scanRam(instance, (chunk) => digest.push(chunk.length === CHUNK && chunk.equals(ZERO_CHUNK) ? 'zero' : createHash('sha1').update(chunk).digest('hex')));
  return [`view:${view}`, ...digest];
}

/** Bytes of guest RAM in 4 KiB pages that are not all zero: what a migration really has to send. */
export async function nonZeroBytes(instance: VmInstance): Promise<number> {
  let pages = 0;
  const zero = Buffer.alloc(4096);
  await scanRam(instance, (chunk) => {
    for (let off = 0; off < chunk.length; off += 4096) if (!chunk.subarray(off, off + 4096).equals(zero)) pages++;
  });
  return pages * 4096;
}

/** MiB chunks (by index) whose digests differ. */
export function differingChunks(a: string[], b: string[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) out.push(i);
  return out;
}
