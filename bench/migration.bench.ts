/**
 * Live-migration benchmark: the same guest migrated back and forth between two
 * QEMU processes, under QEMU's defaults (what a script gets) and under each
 * ferry policy, interleaved in one run so that the machine's noise hits all
 * variants alike. A 200 Hz game client measures the blackout a player sees.
 * libvirt is a peer baseline (bench/libvirt.ts): a second guest of the same
 * spec, run by two libvirtd "hosts" on the same bridge, migrated with
 * `virsh migrate --live` in the same interleaved loop. libvirt is installed
 * by bench/setup-libvirt.sh when it is missing; when it cannot be used, the
 * benchmark runs without it and says why.
 *
 *   npm run bench -- [--runs 5] [--must-finish-runs 10] [--json FILE] [--only ram|disk|must-finish|cli] [--no-libvirt]
 *
 * Prints a table per scenario with medians and ratios to the baseline, and where ferry's blackouts
 * went; the disk scenario (disk.bench.ts) and must-finish against a guest dirtying faster than the
 * link (must-finish.bench.ts) follow the RAM ones.
 */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { medianCell, medianOfMeasured, ms, table } from '../src/cli/format.ts';
import { HostNetwork } from '../src/lab/host-network.ts';
import { Probe } from '../src/lab/probe.ts';
import { migrate } from '../src/migration/engine.ts';
import { run } from '../src/util/exec.ts';
import { LocalDestination, LocalSource } from '../src/migration/local.ts';
import type { PolicyName } from '../src/migration/policy/policy.ts';
import { ensureGuestImage, guestBoot } from '../src/qemu/guest-image.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { macFor, makeVmSpec } from '../src/qemu/spec.ts';
import { migrateWithQemuDefaults } from './baseline.ts';
import { blackoutBreakdown, type BlackoutBreakdown } from '../src/cli/migrate.ts';
import type { SwitchoverTimeline } from '../src/migration/types.ts';
import { unixSocketThroughput } from './link.ts';
import { attemptsCell, countAttempts } from './attempts.ts';
import { runCliBench } from './cli.bench.ts';
import { runFailoverBench } from './failover.bench.ts';
import { runScaleBench } from './scale.bench.ts';
import { Transcript } from './transcript.ts';
import { nonZeroBytes } from '../src/qemu/ram-scan.ts';
import { runDiskBench, type DiskSample, type DiskVariant } from './disk.bench.ts';
import { runMustFinishBench } from './must-finish.bench.ts';
import { localQemuBuild } from '../src/qemu/host-probe.ts';
import { formatQemuVersion } from '../src/qemu/version.ts';
import { ensureLibvirt, LibvirtPair, type LibvirtHostName, type LibvirtVm } from './libvirt.ts';

/**
 * The levers of the blackout, each a variant of balanced: 'balanced/no-announce' leaves out the
 * announce-self after `cont` (QEMU has announced once at load, the guest paused); 'balanced@1000Hz'
 * is the same migration as 'balanced' measured by a 1000 Hz client instead of 200 Hz (the probe's
 * own resolution: a gap is measured between replies, so it is overstated by up to two periods);
 * 'balanced/single-stream' sends RAM over one stream (balanced's default is 2 multifd channels, zero
 * pages found by their threads).
 */
type Lever = 'balanced/no-announce' | 'balanced@1000Hz' | 'balanced/single-stream';
type Variant = 'qemu-defaults' | PolicyName | Lever | 'libvirt-default';
const FERRY_VARIANTS: Variant[] = ['qemu-defaults', 'minimal-downtime', 'balanced', 'must-finish', 'balanced/no-announce', 'balanced@1000Hz', 'balanced/single-stream'];
const PROBE_HZ = 200;
/** Guest number (last octet) of the libvirt-run guest of the RAM scenarios; the libvirt hosts are .2 and .3. */
const LIBVIRT_GUEST = 20;

