/**
 * Disk benchmark: a guest with a 1 GiB disk of which 768 MiB are written,
 * live-migrated between two hosts' `local` pools while diskcheck keeps
 * writing. A script's NBD mirror with QEMU's defaults (bench/baseline.ts) and
 * ferry's NBD mirror in active mode, and libvirt's `virsh migrate --live
 * --copy-storage-all` of a libvirt-run guest of the same spec (bench/libvirt.ts),
 * interleaved in one run. The physical bound is the
 * bytes that must move (allocated disk + non-zero RAM) over the throughput of
 * the same kind of link (a unix socket), measured in the same run.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { medianCell, medianOfMeasured, ms, table } from '../src/cli/format.ts';
import { attemptsCell, countAttempts } from './attempts.ts';
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
import { unixSocketThroughput } from './link.ts';
import { migrateWithMirrorDefaults } from './baseline.ts';
import type { LibvirtHostName, LibvirtPair, LibvirtVm } from './libvirt.ts';

export type DiskVariant = 'qemu-mirror-defaults' | 'ferry-balanced' | 'libvirt-copy-storage-all';
const FERRY_VARIANTS: DiskVariant[] = ['qemu-mirror-defaults', 'ferry-balanced'];
/** Guest number (last octet) of the libvirt-run guest of the disk scenario. */
const LIBVIRT_GUEST = 21;

export interface DiskSample {
  /** Attempts this run took (ferry tries again after a rollback; the baselines do not). */
  attempts: number;
  failures: string[];
  totalMs: number;
  /** null: the variant did not report it (never counted as 0). */
  downtimeMs: number | null;
  blackoutMs: number;
  /** null: not reported (libvirt's statistics can lack it). */
  ramBytes: number | null;
  diskBytes: number | null;
  boundMs: number;
}

const DISK_BYTES = 2 ** 30;
const WRITTEN_MIB = 768;
const WRITES_PER_SEC = 50;

