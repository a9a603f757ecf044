/**
 * `ferry demo`: the seed article's game-server demo on one machine. A guest
 * running gamesrv (and memcheck, dirtying memory) is live-migrated back and
 * forth between two QEMU processes while a 200 Hz game client in its network
 * namespace measures the longest silence. Prints one row per hop.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Command } from '../command.ts';
import { UsageError, wholeNumber, parseCommandLine } from '../errors.ts';
import { medianCell, mib, ms, table } from '../format.ts';
import { ProgressDisplay, progressLine } from '../progress.ts';
import { HostNetwork } from '../../lab/host-network.ts';
import { Probe } from '../../lab/probe.ts';
import { migrate } from '../../migration/engine.ts';
import { LocalDestination, LocalSource } from '../../migration/local.ts';
import { ensureGuestImage, guestBoot } from '../../qemu/guest-image.ts';
import type { VmInstance } from '../../qemu/instance.ts';
import { macFor, makeVmSpec } from '../../qemu/spec.ts';
import { startVm } from '../../qemu/start.ts';

const USAGE = `Usage: ferry demo [--hops N] [--memory MiB] [--memcheck MiB] [--dirty MiB/s] [--downtime-limit ms] [--json]

Boots a small guest (gamesrv + memcheck) in a private network namespace, live-migrates
it back and forth between two QEMU processes while a 200 Hz UDP game client measures
what a player would notice, verifies the guest's memory after every hop, and prints a table.

  --hops N             migrations to run (default 6)
  --memory MiB         guest memory (default 256)
  --memcheck MiB       memory the guest fills and verifies (default 64)
  --dirty MiB/s        how fast the guest rewrites that memory (default 4)
  --downtime-limit ms  longest planned pause (default 50)
  --json               print the results as one JSON document`;

interface HopResult {
  hop: number;
  totalMs: number;
  downtimeMs: number | null;
  blackoutMs: number;
  lost: number;
  sent: number;
  bytes: number;
  rounds: number;
  attempts: number;
  /** null: not checked (--memcheck 0). */
  memoryVerified: boolean | null;
}

export const demoCommand: Command = {
  summary: 'live-migrate a game server back and forth on this machine and measure what a player notices',
  usage: USAGE,
  async run(args) {
    const { values } = parseCommandLine({
      args,
      options: {
        hops: { type: 'string' },
        memory: { type: 'string' },
        memcheck: { type: 'string' },
        dirty: { type: 'string' },
        'downtime-limit': { type: 'string' },
        json: { type: 'boolean' },
      },
    });
    const hops = wholeNumber('hops', values.hops) ?? 6;
    const memoryMiB = wholeNumber('memory', values.memory) ?? 256;
    const memcheckMiB = wholeNumber('memcheck', values.memcheck) ?? 64;
    const dirtyMiBps = wholeNumber('dirty', values.dirty) ?? 4;
    const downtimeLimitMs = wholeNumber('downtime-limit', values['downtime-limit']) ?? 50;
    if (memcheckMiB > memoryMiB / 2) throw new UsageError(`--memcheck ${memcheckMiB} must be at most half of --memory ${memoryMiB}`);
    const json = values.json ?? false;
    const say = (line: string) => !json && console.log(line);

    const image = await ensureGuestImage();
    const net = await HostNetwork.create('ferry-demo', '10.78.0');
    const runDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-demo-'));
    let probe: Probe | undefined;
    let vm: VmInstance | undefined;
    try {
      const uuid = crypto.randomUUID();
      const ip = net.guestIp(10);
      const spec = makeVmSpec({
        name: 'demo',
        uuid,
        memoryMiB,
        accel: 'auto',
        boot: guestBoot(image, { ip: `${ip}/24`, memcheckMiB, dirtyMiBps }),
        nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: net.bridge } }],
      });
      say(`booting guest 'demo' (${memoryMiB} MiB, memcheck ${memcheckMiB} MiB rewritten at ${dirtyMiBps} MiB/s) in namespace ${net.netns} ...`);
      let running = await startVm(spec, { runDir, network: net.attacher, onWarning: (w) => say(`warning: ${w}`) });
      vm = running;
      say(`guest up at ${ip} (accel ${running.accel}); starting the 200 Hz game client`);
      probe = await Probe.start(net.netns);
      const first = await probe.gamesrv(ip);
      await probe.startStream(ip, 200);

      const results: HopResult[] = [];
      const display = new ProgressDisplay();
      for (let hop = 1; hop <= hops; hop++) {
        await probe.window();
        const destination: LocalDestination = new LocalDestination({ spec: running.spec, accel: running.accel, runDir, network: net.attacher });
        const record = await migrate({
          source: new LocalSource(running),
          destination,
          params: { downtimeLimitMs },
          onProgress: (p) => display.update(progressLine(`hop ${hop}/${hops}:`, p)),
        });
        display.clear();
        running = vm = destination.instance;
        await new Promise((r) => setTimeout(r, 200));
        const window = await probe.window();
        // With --memcheck 0 the guest runs no memcheck: its memory is not checked (never reported as verified).
        const verdict = memcheckMiB > 0 ? await probe.memcheckVerify(ip) : undefined;
        const now = await probe.gamesrv(ip);
        if (now.boot !== first.boot) throw new Error(`gamesrv restarted during hop ${hop}: the guest was not live-migrated`);
        results.push({
          hop,
          totalMs: record.totalMs,
          downtimeMs: record.downtimeMs,
          blackoutMs: window.maxGapMs,
          lost: window.lost,
          sent: window.sent,
          bytes: record.bytes,
          rounds: record.rounds,
          attempts: record.attempts,
          memoryVerified: verdict ? verdict.mismatches === 0 : null,
        });
        say(`hop ${hop}: ${ms(record.totalMs)} total, QEMU downtime ${ms(record.downtimeMs)}, player saw ${ms(window.maxGapMs)} of silence, memory ${!verdict ? 'not checked (--memcheck 0)' : verdict.mismatches === 0 ? 'verified' : `${verdict.mismatches} BAD PAGES`}`);
      }
      const final = await probe.stopStream();

      if (json) {
        console.log(JSON.stringify({ accel: running.accel, memoryMiB, memcheckMiB, dirtyMiBps, downtimeLimitMs, hops: results }, null, 2));
      } else {
        console.log('');
        console.log(
          table(
            ['hop', 'attempts', 'total', 'QEMU downtime', 'client blackout', 'lost', 'sent', 'rounds', 'memory'],
            results.map((r) => [String(r.hop), String(r.attempts), ms(r.totalMs), ms(r.downtimeMs), ms(r.blackoutMs), `${r.lost}/${r.sent}`, mib(r.bytes), String(r.rounds), r.memoryVerified === null ? '-' : r.memoryVerified ? 'ok' : 'BAD']),
          ),
        );
        console.log(
          `median of ${results.length} hops: total ${medianCell(results.map((r) => r.totalMs))}, QEMU downtime ${medianCell(results.map((r) => r.downtimeMs))}, ` +
            `client blackout ${medianCell(results.map((r) => r.blackoutMs))}`,
        );
        console.log(`gamesrv tick ${first.tick} -> ${final.lastTick}, same server throughout (boot id ${first.boot}).`);
        console.log('QEMU downtime is what the source measured; client blackout is the longest gap between replies the game client saw.');
      }
      return results.every((r) => r.memoryVerified !== false) ? 0 : 1;
    } finally {
      await probe?.close().catch(() => undefined);
      await vm?.destroy().catch(() => undefined);
      await net.destroy().catch(() => undefined);
      await rm(runDir, { recursive: true, force: true });
    }
  },
};
