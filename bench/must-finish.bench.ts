/**
 * must-finish against a guest that dirties memory three times faster than the link carries it
 * (memcheck rewriting 48 MiB/s of 48 MiB, bandwidth 16 MiB/s): the migrations QEMU 7.2 under TCG
 * could not complete safely (it lost pages). Pre-copy only (throttling, then longer pauses) and with
 * post-copy, interleaved; after every migration the guest verifies its memory and must still be
 * the same boot. The table says how many of the runs completed and verified, never a median alone.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { medianCell, table } from '../src/cli/format.ts';
import type { HostNetwork } from '../src/lab/host-network.ts';
import type { Probe } from '../src/lab/probe.ts';
import { migrate } from '../src/migration/engine.ts';
import { LocalDestination, LocalSource } from '../src/migration/local.ts';
import type { MigrationParams } from '../src/migration/types.ts';
import { guestBoot, type GuestImage } from '../src/qemu/guest-image.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { macFor, makeVmSpec } from '../src/qemu/spec.ts';

export type MustFinishVariant = 'must-finish' | 'must-finish+postcopy' | 'must-finish+postcopy/no-preempt';

export interface MustFinishSample {
  completed: boolean;
  verified: boolean;
  totalMs: number;
  downtimeMs: number | null;
  blackoutMs: number;
  postcopy: boolean;
  rounds: number;
  error?: string;
}

const LINK = 16 * 2 ** 20;
const PARAMS: Record<MustFinishVariant, Partial<MigrationParams>> = {
  'must-finish': { policy: 'must-finish', maxBandwidth: LINK },
  'must-finish+postcopy': { policy: 'must-finish', maxBandwidth: LINK, allowPostcopy: true },
  'must-finish+postcopy/no-preempt': { policy: 'must-finish', maxBandwidth: LINK, allowPostcopy: true, postcopyPreempt: false },
};

export async function runMustFinishBench(options: { runs: number; image: GuestImage; net: HostNetwork; probe: Probe }): Promise<Record<MustFinishVariant, MustFinishSample[]>> {
  const { runs, image, net, probe } = options;
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-mf-'));
  const uuid = crypto.randomUUID();
  const ip = net.guestIp(11);
  const spec = makeVmSpec({
    name: 'bench-mf',
    uuid,
    memoryMiB: 256,
    accel: 'tcg',
    boot: guestBoot(image, { ip: `${ip}/24`, memcheckMiB: 48, dirtyMiBps: 48 }),
    nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: net.bridge } }],
  });
  let vm = await VmInstance.launch({ spec, accel: 'tcg', runDir, network: net.attacher });
  const samples: Record<MustFinishVariant, MustFinishSample[]> = { 'must-finish': [], 'must-finish+postcopy': [], 'must-finish+postcopy/no-preempt': [] };
  try {
    await vm.waitUntilReady(120_000);
    const boot = (await probe.gamesrv(ip, 60_000)).boot;
    await probe.startStream(ip, 200);
    for (let run = 1; run <= runs; run++) {
      for (const variant of Object.keys(PARAMS) as MustFinishVariant[]) {
        await new Promise((r) => setTimeout(r, 300));
        await probe.window();
        const destination = new LocalDestination({ spec, accel: 'tcg', runDir, network: net.attacher });
        let sample: MustFinishSample;
        try {
          const record = await migrate({ source: new LocalSource(vm), destination, params: PARAMS[variant] });
          vm = destination.instance;
          sample = { completed: true, verified: false, totalMs: record.totalMs, downtimeMs: record.downtimeMs, blackoutMs: 0, postcopy: record.postcopy, rounds: record.rounds };
        } catch (err) {
          sample = { completed: false, verified: false, totalMs: NaN, downtimeMs: null, blackoutMs: 0, postcopy: false, rounds: 0, error: (err as Error).message };
        }
        await new Promise((r) => setTimeout(r, 200));
        sample.blackoutMs = (await probe.window()).maxGapMs;
        const verdict = await probe.memcheckVerify(ip, 60_000);
        const sameBoot = (await probe.gamesrv(ip, 10_000)).boot === boot;
        sample.verified = verdict.mismatches === 0 && sameBoot;
        if (!sample.verified) sample.error = `${sample.error ? `${sample.error}; ` : ''}${verdict.mismatches} bad pages${sameBoot ? '' : ', the guest restarted'}`;
        samples[variant].push(sample);
        process.stderr.write(`\rmust-finish: run ${run}/${runs} ${variant}: ${sample.completed ? 'completed' : 'rolled back'}, ${sample.verified ? 'verified' : 'NOT verified'}        `);
      }
    }
    process.stderr.write('\n');
    await probe.stopStream();
  } finally {
    await vm.destroy().catch(() => undefined);
    await rm(runDir, { recursive: true, force: true });
  }
  printMustFinish(samples, runs);
  return samples;
}

function printMustFinish(samples: Record<MustFinishVariant, MustFinishSample[]>, runs: number) {
  console.log(`\nmust-finish: 256 MiB guest rewriting 48 MiB at 48 MiB/s over a 16 MiB/s link — ${runs} runs each, interleaved`);
  console.log(
    table(
      ['variant', 'completed', 'memory verified', 'post-copy used', 'total', 'QEMU downtime', 'client blackout', 'rounds'],
      (Object.keys(samples) as MustFinishVariant[]).map((v) => {
        const s = samples[v];
        const done = s.filter((x) => x.completed);
        return [
          v,
          `${done.length}/${s.length}`,
          `${s.filter((x) => x.verified).length}/${s.length}`,
          `${done.filter((x) => x.postcopy).length}/${done.length}`,
          medianCell(done.map((x) => x.totalMs)),
          medianCell(done.map((x) => x.downtimeMs)),
          medianCell(done.map((x) => x.blackoutMs)),
          medianCell(done.map((x) => x.rounds), String),
        ];
      }),
    ),
  );
  for (const [v, s] of Object.entries(samples)) for (const x of s) if (x.error) console.log(`  ${v}: ${x.error}`);
  console.log('QEMU downtime in post-copy is the pause at the switch; afterwards the guest runs while it pulls missing pages (slower, not stopped).');
  console.log("Without post-copy the client's blackout is far longer than QEMU's downtime: auto-converge has throttled the guest's vCPUs (up to 99%) before the switch.");
}