export async function runDiskBench(options: {
  runs: number;
  image: GuestImage;
  net: HostNetwork;
  probe: Probe;
  /** The libvirt hosts (bench/libvirt.ts), or undefined with the reason in libvirtReason. */
  libvirt?: LibvirtPair | undefined;
  libvirtReason?: string | undefined;
}): Promise<Partial<Record<DiskVariant, DiskSample[]>>> {
  const { runs, image, net, probe, libvirt } = options;
  let libvirtReason = options.libvirtReason;
  const base = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-disk-'));
  const runDir = path.join(base, 'run');
  const hosts = ['h1', 'h2'] as const;
  for (const h of hosts) await mkdir(path.join(base, h), { recursive: true });
  const storage = Object.fromEntries(hosts.map((h) => [h, new StorageCatalog([{ name: 'local', type: 'local', path: path.join(base, '%h') }], h)])) as Record<'h1' | 'h2', StorageCatalog>;
  const disk: DiskSpec = { id: 'disk0', pool: 'local', volume: 'bench-disk0', format: 'qcow2', sizeBytes: DISK_BYTES };
  const uuid = crypto.randomUUID();
  const ip = net.guestIp(11);
  const guestConfig = { memcheckMiB: 16, dirtyMiBps: 0, diskcheck: { ratePerSec: 0 } };
  const spec = makeVmSpec({
    name: 'benchdisk',
    uuid,
    memoryMiB: 256,
    accel: 'tcg',
    boot: guestBoot(image, { ip: `${ip}/24`, ...guestConfig }),
    nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: net.bridge } }],
    disks: [disk],
  });
  let host: 'h1' | 'h2' = 'h1';
  await storage.h1.get('local').create(volumeOf(disk));
  let vm = await VmInstance.launch({ spec, accel: 'tcg', runDir, network: net.attacher, disks: storage.h1.attach(spec) });
  // libvirt's guest: the same spec, run by libvirt, alive all along like ferry's.
  let lv: { vm: LibvirtVm; ip: string; host: LibvirtHostName } | undefined;
  try {
    if (libvirt) {
      const lvUuid = crypto.randomUUID();
      const lvIp = net.guestIp(LIBVIRT_GUEST);
      const lvBoot = guestBoot(image, { ip: `${lvIp}/24`, ...guestConfig });
      const lvVm: LibvirtVm = {
        name: 'bench-libvirt-disk', uuid: lvUuid, memoryMiB: spec.memoryMiB, kernel: lvBoot.kernel, initrd: lvBoot.initrd, cmdline: lvBoot.cmdline,
        mac: macFor(lvUuid, 0), disk: { sizeBytes: DISK_BYTES },
      };
      try {
        await libvirt.define(lvVm);
        await libvirt.start(lvVm, 'h1');
        await probe.gamesrv(lvIp, 60_000);
        lv = { vm: lvVm, ip: lvIp, host: 'h1' };
      } catch (err) {
        libvirtReason = `libvirt could not start the guest: ${(err as Error).message.split('\n')[0]}`;
        await libvirt.destroy(lvVm).catch(() => undefined);
      }
    }
    const variants = lv ? [...FERRY_VARIANTS, 'libvirt-copy-storage-all' as const] : FERRY_VARIANTS;
    const samples = Object.fromEntries(variants.map((v) => [v, [] as DiskSample[]])) as Partial<Record<DiskVariant, DiskSample[]>>;
    await vm.waitUntilReady(60_000);
    const guests = [{ who: 'ferry', ip }, ...(lv ? [{ who: 'libvirt', ip: lv.ip }] : [])];
    for (const g of guests) {
      await probe.gamesrv(g.ip, 60_000);
      process.stderr.write(`disk benchmark: writing ${WRITTEN_MIB} MiB of the ${g.who} guest's 1 GiB disk ... `);
      const fill = await probe.diskcheckFill(g.ip, WRITTEN_MIB, 600_000);
      process.stderr.write(`${fill.ms} ms\n`);
      await probe.diskcheckRate(g.ip, WRITES_PER_SEC);
    }
    const boots = await Promise.all(guests.map(async (g) => (await probe.gamesrv(g.ip)).boot));
    const linkBytesPerSec = await unixSocketThroughput(512 * 2 ** 20);
    let streaming = '';
    for (let run = 1; run <= runs; run++) {
      for (const variant of variants) {
        const isLibvirt = variant === 'libvirt-copy-storage-all';
        // One stream at a time, to the guest that this variant migrates.
        const target = isLibvirt ? lv!.ip : ip;
        if (streaming !== target) await probe.startStream((streaming = target), 200);
        const allocated = (await imageInfo(isLibvirt ? libvirt!.diskFile(lv!.vm, lv!.host) : path.join(base, host, 'bench-disk0.qcow2'))).actualSize;
        const ramNonZero = isLibvirt ? await libvirt!.nonZeroRamBytes(lv!.vm) : await nonZeroBytes(vm);
        const boundMs = ((allocated + ramNonZero) / linkBytesPerSec) * 1000;
        const to: 'h1' | 'h2' = host === 'h1' ? 'h2' : 'h1';
        await new Promise((r) => setTimeout(r, 300));
        await probe.window();
        let sample: Omit<DiskSample, 'blackoutMs' | 'boundMs'>;
        if (isLibvirt) {
          const lvTo: LibvirtHostName = lv!.host === 'h1' ? 'h2' : 'h1';
          const r = await libvirt!.migrate(lv!.vm, lv!.host, lvTo, { copyStorageAll: true });
          lv!.host = lvTo;
          sample = { attempts: 1, failures: [], totalMs: r.totalMs, downtimeMs: r.downtimeMs, ramBytes: r.bytes, diskBytes: r.diskBytes ?? null };
        } else if (variant === 'qemu-mirror-defaults') {
          const from = host;
          const r = await migrateWithMirrorDefaults(vm, runDir, net.attacher, {
            destination: storage[to].attach(spec),
            prepare: async () => void (await storage[to].get('local').prepareIncoming(volumeOf(disk), allocated)),
            releaseSource: () => storage[from].get('local').releaseAfterMigration(volumeOf(disk)),
          });
          vm = r.vm;
          sample = { attempts: 1, failures: [], totalMs: r.totalMs, downtimeMs: r.downtimeMs, ramBytes: r.bytes, diskBytes: r.diskBytes };
        } else {
          let destination!: LocalDestination;
          let source!: LocalSource;
          const counted = await countAttempts(
            () => {
              destination = new LocalDestination({ spec, accel: 'tcg', runDir, network: net.attacher, storage: storage[to] });
              source = new LocalSource(vm, { storage: storage[host] });
              return migrate({ source, destination, params: { policy: 'balanced' } });
            },
            (line) => process.stderr.write(`\ndisk: ${variant}: ${line}\n`),
          );
          const record = counted.value;
          await source.released; // the stale copy goes after the migration completed: not part of its time
          vm = destination.instance;
          sample = { attempts: counted.attempts, failures: counted.failures, totalMs: record.totalMs, downtimeMs: record.downtimeMs, ramBytes: record.bytes, diskBytes: record.diskBytes };
        }
        if (!isLibvirt) host = to;
        await new Promise((r) => setTimeout(r, 200));
        const w = await probe.window();
        samples[variant]!.push({ ...sample, blackoutMs: w.maxGapMs, boundMs });
        process.stderr.write(`\rdisk: run ${run}/${runs} ${variant}: total ${sample.totalMs} ms, blackout ${w.maxGapMs} ms        `);
      }
    }
    process.stderr.write('\n');
    await probe.stopStream();
    const writes: Record<string, number> = {};
    for (const [i, g] of guests.entries()) {
      if ((await probe.gamesrv(g.ip)).boot !== boots[i]) throw new Error(`disk benchmark: the ${g.who} guest restarted`);
      const stats = await probe.diskcheckStats(g.ip);
      const verdict = await probe.diskcheckVerify(g.ip, 600_000);
      if (stats.errors || verdict.lost || verdict.torn || verdict.foreign)
        throw new Error(`disk benchmark: the ${g.who} guest's disk does not verify (errors ${stats.errors}, lost ${verdict.lost}, torn ${verdict.torn}, foreign ${verdict.foreign})`);
      writes[g.who] = stats.writes;
    }
    printDiskScenario(samples, runs, linkBytesPerSec, writes, libvirtReason);
    return samples;
  } finally {
    await vm.destroy().catch(() => undefined);
    if (lv) await libvirt!.destroy(lv.vm).catch(() => undefined);
    await rm(base, { recursive: true, force: true });
  }
}

