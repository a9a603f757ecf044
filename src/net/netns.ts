/** Network namespaces, bridges and taps through iproute2. Only namespaces ferry created are touched. */
import { createHash } from 'node:crypto';
import { run } from '../util/exec.ts';

export function ip(netns: string | undefined, ...args: string[]): Promise<string> {
  return run('ip', netns ? ['-n', netns, ...args] : args);
}

/** Kills those of `pids` that run inside namespace `netns` (a pid saved before a reboot may be someone else's now). */
export async function killInNetns(netns: string, pids: number[]): Promise<void> {
  const inside = new Set((await ip(undefined, 'netns', 'pids', netns).catch(() => '')).split('\n').filter(Boolean).map(Number));
  for (const pid of pids) {
    if (!inside.has(pid)) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

export async function netnsExists(name: string): Promise<boolean> {
  const out = await run('ip', ['netns', 'list']);
  return out.split('\n').some((line) => line.split(' ')[0] === name);
}

export async function createNetns(name: string): Promise<void> {
  if (!(await netnsExists(name))) await run('ip', ['netns', 'add', name]);
  await ip(name, 'link', 'set', 'lo', 'up');
}

export async function deleteNetns(name: string): Promise<void> {
  if (await netnsExists(name)) await run('ip', ['netns', 'delete', name]);
}

export async function linkExists(netns: string | undefined, name: string): Promise<boolean> {
  try {
    await ip(netns, 'link', 'show', 'dev', name);
    return true;
  } catch {
    return false;
  }
}

/** A bridge with an optional address; idempotent. */
export async function createBridge(netns: string | undefined, name: string, address?: string): Promise<void> {
  if (!(await linkExists(netns, name))) {
    // forward_delay 0: a port forwards at once; a migrated guest's new tap must not wait in "learning".
    await ip(netns, 'link', 'add', name, 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
  }
  // A bridge without an address of its own takes the lowest of its ports': a guest's tap that
  // comes or goes would change the host's MAC under its neighbours' ARP caches, and the host
  // would not be reachable until they expire (seen: 30 s of a host not answering after a VM left).
  await ip(netns, 'link', 'set', name, 'address', stableMac(`${netns ?? ''}/${name}`));
  if (address) await ip(netns, 'addr', 'replace', address, 'dev', name);
  await ip(netns, 'link', 'set', name, 'up');
}

/** A locally administered unicast MAC that is the same for the same seed. */
function stableMac(seed: string): string {
  const bytes = createHash('sha256').update(seed).digest().subarray(0, 5);
  return ['02', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
