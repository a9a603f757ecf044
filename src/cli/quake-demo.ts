/**
 * `ferry lab demo --quake`: the seed's Quake 3 moment, with a real game server. The Debian guest
 * (guest/debian/build.sh) runs the OpenArena server with two bots; it boots through UEFI from an
 * imported image, gets its address by cloud-init, and moves around the lab's hosts while a Quake 3
 * client in the lab's client namespace keeps asking the server for its state. Per hop the table
 * says what a player would see: the longest silence, the queries left unanswered, and whether it is
 * still the same match (its start time, the players and their scores).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { ImageRecord } from '../cluster/model.ts';
import { CLIENT_QUERY_ADDRESSES, labUp } from '../lab/lab.ts';
import { Probe } from '../lab/probe.ts';
import type { Quake3Reply } from '../lab/quake3.ts';
import { PROJECT_ROOT } from '../qemu/guest-image.ts';
import { Cli } from './context.ts';
import { UsageError } from './errors.ts';
import { medianCell, mib, ms, table } from './format.ts';
import { migrateWithProbe, tourHosts, type MigrationSummary } from './migrate.ts';
import { ProgressDisplay, progressLine } from './progress.ts';
import { uploadImage } from './commands/image.ts';

export const DEBIAN_IMAGE = path.join(PROJECT_ROOT, 'guest', 'out', 'debian', 'debian-12-openarena.qcow2');
/** Queries a second: under the 10 a second an ioquake3 server answers in all. */
const QUERY_HZ = 8;

type Status = Extract<Quake3Reply, { kind: 'status' }>;

interface QuakeHop extends MigrationSummary {
  silenceMs: number | null;
  unanswered: string;
  sameMatch: boolean;
  players: string;
}

export async function quakeDemo(rounds: number, pool: 'shared' | 'local', json: boolean): Promise<number> {
  if (!existsSync(DEBIAN_IMAGE)) throw new UsageError(`the Debian guest image is not built (${DEBIAN_IMAGE}); 'bash scripts/setup.sh' builds it (bash guest/debian/build.sh alone does too)`);
  const say = (line: string) => !json && console.log(line);
  const lab = await labUp({ log: say });
  const cli = await Cli.load(path.join(lab.dir, 'context.json'));
  const hosts = lab.hosts.map((h) => h.name);
  const image = await ensureImage(cli, hosts[0]!, pool, say);
  let vm = await cli.vm('arena').catch(() => undefined);
  if (!vm) {
    say(`creating VM 'arena' on ${hosts[0]}: Debian 12, 512 MiB, UEFI, boot disk from image ${image.name} in pool '${pool}' (${pool === 'shared' ? 'an overlay: only RAM moves' : 'a copy: the disk moves with every hop'})`);
    await cli.agent(hosts[0]!).call('POST', '/v1/vms', { name: 'arena', memoryMiB: 512, image: image.name, pool, firmware: 'uefi', cloudInit: { sshKeys: [], hostname: 'arena' } }, 300_000);
    vm = await cli.vm('arena');
  }
  const ip = vm.ip!;
  const probe = await Probe.start(lab.clientNetns);
  const rows: QuakeHop[] = [];
  try {
    const started = Date.now();
    const first = await waitForServer(probe, ip, (s) => say(s));
    say(`OpenArena answers at ${ip}:27960 (${((Date.now() - started) / 1000).toFixed(0)} s after the VM was there): map ${first.vars['mapname']}, match since ${first.vars['g_timestamp']}, players ${players(first)}`);
    let before = first;
    const display = new ProgressDisplay();
    await tourHosts(hosts, vm.owner, rounds, async (to) => {
      await probe.startQuake3Stream(ip, CLIENT_QUERY_ADDRESSES, QUERY_HZ);
      await new Promise((r) => setTimeout(r, 1000)); // answers before the move
      await probe.window();
      const summary = await migrateWithProbe(cli, 'arena', to, { probe: false, onProgress: json ? undefined : (from, p) => display.update(progressLine(`arena ${from}→${to}:`, p)) });
      display.clear();
      await new Promise((r) => setTimeout(r, 1500)); // the client's next answers after the switchover
      const window = await probe.stopStream();
      const after = await status(probe, ip);
      const sameMatch = after.vars['g_timestamp'] === before.vars['g_timestamp'] && after.vars['mapname'] === before.vars['mapname'] && sameNames(before, after);
      rows.push({ ...summary, silenceMs: window.maxGapMs, unanswered: `${window.lost}/${window.sent}`, sameMatch, players: players(after) });
      say(`${summary.from} → ${to}: ${summary.status}, total ${ms(summary.totalMs)}, QEMU downtime ${ms(summary.downtimeMs)}, longest silence ${ms(window.maxGapMs)} (${window.lost} of ${window.sent} queries unanswered), ${sameMatch ? 'same match' : 'NOT the same match'}`);
      before = after;
      return summary.status === 'completed';
    });
  } finally {
    await probe.close();
  }
  if (json) {
    console.log(JSON.stringify({ hops: rows }, null, 2));
  } else {
    console.log('');
    console.log(
      table(
        ['hop', 'attempts', 'total', 'QEMU downtime', 'longest silence', 'unanswered', 'RAM sent', 'disk copied', 'same match', 'players (score)'],
        rows.map((r) => [`${r.from} → ${r.to}`, String(r.attempts ?? '-'), ms(r.totalMs), ms(r.downtimeMs), ms(r.silenceMs), r.unanswered, mib(r.bytes), r.diskBytes ? mib(r.diskBytes) : '-', r.sameMatch ? 'yes' : 'NO', r.players]),
      ),
    );
    const done = rows.filter((r) => r.status === 'completed');
    console.log(
      `median of ${done.length} completed hops: total ${medianCell(done.map((r) => r.totalMs))}, QEMU downtime ${medianCell(done.map((r) => r.downtimeMs))}, ` +
        `longest silence ${medianCell(done.map((r) => r.silenceMs))}; attempts per hop ${done.map((r) => r.attempts ?? '?').join(', ')}`,
    );
    console.log(
      `The client asks ${QUERY_HZ} times a second (getinfo, from ${QUERY_HZ} addresses): an ioquake3 server answers 10 out-of-band queries a second in all ` +
        'and one a second per address, so a silence is measured to within 125 ms. Same match: the match start time (g_timestamp), map and players are unchanged.',
    );
    console.log('');
    console.log('The lab keeps running. Try: ferry vm show arena; ferry vm console arena; ferry lab down');
  }
  return rows.every((r) => r.status === 'completed' && r.sameMatch) ? 0 : 1;
}

