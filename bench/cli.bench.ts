/**
 * How fast `ferry` answers and how much an agent holds, against a 3-host lab (`npm run bench -- --only
 * cli`). Each command is run `runs` times, interleaved with a bare `node -e 0` and with the same
 * command run from the TypeScript sources (FERRY_DEV=1, tsx's loader, its cache warm): medians and
 * ratios to bare Node from the same run. The agents' resident memory is read from /proc with no VM,
 * with one, with ten on one host, and before and after `migrations` live migrations between two hosts
 * (after `warmUp` migrations that are reported apart: V8 compiles the migration paths and sizes its
 * heap in them). Then the leak check proper: a heap snapshot of each agent (live JavaScript objects
 * only, taken after a full GC), `leakCheck` more migrations, a second snapshot, compared by constructor.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { median, table } from '../src/cli/format.ts';
import { readLab } from '../src/lab/lab.ts';
import { PROJECT_ROOT } from '../src/util/project.ts';
import { compareHeapSnapshots, readHeapSnapshot, type HeapSummary } from './heap-snapshot.ts';

const FERRY = path.join(PROJECT_ROOT, 'bin', 'ferry.mjs');

/** Milliseconds one run of `args` takes (exits non-zero: an error naming the command). */
function timed(args: string[], env: Record<string, string>): number {
  const started = performance.now();
  const result = spawnSync(process.execPath, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
  const took = performance.now() - started;
  if (result.status !== 0) throw new Error(`${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  return took;
}

function rssMiB(pid: number): number | null {
  try {
    const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) / 1024 : null;
  } catch {
    return null;
  }
}

/** Asks an agent started with --heapsnapshot-signal=SIGUSR2 for a snapshot and reads it once written. */
async function heapSnapshot(pid: number, dir: string): Promise<HeapSummary> {
  const mine = () => readdirSync(dir).filter((f) => f.includes(`.${pid}.`) && f.endsWith('.heapsnapshot'));
  const before = new Set(mine());
  process.kill(pid, 'SIGUSR2');
  const deadline = Date.now() + 60_000;
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const file = mine().find((f) => !before.has(f));
    if (file) {
      // The agent writes it on its main thread: a size that holds still for a second is the whole file.
      const full = path.join(dir, file);
      const size = statSync(full).size;
      await new Promise((r) => setTimeout(r, 1000));
      if (statSync(full).size === size) {
        try {
          return readHeapSnapshot(full);
        } catch {
          /* not complete yet */
        }
      }
    }
    if (Date.now() > deadline) throw new Error(`agent ${pid} wrote no heap snapshot in 60 s`);
  }
}

export async function runCliBench(runs = 20, migrations = 100, warmUp = 20, leakCheck = 50): Promise<void> {
  if (!existsSync(path.join(PROJECT_ROOT, 'dist', '.built'))) throw new Error('dist/ is not built: run node scripts/build.mjs (setup does)');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-cli-'));
  const env = { FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fbc${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '1536' };
  const ferry = (...args: string[]) => timed([FERRY, ...args], env);
  const snapshots = path.join(dir, 'heap');
  await mkdir(snapshots);
  try {
    // Only the agents get the snapshot signal (they inherit the environment of `lab up`).
    timed([FERRY, 'lab', 'up', '--hosts', '3'], { ...env, NODE_OPTIONS: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${snapshots}` });
    const lab = (await readLab(dir))!;
    const agents = () => lab.hosts.map((h) => rssMiB(h.pid!));
    await new Promise((r) => setTimeout(r, 2000)); // the agents' start-up settles
    const idle = agents();
    ferry('vm', 'create', 'b1', '--memory', '128', '--host', 'h1');
    const commands: Array<[string, string[]]> = [
      ['ferry --version', ['--version']],
      ['ferry vm list --json', ['vm', 'list', '--json']],
      ['ferry vm show b1 --json', ['vm', 'show', 'b1', '--json']],
    ];
    const bare: number[] = [];
    const built = new Map<string, number[]>(commands.map(([name]) => [name, []]));
    const sources = new Map<string, number[]>(commands.map(([name]) => [name, []]));
    // One warm-up of each (tsx's cache, the page cache), not counted.
    for (const [, args] of commands) {
      ferry(...args);
      timed([FERRY, ...args], { ...env, FERRY_DEV: '1' });
    }
    for (let i = 0; i < runs; i++) {
      bare.push(timed(['-e', '0'], {}));
      for (const [name, args] of commands) {
        built.get(name)!.push(ferry(...args));
        sources.get(name)!.push(timed([FERRY, ...args], { ...env, FERRY_DEV: '1' }));
      }
    }
    const base = median(bare);
    const cell = (xs: number[]) => `${Math.round(median(xs))} ms`;
    const ratio = (xs: number[]) => `${(median(xs) / base).toFixed(2)}×`;
    console.log(`\nferry's start — medians of ${runs} runs each, interleaved, against a 3-host lab (bare \`node -e 0\`: ${Math.round(base)} ms)`);
    console.log(
      table(
        ['command', 'built (dist/)', '× bare node', 'from sources (tsx)', '× bare node', 'built / sources'],
        commands.map(([name]) => [name, cell(built.get(name)!), ratio(built.get(name)!), cell(sources.get(name)!), ratio(sources.get(name)!), `${(median(built.get(name)!) / median(sources.get(name)!)).toFixed(2)}×`]),
      ),
    );
    const loaded = agents();
    // Ten VMs on h1 (b1 and nine small ones), then b1's agent-side life over many migrations h1 -> h2 -> h3 -> h2 ...
    for (let i = 2; i <= 10; i++) ferry('vm', 'create', `b${i}`, '--memory', '128', '--memcheck', '8', '--host', 'h1');
    await new Promise((r) => setTimeout(r, 2000));
    const ten = agents();
    const hops = ['h2', 'h3'];
    let hop = 0;
    const migrate = (count: number) => {
      for (let i = 0; i < count; i++) ferry('vm', 'migrate', 'b1', '--to', hops[hop++ % 2]!, '--no-probe');
    };
    migrate(warmUp);
    await new Promise((r) => setTimeout(r, 2000));
    const beforeHops = agents();
    migrate(migrations);
    await new Promise((r) => setTimeout(r, 2000));
    const afterHops = agents();
    const show = (v: number | null | undefined) => (v === null || v === undefined ? '-' : `${v.toFixed(1)} MiB`);
    const diff = (a: Array<number | null>, b: Array<number | null>, i: number) => (a[i] != null && b[i] != null ? `${(b[i]! - a[i]!).toFixed(1)} MiB` : '-');
    console.log(`\nagents' resident memory (VmRSS from /proc, one reading each; b1 left h1, then ${warmUp} warm-up migrations between h2 and h3, then ${migrations} more)`);
    console.log(
      table(
        ['host', 'no VM', 'one VM in the cluster', 'ten VMs on h1', 'after the warm-up', `after ${migrations} more`, 'growth (warm-up)', `growth (${migrations})`],
        lab.hosts.map((h, i) => [h.name, show(idle[i]), show(loaded[i]), show(ten[i]), show(beforeHops[i]), show(afterHops[i]), diff(ten, beforeHops, i), diff(beforeHops, afterHops, i)]),
      ),
    );

    // A snapshot inflates the resident size for a while (the serializer's buffers), so it comes after the readings above.
    const pids = lab.hosts.map((h) => h.pid!);
    const first: HeapSummary[] = [];
    for (const pid of pids) first.push(await heapSnapshot(pid, snapshots));
    migrate(leakCheck);
    const second: HeapSummary[] = [];
    for (const pid of pids) second.push(await heapSnapshot(pid, snapshots));
    const mib = (bytes: number) => `${(bytes / 1048576).toFixed(2)} MiB`;
    console.log(`\nlive JavaScript heap (heap snapshots, each after a full GC) before and after ${leakCheck} more migrations of b1 between h2 and h3`);
    const rows = lab.hosts.map((h, i) => {
      const cmp = compareHeapSnapshots(first[i]!, second[i]!);
      const top = cmp.grown.slice(0, 3).map((g) => `${g.kind} +${g.count} (${(g.bytes / 1024).toFixed(0)} KiB)`).join(', ') || '-';
      return [h.name, mib(first[i]!.totalBytes), mib(second[i]!.totalBytes), mib(second[i]!.totalBytes - first[i]!.totalBytes), mib(cmp.objectBytesGrowth), top];
    });
    console.log(table(['host', 'before', 'after', 'growth', 'of which not compiled code', 'largest growth by kind'], rows));
  } finally {
    spawnSync(process.execPath, [FERRY, 'lab', 'down'], { env: { ...process.env, ...env } });
    await rm(dir, { recursive: true, force: true });
  }
}
