/**
 * How fast `ferry` answers and how much an agent holds, against a 3-host lab (`npm run bench -- --only
 * cli`). Each command is run `runs` times, interleaved with a bare `node -e 0` and with the same
 * command run from the TypeScript sources (FERRY_DEV=1, tsx's loader, its cache warm): medians and
 * ratios to bare Node from the same run. The agents' resident memory is read from /proc with no VM,
 * with one, with ten on one host, and before and after `migrations` live migrations between two hosts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { median, table } from '../src/cli/format.ts';
import { readLab } from '../src/lab/lab.ts';
import { PROJECT_ROOT } from '../src/util/project.ts';

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

export async function runCliBench(runs = 20, migrations = 100): Promise<void> {
  if (!existsSync(path.join(PROJECT_ROOT, 'dist', '.built'))) throw new Error('dist/ is not built: run node scripts/build.mjs (setup does)');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-cli-'));
  const env = { FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fbc${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '1536' };
  const ferry = (...args: string[]) => timed([FERRY, ...args], env);
  try {
    ferry('lab', 'up', '--hosts', '3');
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
    let done = 0;
    const hops = ['h2', 'h3'];
    const beforeHops = agents();
    for (let i = 0; i < migrations; i++) {
      ferry('vm', 'migrate', 'b1', '--to', hops[i % 2]!, '--no-probe');
      done++;
    }
    await new Promise((r) => setTimeout(r, 2000));
    const afterHops = agents();
    const show = (v: number | null | undefined) => (v === null || v === undefined ? '-' : `${v.toFixed(1)} MiB`);
    const growth = (i: number) => (beforeHops[i] != null && afterHops[i] != null ? `${(afterHops[i]! - beforeHops[i]!).toFixed(1)} MiB` : '-');
    console.log(`\nagents' resident memory (VmRSS from /proc, one reading each; ${done} migrations of b1 between h2 and h3, after it left h1)`);
    console.log(
      table(
        ['host', 'no VM', 'one VM in the cluster', 'ten VMs on h1', `before the ${done} migrations`, 'after', 'growth'],
        lab.hosts.map((h, i) => [h.name, show(idle[i]), show(loaded[i]), show(ten[i]), show(beforeHops[i]), show(afterHops[i]), growth(i)]),
      ),
    );
  } finally {
    spawnSync(process.execPath, [FERRY, 'lab', 'down'], { env: { ...process.env, ...env } });
    await rm(dir, { recursive: true, force: true });
  }
}
