/**
 * Live-migration benchmark: the same guest migrated back and forth between two
 * QEMU processes, under QEMU's defaults (what a script gets) and under each
 * ferry policy, interleaved in one run so that the machine's noise hits all
 * variants alike. A 200 Hz game client measures the blackout a player sees.
 *
 *   npm run bench -- [--runs 5] [--json FILE] [--only ram|disk]
 *
 * Prints a table per scenario with medians and ratios to the baseline; the
 * disk scenario (disk.bench.ts) follows the RAM ones.
 */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { median, ms, table } from '../src/cli/format.ts';
import { HostNetwork } from '../src/lab/host-network.ts';
import { Probe } from '../src/lab/probe.ts';
import { migrate } from '../src/migration/engine.ts';
import { LocalDestination, LocalSource } from '../src/migration/local.ts';
import type { PolicyName } from '../src/migration/policy/policy.ts';
import { ensureGuestImage, guestBoot } from '../src/qemu/guest-image.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { macFor, makeVmSpec } from '../src/qemu/spec.ts';
import { migrateWithQemuDefaults } from './baseline.ts';
import { runDiskBench, type DiskSample, type DiskVariant } from './disk.bench.ts';

type Variant = 'qemu-defaults' | PolicyName;
const VARIANTS: Variant[] = ['qemu-defaults', 'minimal-downtime', 'balanced', 'must-finish'];

interface Scenario {
  name: string;
  memoryMiB: number;
  memcheckMiB: number;
  dirtyMiBps: number;
}

const SCENARIOS: Scenario[] = [
  { name: 'idle 512 MiB guest', memoryMiB: 512, memcheckMiB: 0, dirtyMiBps: 0 },
  { name: '512 MiB guest, 64 MiB rewritten at 8 MiB/s', memoryMiB: 512, memcheckMiB: 64, dirtyMiBps: 8 },
];

interface Sample {
  totalMs: number;
  downtimeMs: number;
  blackoutMs: number;
  lost: number;
  bytes: number;
}

async function main() {
  const { values } = parseArgs({ options: { runs: { type: 'string' }, json: { type: 'string' }, only: { type: 'string' } } });
  const runs = Number(values.runs ?? 5);
  if (values.only !== undefined && values.only !== 'ram' && values.only !== 'disk') throw new Error(`--only ${values.only}: choose ram or disk`);
  const image = await ensureGuestImage();
  const net = await HostNetwork.create(`ferry-bench-${process.pid}`, '10.79.0');
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-'));
  const probe = await Probe.start(net.netns);
  const report: Record<string, Record<Variant, Sample[]> | Record<DiskVariant, DiskSample[]>> = {};
  try {
    for (const scenario of values.only === 'disk' ? [] : SCENARIOS) {
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
      await vm.waitUntilReady(60_000);
      const boot = (await probe.gamesrv(ip)).boot;
      await probe.startStream(ip, 200);
      const samples = Object.fromEntries(VARIANTS.map((v) => [v, [] as Sample[]])) as Record<Variant, Sample[]>;
      for (let run = 1; run <= runs; run++) {
        for (const variant of VARIANTS) {
          await new Promise((r) => setTimeout(r, 300));
          await probe.window();
          let totalMs: number;
          let downtimeMs: number | null;
          let bytes: number;
          if (variant === 'qemu-defaults') {
            const r = await migrateWithQemuDefaults(vm, runDir, net.attacher);
            ({ totalMs, downtimeMs, bytes } = r);
            vm = r.vm;
          } else {
            const destination = new LocalDestination({ spec, accel: 'tcg', runDir, network: net.attacher });
            const record = await migrate({ source: new LocalSource(vm), destination, params: { policy: variant } });
            ({ totalMs, downtimeMs, bytes } = record);
            vm = destination.instance;
          }
          await new Promise((r) => setTimeout(r, 200));
          const w = await probe.window();
          samples[variant].push({ totalMs, downtimeMs: downtimeMs ?? 0, blackoutMs: w.maxGapMs, lost: w.lost, bytes });
          process.stderr.write(`\r${scenario.name}: run ${run}/${runs} ${variant}: blackout ${w.maxGapMs} ms        `);
        }
      }
      process.stderr.write('\n');
      await probe.stopStream();
      if ((await probe.gamesrv(ip)).boot !== boot) throw new Error(`${scenario.name}: the guest restarted during the benchmark`);
      if (scenario.memcheckMiB) {
        const verdict = await probe.memcheckVerify(ip);
        if (verdict.mismatches) throw new Error(`${scenario.name}: memcheck found ${verdict.mismatches} bad pages`);
      }
      await vm.destroy();
      report[scenario.name] = samples;
      printScenario(scenario.name, samples, runs);
    }
    if (values.only !== 'ram') report['local storage, 1 GiB disk, 768 MiB written'] = await runDiskBench({ runs, image, net, probe });
  } finally {
    await probe.close();
    await net.destroy();
    await rm(runDir, { recursive: true, force: true });
  }
  const file = values.json ?? path.join('bench', 'results', 'migration.json');
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify({ date: new Date().toISOString(), runs, report }, null, 2));
  console.log(`\nraw samples: ${file}`);
}

function printScenario(name: string, samples: Record<Variant, Sample[]>, runs: number) {
  const base = samples['qemu-defaults'];
  const med = (xs: Sample[], k: keyof Sample) => median(xs.map((s) => s[k]));
  const ratio = (v: number, b: number) => (b > 0 ? `${(v / b).toFixed(2)}×` : '-');
  console.log(`\n${name} — medians of ${runs} runs, interleaved`);
  console.log(
    table(
      ['variant', 'total', 'QEMU downtime', 'client blackout', 'lost', 'MiB sent', 'blackout vs defaults', 'total vs defaults'],
      VARIANTS.map((v) => {
        const s = samples[v];
        return [
          v,
          ms(med(s, 'totalMs')),
          ms(med(s, 'downtimeMs')),
          ms(med(s, 'blackoutMs')),
          String(med(s, 'lost')),
          (med(s, 'bytes') / 2 ** 20).toFixed(1),
          ratio(med(s, 'blackoutMs'), med(base, 'blackoutMs')),
          ratio(med(s, 'totalMs'), med(base, 'totalMs')),
        ];
      }),
    ),
  );
}

await main();
