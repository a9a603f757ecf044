/**
 * Faults of the lab's network and storage, for the migration fault campaign: each makes one thing
 * go wrong and returns how to undo it. The machine's kernel has no netem or u32 classifier, so a cut
 * link is a pair of blackhole routes (packets between the two hosts vanish; each still reaches the
 * store and the guests), and a slow link is a token bucket (tbf) on the host's uplink, which queues
 * (latency) and drops past its limit (loss).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../util/exec.ts';
import type { LabRecord } from './lab.ts';

export type Undo = () => Promise<void>;

function hostOf(lab: LabRecord, name: string) {
  const host = lab.hosts.find((h) => h.name === name);
  if (!host) throw new Error(`no host ${name} in the lab`);
  return host;
}

/** Packets between hosts `a` and `b` dropped both ways (their other traffic flows). */
export async function cutLink(lab: LabRecord, a: string, b: string): Promise<Undo> {
  const [ha, hb] = [hostOf(lab, a), hostOf(lab, b)];
  const routes: Array<[string, string]> = [[ha.netns, hb.address], [hb.netns, ha.address]];
  for (const [netns, to] of routes) await run('ip', ['-n', netns, 'route', 'add', 'blackhole', `${to}/32`]);
  return async () => {
    for (const [netns, to] of routes) await run('ip', ['-n', netns, 'route', 'del', 'blackhole', `${to}/32`]).catch(() => undefined);
  };
}

/** Host `name`'s uplink squeezed to `mbit` Mbit/s with at most `latencyMs` of queue: delay, then tail drops. */
export async function slowLink(lab: LabRecord, name: string, mbit: number, latencyMs: number): Promise<Undo> {
  const netns = hostOf(lab, name).netns;
  await run('ip', ['netns', 'exec', netns, 'tc', 'qdisc', 'add', 'dev', 'up0', 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', '32kbit', 'latency', `${latencyMs}ms`]);
  return async () => {
    await run('ip', ['netns', 'exec', netns, 'tc', 'qdisc', 'del', 'dev', 'up0', 'root']).catch(() => undefined);
  };
}

/** A host's local pool directory (the lab's pool 'local'). */
export const localPoolDir = (lab: LabRecord, host: string) => path.join(lab.dir, 'hosts', host, 'images');

/**
 * Gives each host's local pool a filesystem of its own (a loop-mounted ext4 of `mib` MiB), so that
 * one host's storage can be filled without touching the machine's disk. Only on empty pools: run
 * before any VM has a disk there. labDown unmounts them.
 */
export async function boundLocalPools(lab: LabRecord, mib: number): Promise<void> {
  for (const h of lab.hosts) {
    const dir = localPoolDir(lab, h.name);
    if ((await readFile('/proc/mounts', 'utf8')).includes(` ${dir} `)) continue;
    await mkdir(dir, { recursive: true });
    const volumes = (await readdir(dir)).filter((f) => /\.(qcow2|raw|img)$/.test(f));
    if (volumes.length) throw new Error(`${dir} holds volumes (${volumes.join(', ')}): bound the local pools before creating VMs`);
    const image = path.join(lab.dir, 'hosts', h.name, 'local-pool.ext4');
    await run('truncate', ['-s', `${mib}M`, image]);
    await run('mkfs.ext4', ['-q', '-F', image]);
    // What the agent keeps there already (no volumes) moves onto the new filesystem.
    const aside = `${dir}.before-mount`;
    await rename(dir, aside);
    await mkdir(dir);
    await run('mount', ['-o', 'loop', image, dir]);
    // The agent runs in a mount namespace of its own (`ip netns exec` makes one, and this machine's
    // mounts do not propagate into it): it, and the QEMUs it starts, must see the same filesystem.
    const device = (await readFile('/proc/mounts', 'utf8')).split('\n').map((l) => l.split(' ')).find((f) => f[1] === dir)?.[0];
    if (!device) throw new Error(`${dir} is not mounted after mount`);
    if (h.pid) await run('nsenter', ['-t', String(h.pid), '-m', 'mount', device, dir]);
    await rm(path.join(dir, 'lost+found'), { recursive: true, force: true });
    await run('cp', ['-a', `${aside}/.`, dir]);
    await rm(aside, { recursive: true, force: true });
  }
}

const FILLER = '.campaign-filler';

/** Fills host `name`'s local pool until `leaveKiB` KiB are left. */
export async function fillLocalPool(lab: LabRecord, name: string, leaveKiB = 512): Promise<Undo> {
  const dir = localPoolDir(lab, name);
  const fs = await statfs(dir);
  const freeKiB = Math.floor((fs.bavail * fs.bsize) / 1024);
  const filler = path.join(dir, FILLER);
  if (freeKiB > leaveKiB) await run('fallocate', ['-l', `${(freeKiB - leaveKiB) * 1024}`, filler]);
  return async () => {
    await rm(filler, { force: true });
  };
}

/** Whether a campaign fault left its filler behind. */
export const fillerLeft = (lab: LabRecord, name: string) => existsSync(path.join(localPoolDir(lab, name), FILLER));