function printDiskScenario(samples: Partial<Record<DiskVariant, DiskSample[]>>, runs: number, linkBytesPerSec: number, writes: Record<string, number>, libvirtReason: string | undefined) {
  const base = samples['qemu-mirror-defaults']!;
  const med = (xs: DiskSample[], k: 'totalMs' | 'downtimeMs' | 'blackoutMs' | 'ramBytes' | 'diskBytes' | 'boundMs') => medianOfMeasured(xs.map((s) => s[k])).value ?? NaN;
  const ratio = (v: number, b: number) => (b > 0 && Number.isFinite(v) ? `${(v / b).toFixed(2)}×` : '-');
  console.log(
    `\nlocal storage: 256 MiB guest, 1 GiB qcow2 disk with ${WRITTEN_MIB} MiB written, diskcheck writing ${WRITES_PER_SEC} blocks/s — medians of ${runs} runs, interleaved`,
  );
  console.log(`link (unix socket, same run): ${(linkBytesPerSec / 2 ** 20).toFixed(0)} MiB/s; bound = (allocated disk + non-zero RAM) / link`);
  console.log(
    table(
      ['variant', 'attempts', 'total', 'bound', 'total/bound', 'QEMU downtime', 'client blackout', 'disk MiB', 'RAM MiB', 'total vs defaults', 'blackout vs defaults'],
      (Object.keys(samples) as DiskVariant[]).map((v) => {
        const s = samples[v]!;
        return [
          v,
          attemptsCell(s),
          medianCell(s.map((x) => x.totalMs)),
          ms(med(s, 'boundMs')),
          ratio(med(s, 'totalMs'), med(s, 'boundMs')),
          medianCell(s.map((x) => x.downtimeMs)),
          medianCell(s.map((x) => x.blackoutMs)),
          medianCell(s.map((x) => x.diskBytes), (b) => (b / 2 ** 20).toFixed(0)),
          medianCell(s.map((x) => x.ramBytes), (b) => (b / 2 ** 20).toFixed(0)),
          ratio(med(s, 'totalMs'), med(base, 'totalMs')),
          ratio(med(s, 'blackoutMs'), med(base, 'blackoutMs')),
        ];
      }),
    ),
  );
  for (const [v, s] of Object.entries(samples)) for (const f of s.flatMap((x) => x.failures)) console.log(`  ${v}: an attempt rolled back: ${f}`);
  console.log(
    `disks verified after all runs: ${Object.entries(writes).map(([who, n]) => `${who} guest ${n} writes`).join(', ')}; none lost, torn or foreign.`,
  );
  if (samples['libvirt-copy-storage-all'])
    console.log(
      "libvirt-copy-storage-all: `virsh migrate --live --copy-storage-all`, default flags, of a libvirt-run guest of the same spec, over TCP between two network namespaces (the bound uses the unix-socket link); its QEMU downtime is libvirt's 'Total downtime' (the source's CPUs stopped → migration completed, as libvirt saw it)",
    );
  else console.log(`libvirt-copy-storage-all: not run (${libvirtReason ?? 'libvirt unavailable'})`);
}