interface Scenario {
  name: string;
  memoryMiB: number;
  memcheckMiB: number;
  dirtyMiBps: number;
}

const SCENARIOS: Scenario[] = [
  { name: 'idle 512 MiB guest', memoryMiB: 512, memcheckMiB: 0, dirtyMiBps: 0 },
  { name: '512 MiB guest, 64 MiB rewritten at 8 MiB/s', memoryMiB: 512, memcheckMiB: 64, dirtyMiBps: 8 },
  { name: '1 GiB guest, 768 MiB of non-zero memory', memoryMiB: 1024, memcheckMiB: 768, dirtyMiBps: 0 },
];

interface Sample {
  /** Attempts this run took (ferry's variants try again after a rollback; the baselines do not). */
  attempts: number;
  failures: string[];
  totalMs: number;
  /** null: the variant did not report it (never counted as 0). */
  downtimeMs: number | null;
  blackoutMs: number;
  lost: number;
  /** null: not reported (libvirt's statistics can lack it). */
  bytes: number | null;
  /** ferry's variants: where the blackout went (the others do not record the switchover's moments). */
  breakdown: BlackoutBreakdown | null;
}

async function main() {
  const { values } = parseArgs({
    options: { runs: { type: 'string' }, 'must-finish-runs': { type: 'string' }, json: { type: 'string' }, only: { type: 'string' }, 'no-libvirt': { type: 'boolean' } },
  });
  const runs = Number(values.runs ?? 5);
  const mustFinishRuns = Number(values['must-finish-runs'] ?? 10);
  if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(mustFinishRuns) || mustFinishRuns < 1) throw new Error('--runs and --must-finish-runs take a whole number >= 1');
  const only = values.only;
  // Benchmarks of their own, each in a lab of its own, with no migration benchmark: the CLI's start and
  // the agents' memory; HA failover; the HA manager at scale.
  const standalone: Record<string, { file: string; run: () => Promise<void> }> = {
    cli: { file: 'cli.txt', run: () => runCliBench(values.runs ? runs : 20) },
    failover: { file: 'failover.txt', run: () => runFailoverBench(values.runs ? runs : 10) },
    scale: { file: 'scale.txt', run: () => runScaleBench() },
  };
  const alone = only !== undefined ? standalone[only] : undefined;
  if (alone) {
    const transcript = new Transcript();
    transcript.start();
    await alone.run();
    const qemu = formatQemuVersion((await localQemuBuild()).version);
    await transcript.save(path.join('bench', 'results', alone.file), { command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(), qemu });
    return;
  }
  if (only !== undefined && only !== 'ram' && only !== 'disk' && only !== 'must-finish') throw new Error(`--only ${only}: choose ram, disk, must-finish, cli, failover or scale`);
  const wants = (part: 'ram' | 'disk' | 'must-finish') => only === undefined || only === part;
  const transcript = new Transcript();
  transcript.start();
  const image = await ensureGuestImage();
  const net = await HostNetwork.create(`ferry-bench-${process.pid}`, '10.79.0');
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-'));
  const probe = await Probe.start(net.netns);
  let mustFinish: Awaited<ReturnType<typeof runMustFinishBench>> | undefined;
  const report: Record<string, Partial<Record<Variant, Sample[]>> | Partial<Record<DiskVariant, DiskSample[]>>> = {};
  let libvirt: LibvirtPair | undefined;
  let libvirtReason: string | undefined = values['no-libvirt'] ? '--no-libvirt was given' : only === 'must-finish' ? 'not part of --only must-finish' : await ensureLibvirt();
  if (libvirtReason === undefined) {
    try {
      libvirt = await LibvirtPair.start({ dir: path.join(runDir, 'libvirt'), bridgeNetns: net.netns, addresses: [`${net.guestIp(2)}/24`, `${net.guestIp(3)}/24`] });
    } catch (err) {
      libvirtReason = `could not start two libvirtd hosts: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  if (libvirtReason !== undefined) console.log(`libvirt baseline: ${libvirtReason}`);
  try {
    const linkBytesPerSec = await unixSocketThroughput(512 * 2 ** 20);
    for (const scenario of wants('ram') ? SCENARIOS : []) {
      const uuid = crypto.randomUUID();
      const ip = net.guestIp(10);
      const spec = makeVmSpec({
        name: 'bench',
        uuid,
        memoryMiB: scenario.memoryMiB,
        accel: 'tcg',
        boot: guestBoot(image, { ip: `${ip}/24`, memcheckMiB: scenario.memcheckMiB, dirtyMiBps: scenario.dirtyMiBps }),
        nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: net.bridge } }],
      });
      let vm = await VmInstance.launch({ spec, accel: 'tcg', runDir, network: net.attacher });
      await vm.waitUntilReady(120_000);
      // The physical bound: the bytes that must move (non-zero RAM) over the link, measured in this run.
      const boundMs = ((await nonZeroBytes(vm)) / linkBytesPerSec) * 1000;
      // A generous first contact: the probe may still map this address to the previous scenario's guest (same IP, new MAC) until ARP re-resolves.
      const boot = (await probe.gamesrv(ip, 60_000)).boot;
      // The libvirt variant migrates its own guest of the same spec (libvirt must run it), alive all along like ferry's.
      let lv: { vm: LibvirtVm; ip: string; boot: string; host: LibvirtHostName } | undefined;
      let lvReason = libvirtReason;
      if (libvirt) {
        const lvUuid = crypto.randomUUID();
        const lvIp = net.guestIp(LIBVIRT_GUEST);
        const lvBoot = guestBoot(image, { ip: `${lvIp}/24`, memcheckMiB: scenario.memcheckMiB, dirtyMiBps: scenario.dirtyMiBps });
        const lvVm: LibvirtVm = { name: 'bench-libvirt', uuid: lvUuid, memoryMiB: scenario.memoryMiB, kernel: lvBoot.kernel, initrd: lvBoot.initrd, cmdline: lvBoot.cmdline, mac: macFor(lvUuid, 0) };
        try {
          await libvirt.define(lvVm);
          await libvirt.start(lvVm, 'h1');
          lv = { vm: lvVm, ip: lvIp, boot: (await probe.gamesrv(lvIp, 60_000)).boot, host: 'h1' };
        } catch (err) {
          lvReason = `libvirt could not start the guest: ${(err as Error).message.split('\n')[0]}`;
          await libvirt.destroy(lvVm).catch(() => undefined);
        }
      }
      const variants = lv ? [...FERRY_VARIANTS, 'libvirt-default' as const] : FERRY_VARIANTS;
      let streaming = '';
      const samples = Object.fromEntries(variants.map((v) => [v, [] as Sample[]])) as Partial<Record<Variant, Sample[]>>;
      for (let run = 1; run <= runs; run++) {
        for (const variant of variants) {
          // One stream at a time, to the guest that this variant migrates.
          const target = variant === 'libvirt-default' ? lv!.ip : ip;
          const hz = variant === 'balanced@1000Hz' ? 1000 : PROBE_HZ;
          if (streaming !== `${target}@${hz}`) {
            if (streaming) await probe.stopStream();
            await probe.startStream(target, hz);
            streaming = `${target}@${hz}`;
          }
          await new Promise((r) => setTimeout(r, 300));
          await probe.window();
          let totalMs: number;
          let downtimeMs: number | null;
          let bytes: number | null;
          let timeline: SwitchoverTimeline | undefined;
          let attempts = 1;
          let failures: string[] = [];
          if (variant === 'libvirt-default') {
            const to: LibvirtHostName = lv!.host === 'h1' ? 'h2' : 'h1';
            ({ totalMs, downtimeMs, bytes } = await libvirt!.migrate(lv!.vm, lv!.host, to));
            lv!.host = to;
          } else if (variant === 'qemu-defaults') {
            const r = await migrateWithQemuDefaults(vm, runDir, net.attacher);
            ({ totalMs, downtimeMs, bytes } = r);
            vm = r.vm;
          } else {
            const policy: PolicyName = variant === 'balanced/no-announce' || variant === 'balanced@1000Hz' || variant === 'balanced/single-stream' ? 'balanced' : variant;
            let destination!: LocalDestination;
            const counted = await countAttempts(
              () => {
                destination = new LocalDestination({ spec, accel: 'tcg', runDir, network: net.attacher, announceAfterResume: variant !== 'balanced/no-announce' });
                return migrate({ source: new LocalSource(vm), destination, params: { policy, ...(variant === 'balanced/single-stream' ? { multifd: false } : {}) } });
              },
              (line) => process.stderr.write(`\n${scenario.name}: ${variant}: ${line}\n`),
            );
            ({ totalMs, downtimeMs, bytes } = counted.value);
            timeline = counted.value.switchover;
            attempts = counted.attempts;
            failures = counted.failures;
            vm = destination.instance;
          }
          await new Promise((r) => setTimeout(r, 200));
          const w = await probe.window();
          samples[variant]!.push({ attempts, failures, totalMs, downtimeMs, blackoutMs: w.maxGapMs, lost: w.lost, bytes, breakdown: blackoutBreakdown(timeline, w) });
          process.stderr.write(`\r${scenario.name}: run ${run}/${runs} ${variant}: blackout ${w.maxGapMs} ms        `);
        }
      }
      process.stderr.write('\n');
      await probe.stopStream();
      if ((await probe.gamesrv(ip)).boot !== boot) throw new Error(`${scenario.name}: the guest restarted during the benchmark`);
      if (lv && (await probe.gamesrv(lv.ip)).boot !== lv.boot) throw new Error(`${scenario.name}: the libvirt guest restarted during the benchmark`);
      if (scenario.memcheckMiB) {
        for (const [who, at] of [['ferry', ip], ...(lv ? [['libvirt', lv.ip]] : [])] as [string, string][]) {
          const verdict = await probe.memcheckVerify(at);
          if (verdict.mismatches) throw new Error(`${scenario.name}: memcheck found ${verdict.mismatches} bad pages in the ${who} guest`);
        }
      }
      await vm.destroy();
      if (lv) await libvirt!.destroy(lv.vm);
      report[scenario.name] = samples;
      printScenario(scenario.name, samples, runs, lvReason, boundMs, linkBytesPerSec);
    }
    if (wants('disk')) report['local storage, 1 GiB disk, 768 MiB written'] = await runDiskBench({ runs, image, net, probe, libvirt, libvirtReason });
    if (wants('must-finish')) mustFinish = await runMustFinishBench({ runs: mustFinishRuns, image, net, probe });
  } finally {
    // A scenario that failed half-way leaves its guest running: every QEMU of this run has its sockets under runDir.
    await run('pkill', ['-KILL', '-f', `qemu-system-x86_64 .*${runDir}/`]).catch(() => undefined);
    await libvirt?.stop().catch((err) => console.error(`stopping the libvirt hosts: ${(err as Error).message}`));
    await probe.close();
    await net.destroy();
    await rm(runDir, { recursive: true, force: true });
  }
  const file = values.json ?? path.join('bench', 'results', `migration-${only ?? 'all'}.json`);
  await mkdir(path.dirname(file), { recursive: true });
  const qemu = formatQemuVersion((await localQemuBuild()).version);
  await writeFile(file, JSON.stringify({ date: new Date().toISOString(), qemu, runs, report, ...(mustFinish ? { mustFinish } : {}) }, null, 2));
  console.log(`\nraw samples: ${file}`);
  const tables = path.join('bench', 'results', `migration-${only ?? 'all'}.txt`);
  await transcript.save(tables, { command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(), qemu });
  process.stdout.write(`tables with date, machine and command: ${tables}\n`);
}

function printScenario(name: string, samples: Partial<Record<Variant, Sample[]>>, runs: number, libvirtReason: string | undefined, boundMs: number, linkBytesPerSec: number) {
  const base = samples['qemu-defaults']!;
  const med = (xs: Sample[], k: 'totalMs' | 'downtimeMs' | 'blackoutMs' | 'lost' | 'bytes') => medianOfMeasured(xs.map((s) => s[k])).value ?? NaN;
  const ratio = (v: number, b: number) => (b > 0 && Number.isFinite(v) ? `${(v / b).toFixed(2)}×` : '-');
  console.log(`\n${name} — medians of ${runs} runs, interleaved`);
  console.log(`bound: non-zero RAM over the link (unix socket, ${(linkBytesPerSec / 2 ** 20).toFixed(0)} MiB/s in this run) = ${ms(boundMs)}`);
  console.log(
    table(
      ['variant', 'attempts', 'total', 'total/bound', 'QEMU downtime', 'client blackout', 'lost', 'MiB sent', 'blackout vs defaults', 'total vs defaults'],
      (Object.keys(samples) as Variant[]).map((v) => {
        const s = samples[v]!;
        return [
          v,
          attemptsCell(s),
          medianCell(s.map((x) => x.totalMs)),
          ratio(med(s, 'totalMs'), boundMs),
          medianCell(s.map((x) => x.downtimeMs)),
          medianCell(s.map((x) => x.blackoutMs)),
          String(med(s, 'lost')),
          medianCell(s.map((x) => x.bytes), (b) => (b / 2 ** 20).toFixed(1)),
          ratio(med(s, 'blackoutMs'), med(base, 'blackoutMs')),
          ratio(med(s, 'totalMs'), med(base, 'totalMs')),
        ];
      }),
    ),
  );
  const lv = samples['libvirt-default'];
  if (lv) {
    const ferry = samples['balanced']!;
    console.log(`ferry (balanced, the default) vs libvirt, same QEMU: client blackout ${ratio(med(ferry, 'blackoutMs'), med(lv, 'blackoutMs'))} of libvirt's (target <= 0.5×)`);
  }
  for (const [v, s] of Object.entries(samples)) for (const f of s.flatMap((x) => x.failures)) console.log(`  ${v}: an attempt rolled back: ${f}`);
  console.log('attempts: tries for the runs (ferry tries again after a rollback, with the guest still on the source); "(of N)": samples in the median');
  printBreakdown(samples);
  if (samples['libvirt-default'])
    console.log("libvirt-default: `virsh migrate --live`, default flags, of a libvirt-run guest of the same spec; its QEMU downtime is libvirt's 'Total downtime' (the source's CPUs stopped → migration completed, as libvirt saw it)");
  else console.log(`libvirt-default: not run (${libvirtReason ?? 'libvirt unavailable'})`);
}

/** Medians of each step of ferry's blackouts (the baselines do not record the switchover's moments). */
function printBreakdown(samples: Partial<Record<Variant, Sample[]>>) {
  const steps: [keyof BlackoutBreakdown, string][] = [
    ['lastReplyToStop', 'reply→stop'],
    ['stopToLoaded', 'stop→loaded'],
    ['verify', 'check'],
    ['toOwned', '→owner'],
    ['ownedToResumed', 'owner→resumed'],
    ['resumedToReply', 'resumed→reply'],
  ];
  const rows = (Object.keys(samples) as Variant[])
    .filter((v) => samples[v]!.some((s) => s.breakdown))
    .map((v) => {
      const s = samples[v]!;
      return [v, ...steps.map(([k]) => medianCell(s.map((x) => x.breakdown?.[k]))), medianCell(s.map((x) => x.blackoutMs))];
    });
  if (!rows.length) return;
  console.log('where the blackout went (medians; "(of N)": samples where the step was seen; - : not seen):');
  console.log(table(['variant', ...steps.map(([, h]) => h), 'blackout'], rows));
}

await main();