/** The image in the pool, imported (and checksummed) if it is not there yet. */
async function ensureImage(cli: Cli, host: string, pool: string, say: (line: string) => void): Promise<ImageRecord> {
  const name = pool === 'shared' ? 'debian-12-openarena' : 'debian-12-openarena-local';
  const { images } = await (await cli.anyAgent()).call<{ images: ImageRecord[] }>('GET', '/v1/cluster/images');
  const found = images.find((i) => i.name === name && i.state === 'ready');
  if (found) return found;
  say(`importing ${path.basename(DEBIAN_IMAGE)} as image '${name}' into pool '${pool}'...`);
  return uploadImage(cli, host, name, DEBIAN_IMAGE, pool);
}

async function status(probe: Probe, ip: string): Promise<Status> {
  const reply = await probe.quake3(ip, 'getstatus', 5000);
  if (reply.kind !== 'status') throw new Error(`the game server answered getstatus with ${reply.kind}`);
  return reply;
}

/** The server answers with its bots on: the guest booted, cloud-init gave it its address, the game runs. */
async function waitForServer(probe: Probe, ip: string, say: (line: string) => void): Promise<Status> {
  say(`waiting for the guest to boot and its OpenArena server to answer at ${ip} (under TCG: about a minute)...`);
  const deadline = Date.now() + 300_000;
  for (;;) {
    const s = await status(probe, ip).catch(() => undefined);
    if (s && s.players.length > 0) return s;
    if (Date.now() > deadline) throw new Error(`the OpenArena server at ${ip} did not answer with its players within 300 s; see 'ferry vm console arena --log'`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function players(s: Status): string {
  return s.players.map((p) => `${p.name} ${p.score}`).join(', ') || 'none';
}

function sameNames(a: Status, b: Status): boolean {
  return JSON.stringify(a.players.map((p) => p.name).sort()) === JSON.stringify(b.players.map((p) => p.name).sort());
}

