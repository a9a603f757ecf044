/**
 * Disk benchmark: a guest with a 1 GiB disk of which 768 MiB are written,
 * live-migrated between two hosts' `local` pools while diskcheck keeps
 * writing. A script's NBD mirror with QEMU's defaults (bench/baseline.ts) and
 * ferry's NBD mirror in active mode, interleaved in one run. The physical bound is the
 * bytes that must move (allocated disk + non-zero RAM) over the throughput of
 * the same kind of link (a unix socket), measured in the same run.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { median, ms, table } from '../src/cli/format.ts';
import type { HostNetwork } from '../src/lab/host-network.ts';
import type { Probe } from '../src/lab/probe.ts';
import { migrate } from '../src/migration/engine.ts';
import { LocalDestination, LocalSource } from '../src/migration/local.ts';
import type { GuestImage } from '../src/qemu/guest-image.ts';
import { guestBoot } from '../src/qemu/guest-image.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { nonZeroBytes } from '../src/qemu/ram-scan.ts';
import { macFor, makeVmSpec, type DiskSpec } from '../src/qemu/spec.ts';
import { imageInfo } from '../src/storage/qemu-img.ts';
import { StorageCatalog } from '../src/storage/registry.ts';
import { volumeOf } from '../src/storage/types.ts';
import { migrateWithMirrorDefaults } from './baseline.ts';

export type DiskVariant = 'qemu-mirror-defaults' | 'ferry-balanced';
const VARIANTS: DiskVariant[] = ['qemu-mirror-defaults', 'ferry-balanced'];

export interface DiskSample {
  totalMs: number;
  downtimeMs: number;
  blackoutMs: number;
  ramBytes: number;
  diskBytes: number;
  boundMs: number;
}

const DISK_BYTES = 2 ** 30;
const WRITTEN_MIB = 768;
const WRITES_PER_SEC = 50;

export async function runDiskBench(options: { runs: number; image: GuestImage; net: HostNetwork; probe: Probe }): Promise<Record<DiskVariant, DiskSample[]>> {
  const { runs, image, net, probe } = options;
  const base = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-disk-'));
  const runDir = path.join(base, 'run');
  const hosts = ['h1', 'h2'] as const;
  for (const h of hosts) await mkdir(path.join(base, h), { recursive: true });
  const storage = Object.fromEntries(hosts.map((h) => [h, new StorageCatalog([{ name: 'local', type: 'local', path: path.join(base, '%h') }], h)])) as Record<'h1' | 'h2', StorageCatalog>;
  const disk: DiskSpec = { id: 'disk0', pool: 'local', volume: 'bench-disk0', format: 'qcow2', sizeBytes: DISK_BYTES };
  const uuid = crypto.randomUUID();
  const ip = net.guestIp(11);
  const spec = makeVmSpec({
    name: 'benchdisk',
    uuid,
    memoryMiB: 256,
    accel: 'tcg',
    boot: guestBoot(image, { ip: `${ip}/24`, memcheckMiB: 16, dirtyMiBps: 0, diskcheck: { ratePerSec: 0 } }),
    nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: net.bridge } }],
    disks: [disk],
  });
  const samples = Object.fromEntries(VARIANTS.map((v) => [v, [] as DiskSample[]])) as Record<DiskVariant, DiskSample[]>;
  let host: 'h1' | 'h2' = 'h1';
  await storage.h1.get('local').create(volumeOf(disk));
  let vm = await VmInstance.launch({ spec, accel: 'tcg', runDir, network: net.attacher, disks: storage.h1.attachments(spec.disks) });
  try {
    await vm.waitUntilReady(60_000);
    process.stderr.write(`disk benchmark: writing ${WRITTEN_MIB} MiB of the guest's 1 GiB disk ... `);
    const fill = await probe.diskcheckFill(ip, WRITTEN_MIB, 600_000);
    process.stderr.write(`${fill.ms} ms\n`);
    await probe.diskcheckRate(ip, WRITES_PER_SEC);
    const boot = (await probe.gamesrv(ip)).boot;
    const linkBytesPerSec = await unixSocketThroughput(512 * 2 ** 20);
    await probe.startStream(ip, 200);
    for (let run = 1; run <= runs; run++) {
      for (const variant of VARIANTS) {
        const to: 'h1' | 'h2' = host === 'h1' ? 'h2' : 'h1';
        const allocated = (await imageInfo(path.join(base, host, 'bench-disk0.qcow2'))).actualSize;
        const ramNonZero = await nonZeroBytes(vm);
        const boundMs = ((allocated + ramNonZero) / linkBytesPerSec) * 1000;
        await new Promise((r) => setTimeout(r, 300));
        await probe.window();
        let sample: Omit<DiskSample, 'blackoutMs' | 'boundMs'>;
        if (variant === 'qemu-mirror-defaults') {
          const from = host;
          const r = await migrateWithMirrorDefaults(vm, runDir, net.attacher, {
            destination: storage[to].attachments(spec.disks),
            prepare: async () => void (await storage[to].get('local').prepareIncoming(volumeOf(disk), allocated)),
            releaseSource: () => storage[from].get('local').releaseAfterMigration(volumeOf(disk)),
          });
          vm = r.vm;
          sample = { totalMs: r.totalMs, downtimeMs: r.downtimeMs ?? 0, ramBytes: r.bytes, diskBytes: r.diskBytes };
        } else {
          const destination = new LocalDestination({ spec, accel: 'tcg', runDir, network: net.attacher, storage: storage[to] });
          const record = await migrate({ source: new LocalSource(vm, { storage: storage[host] }), destination, params: { policy: 'balanced' } });
          vm = destination.instance;
          sample = { totalMs: record.totalMs, downtimeMs: record.downtimeMs ?? 0, ramBytes: record.bytes, diskBytes: record.diskBytes };
        }
        host = to;
        await new Promise((r) => setTimeout(r, 200));
        const w = await probe.window();
        samples[variant].push({ ...sample, blackoutMs: w.maxGapMs, boundMs });
        process.stderr.write(`\rdisk: run ${run}/${runs} ${variant}: total ${sample.totalMs} ms, blackout ${w.maxGapMs} ms        `);
      }
    }
    process.stderr.write('\n');
    await probe.stopStream();
    if ((await probe.gamesrv(ip)).boot !== boot) throw new Error('disk benchmark: the guest restarted');
    const stats = await probe.diskcheckStats(ip);
    const verdict = await probe.diskcheckVerify(ip, 600_000);
    if (stats.errors || verdict.lost || verdict.torn || verdict.foreign)
      throw new Error(`disk benchmark: the disk does not verify (errors ${stats.errors}, lost ${verdict.lost}, torn ${verdict.torn}, foreign ${verdict.foreign})`);
    printDiskScenario(samples, runs, linkBytesPerSec, stats.writes);
    return samples;
  } finally {
    await vm.destroy().catch(() => undefined);
    await rm(base, { recursive: true, force: true });
  }
}

/** Bytes per second one process pushes to another over a unix socket: the link every local migration here uses. */
async function unixSocketThroughput(bytes: number): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-link-'));
  const sock = path.join(dir, 'link.sock');
  try {
    let received = 0;
    let t0 = 0;
    const done = new Promise<number>((resolve) => {
      const server = createServer((conn) => {
        t0 = performance.now();
        conn.on('data', (chunk) => (received += chunk.length));
        conn.on('end', () => {
          server.close();
          resolve(performance.now() - t0);
        });
      });
      server.listen(sock, () => {
        // A separate writer process, like QEMU on the other side; dd streams zero-filled blocks without compression.
        spawn('sh', ['-c', `dd if=/dev/zero bs=1M count=${bytes / 2 ** 20} status=none | ${process.execPath} -e "const s=require('net').connect('${sock}');process.stdin.pipe(s)"`], { stdio: 'ignore' });
      });
    });
    const elapsedMs = await done;
    if (received !== bytes) throw new Error(`link measurement: received ${received} of ${bytes} bytes`);
    return bytes / (elapsedMs / 1000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function printDiskScenario(samples: Record<DiskVariant, DiskSample[]>, runs: number, linkBytesPerSec: number, writes: number) {
  const base = samples['qemu-mirror-defaults'];
  const med = (xs: DiskSample[], k: keyof DiskSample) => median(xs.map((s) => s[k]));
  const ratio = (v: number, b: number) => (b > 0 ? `${(v / b).toFixed(2)}×` : '-');
  console.log(
    `\nlocal storage: 256 MiB guest, 1 GiB qcow2 disk with ${WRITTEN_MIB} MiB written, diskcheck writing ${WRITES_PER_SEC} blocks/s — medians of ${runs} runs, interleaved`,
  );
  console.log(`link (unix socket, same run): ${(linkBytesPerSec / 2 ** 20).toFixed(0)} MiB/s; bound = (allocated disk + non-zero RAM) / link`);
  console.log(
    table(
      ['variant', 'total', 'bound', 'total/bound', 'QEMU downtime', 'client blackout', 'disk MiB', 'RAM MiB', 'total vs defaults', 'blackout vs defaults'],
      VARIANTS.map((v) => {
        const s = samples[v];
        return [
          v,
          ms(med(s, 'totalMs')),
          ms(med(s, 'boundMs')),
          ratio(med(s, 'totalMs'), med(s, 'boundMs')),
          ms(med(s, 'downtimeMs')),
          ms(med(s, 'blackoutMs')),
          (med(s, 'diskBytes') / 2 ** 20).toFixed(0),
          (med(s, 'ramBytes') / 2 ** 20).toFixed(0),
          ratio(med(s, 'totalMs'), med(base, 'totalMs')),
          ratio(med(s, 'blackoutMs'), med(base, 'blackoutMs')),
        ];
      }),
    ),
  );
  console.log(`disk verified after all runs: ${writes} guest writes, none lost, torn or foreign. libvirt --copy-storage-all: not run (libvirt is not installed by this benchmark yet).`);
}
