/** A 3-host lab for an end-to-end suite: brought up before its tests, taken down after, driven through `ferry`. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { killAgent, qemuPidsOf, readLab, startAgent, type LabRecord } from '../../src/lab/lab.ts';
import { Probe } from '../../src/lab/probe.ts';
import { run } from '../../src/util/exec.ts';
import { ferry, type CliResult } from './cli.ts';

export interface SuiteLab {
  /** The lab's directory (FERRY_LAB_DIR). */
  readonly dir: string;
  readonly env: Record<string, string>;
  readonly lab: LabRecord;
  /** A probe in the lab's client namespace. */
  readonly probe: Probe;
  /** `ferry ARGS --json` against this lab. */
  cli(...args: string[]): Promise<CliResult>;
}

/**
 * Registers before/after hooks on the calling suite: `ferry lab up --hosts 3 EXTRA...` with a
 * namespace prefix of its own (tag + pid), and `ferry lab down`, which must succeed.
 */
export function useLab(tag: string, extraUpArgs: string[] = []): SuiteLab {
  const state = {} as { dir: string; env: Record<string, string>; lab: LabRecord; probe: Probe };
  const suite: SuiteLab = {
    get dir() {
      return state.dir;
    },
    get env() {
      return state.env;
    },
    get lab() {
      return state.lab;
    },
    get probe() {
      return state.probe;
    },
    cli: (...args) => ferry(state.env, ...args, '--json'),
  };
  before(async () => {
    state.dir = await mkdtemp(path.join(os.tmpdir(), `ferry-lab-${tag}-`));
    state.env = { FERRY_LAB_DIR: state.dir, FERRY_CONTEXT: path.join(state.dir, 'context.json'), FERRY_LAB_PREFIX: `f${tag.slice(0, 2)}${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '768' };
    const up = await suite.cli('lab', 'up', '--hosts', '3', ...extraUpArgs);
    assert.equal(up.code, 0, up.stderr);
    state.lab = (await readLab(state.dir))!;
    state.probe = await Probe.start(state.lab.clientNetns);
  });
  after(async () => {
    await state.probe?.close();
    const down = await ferry(state.env, 'lab', 'down');
    assert.equal(down.code, 0, down.stderr);
    assert.equal(existsSync(state.dir), false, 'lab down removes everything the lab made (its storage servers\' data too)');
    await assertLabGone(state.dir, state.env['FERRY_LAB_PREFIX']!);
    await rm(state.dir, { recursive: true, force: true });
  });
  return suite;
}

/** The QEMU processes of this suite's lab running `vm` (a lab of another suite on the machine may run a VM of that name). */
export async function labQemuPids(suite: SuiteLab, vm: string): Promise<number[]> {
  const pids = await qemuPidsOf(vm);
  const ours = await Promise.all(pids.map(async (pid) => (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(suite.dir)));
  return pids.filter((_, i) => ours[i]);
}

/**
 * What `ferry lab down` promises, checked from outside: no network namespace of the lab (its
 * bridges, veths and taps live in them), no link of it in this namespace, no process that runs
 * from its directory (agents, QEMU, etcd, storage servers), nothing mounted from or under it.
 */
export async function assertLabGone(dir: string, prefix: string): Promise<void> {
  const namespaces = (await run('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith(`${prefix}-`));
  assert.deepEqual(namespaces, [], 'lab down leaves no network namespace behind');
  const links = (await run('ip', ['-br', 'link'])).split('\n').filter((l) => l.includes(prefix.slice(-9)));
  assert.deepEqual(links, [], 'lab down leaves no link in the root namespace');
  const processes = (await run('pgrep', ['-af', dir]).catch(() => '')).split('\n').filter((l) => l && !l.includes('pgrep'));
  assert.deepEqual(processes, [], 'lab down leaves no process behind');
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(dir));
  assert.deepEqual(mounts, [], 'lab down leaves nothing mounted');
}

/**
 * A VM on shared storage migrated h1 → h2 → h3 → h1 (it must start on h1): after every hop only RAM
 * moved and its disk verifies; `afterHop` adds the driver's own checks.
 */
export async function migrateAroundOnSharedStorage(
  suite: SuiteLab,
  vm: string,
  ip: string,
  t: { diagnostic(message: string): void },
  afterHop: () => Promise<void> = async () => undefined,
): Promise<void> {
  let writes = 0;
  for (const to of ['h2', 'h3', 'h1']) {
    const result = await suite.cli('vm', 'migrate', vm, '--to', to);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.json.attempts, 1, `one attempt, none rolled back: ${JSON.stringify(result.json.earlierAttempts)}`);
    assert.deepEqual(result.json.disks, [{ id: 'disk0', mode: 'shared' }]);
    assert.equal(result.json.diskBytes, 0, 'shared storage: no disk bytes copied');
    writes = await assertDiskVerifies(suite, vm, writes, ip);
    await afterHop();
    t.diagnostic(`-> ${to}: total ${result.json.totalMs} ms, downtime ${result.json.downtimeMs} ms, blackout ${result.json.blackoutMs} ms`);
  }
}

/**
 * What a user checks of a disk: the guest's diskcheck kept writing without errors, and the disk
 * reads back intact. Returns its write count. On failure the message carries the end of the
 * guest's serial console (a kernel panic and reboot shows there).
 */
export async function assertDiskVerifies(suite: SuiteLab, vm: string, writesBefore: number, ip?: string): Promise<number> {
  const address = ip ?? ((await suite.cli('vm', 'show', vm)).json.ip as string);
  try {
    const stats = await suite.probe.diskcheckStats(address);
    assert.equal(stats.errors, 0, `${vm} saw ${stats.errors} failed disk writes`);
    assert.ok(stats.writes > writesBefore, `${vm}: diskcheck stopped writing or restarted (${writesBefore} -> ${stats.writes} writes)`);
    const verdict = await suite.probe.diskcheckVerify(address);
    assert.deepEqual(
      { lost: verdict.lost, torn: verdict.torn, foreign: verdict.foreign },
      { lost: 0, torn: 0, foreign: 0 },
      `${vm}: the disk does not verify (first bad block ${verdict.firstBadBlock})`,
    );
    return stats.writes;
  } catch (err) {
    const consoleLog: string = (await suite.cli('vm', 'console', vm)).json?.log ?? '(console not available)';
    (err as Error).message += `\n--- ${vm}'s serial console since its last start (last 3000 characters) ---\n${consoleLog.slice(-3000)}`;
    throw err;
  }
}

/** The ends of the named hosts' agent logs, for a failure message. */
export async function agentLogs(suite: SuiteLab, hosts: string[], chars = 3000): Promise<string> {
  const tails = await Promise.all(
    hosts.map(async (h) => `--- ${h} agent log (end) ---\n${(await readFile(path.join(suite.dir, 'hosts', h, 'agent.log'), 'utf8').catch((err: Error) => err.message)).slice(-chars)}`),
  );
  return tails.join('\n');
}

/**
 * A host dies with a VM on shared storage (its agent and the guest's QEMU killed at once); once its
 * lease has lapsed, `ferry vm recover VM --to HOST` boots the VM there from the same disk: diskcheck
 * finds every write the guest reported complete, nothing torn or foreign, and the disk verifies.
 * The dead host's agent then comes back without starting a second copy.
 */
/**
 * `fencedFrom`: the pool whose backend fences a lost host (storage fencing): the recovery's job log
 * says it did, `reachesPool` (run in the lost host's namespace) fails while the host is fenced, and the
 * pool is reachable again from that host once its agent is back.
 */
export async function recoverAfterHostDeath(
  suite: SuiteLab,
  vm: string,
  to: string,
  t: { diagnostic(message: string): void },
  fencing?: { pool: string; reachesPool: (netns: string) => Promise<boolean> },
): Promise<void> {
  const shown = (await suite.cli('vm', 'show', vm)).json as { owner: string; ip: string };
  const lost = shown.owner;
  const lastSeen = await suite.probe.diskcheckStats(shown.ip);
  const instance = JSON.parse(await readFile(path.join(suite.dir, 'hosts', lost, 'state', 'instances', `${vm}.running.json`), 'utf8')) as { pid: number };
  await killAgent(suite.lab, lost);
  process.kill(instance.pid, 'SIGKILL');
  const died = Date.now();
  let recovered = await suite.cli('vm', 'recover', vm, '--to', to);
  assert.notEqual(recovered.code, 0, `refused while ${lost}'s lease is current`);
  assert.match(recovered.stderr, new RegExp(`host '${lost}' is alive \\(its lease is current\\)`));
  for (let i = 0; i < 90 && recovered.code !== 0; i++) {
    assert.match(recovered.stderr, /is alive/, recovered.stderr);
    await new Promise((r) => setTimeout(r, 500));
    recovered = await suite.cli('vm', 'recover', vm, '--to', to);
  }
  assert.equal(recovered.code, 0, recovered.stderr);
  assert.equal((await suite.cli('vm', 'show', vm)).json.owner, to);
  const startup = await suite.probe.diskcheckStartup(shown.ip, 90_000);
  t.diagnostic(`${vm}: ${lost} died, recovered on ${to} after ${Date.now() - died} ms; before the crash the guest had completed write seq ${lastSeen.seq}, the disk holds up to ${startup.maxseq}`);
  assert.deepEqual({ torn: startup.torn, foreign: startup.foreign }, { torn: 0, foreign: 0 });
  assert.ok(startup.maxseq >= lastSeen.seq, `a write the guest saw complete (seq ${lastSeen.seq}) is missing: the disk's newest is ${startup.maxseq}`);
  await assertDiskVerifies(suite, vm, 0, shown.ip);
  const lostNetns = suite.lab.hosts.find((h) => h.name === lost)!.netns;
  if (fencing) {
    const job = ((await suite.cli('job', 'list')).json as Array<{ kind: string; vm: string; log: string[] }>).filter((j) => j.kind === 'recover' && j.vm === vm).at(-1);
    assert.ok(job?.log.some((l) => /fenced: /.test(l)), `the recovery's job log says ${lost} was fenced: ${job?.log.join(' | ')}`);
    assert.equal(await fencing.reachesPool(lostNetns), false, `${lost} is cut off pool '${fencing.pool}' while it is fenced`);
  }
  await startAgent(suite.lab, lost);
  for (let i = 0; i < 60 && !(await suite.cli('node', 'list')).json?.hosts?.some((h: { name: string }) => h.name === lost); i++) await new Promise((r) => setTimeout(r, 500));
  if (fencing) {
    let back = false;
    for (let i = 0; i < 30 && !back; i++) {
      back = await fencing.reachesPool(lostNetns);
      if (!back) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.ok(back, `${lost} lifted its storage fence once its agent was back (it runs no guest of another host)`);
    const listed = (await suite.cli('storage', 'list')).json.hosts as Array<{ host: string; pools?: Array<{ pool: string; reachable: boolean }> }>;
    assert.equal(listed.find((h) => h.host === lost)?.pools?.find((p) => p.pool === fencing.pool)?.reachable, true, `ferry storage list: ${lost} reaches '${fencing.pool}' again`);
  }
  const copies = await qemuPidsOf(vm);
  assert.equal(copies.length, 1, `one QEMU runs ${vm} after ${lost} came back`);
}
