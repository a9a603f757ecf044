/**
 * The probe client as seen from ferry: a child process inside a network
 * namespace (probe-agent.ts) that talks UDP to guests, driven over stdin/stdout.
 */
import { QUAKE3_MAX_QUERIES_PER_SEC, QUAKE3_PORT, type Quake3Reply } from './quake3.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { StreamWindow } from './probe-agent.ts';
import { PROJECT_ROOT } from '../util/project.ts';

export type { StreamWindow } from './probe-agent.ts';

/** The probe's own process: the built one beside the built CLI (dist/), else the source through tsx. */
const BUILT = fileURLToPath(import.meta.url).endsWith('.mjs');
const AGENT = BUILT ? path.join(PROJECT_ROOT, 'dist', 'lab', 'probe-agent.mjs') : path.join(path.dirname(fileURLToPath(import.meta.url)), 'probe-agent.ts');

export const GAMESRV_PORT = 7777;
export const MEMCHECK_PORT = 7778;
export const DISKCHECK_PORT = 7779;

export interface MemcheckVerdict {
  pages: number;
  mismatches: number;
  firstBadPage: number;
  rewrites: number;
}

/** What diskcheck found reading its whole area back (guest/src/diskcheck.c). */
export interface DiskcheckVerdict {
  blocks: number;
  ok: number;
  /** Valid blocks older than the last completed write, or zeros where a write completed. */
  lost: number;
  /** Blocks whose header, payload or checksum do not agree. */
  torn: number;
  /** Valid blocks newer than the last completed write or of another block, or data in never-written blocks. */
  foreign: number;
  /** First bad block, -1 when all are ok. */
  firstBadBlock: number;
  /** Time the guest took to read and check the area. */
  ms: number;
}

export interface DiskcheckStats {
  blocks: number;
  /** Block writes that completed (the device acknowledged them durably). */
  writes: number;
  /** Distinct blocks ever written. */
  written: number;
  /** Sequence number of the last write handed out. */
  seq: number;
  /** Writes that failed (EIO, short writes). */
  errors: number;
  /** Blocks per second the writer rewrites. */
  rate: number;
}

/** Turns "key=value key=value" into numbers, insisting on every key in `keys`. */
function parseFields<K extends string>(what: string, prefix: string, reply: string, keys: readonly K[]): Record<K, number> {
  if (!reply.startsWith(prefix + ' ')) throw new Error(`unexpected ${what} reply to '${prefix}': ${reply}`);
  const fields = new Map<string, string>();
  for (const m of reply.slice(prefix.length).matchAll(/(\w+)=(-?\d+)/g)) fields.set(m[1]!, m[2]!);
  const result = {} as Record<K, number>;
  for (const key of keys) {
    const value = fields.get(key);
    if (value === undefined) throw new Error(`unexpected ${what} reply to '${prefix}' (no ${key}=): ${reply}`);
    result[key] = Number(value);
  }
  return result;
}

export class Probe {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  private stderr = '';

  private constructor(private readonly child: ChildProcess) {
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (c: string) => (this.stderr = (this.stderr + c).slice(-4000)));
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as { id: number; ok: boolean; error?: string };
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      if (msg.ok) w.resolve(msg as Record<string, unknown>);
      else w.reject(new Error(msg.error));
    });
    child.once('exit', (code) => {
      for (const w of this.waiting.values()) w.reject(new Error(`the probe process exited (code ${code}): ${this.stderr.trim()}`));
      this.waiting.clear();
    });
  }

  /** Starts a probe process inside `netns` (or in this namespace when undefined). */
  static async start(netns: string | undefined): Promise<Probe> {
    const node = BUILT ? [process.execPath, AGENT] : [process.execPath, '--import', 'tsx', AGENT];
    const [cmd, args] = netns ? ['ip', ['netns', 'exec', netns, ...node]] : [node[0]!, node.slice(1)];
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: PROJECT_ROOT });
    const probe = new Probe(child);
    await new Promise<void>((resolve, reject) => {
      probe.waiting.set(0, { resolve: () => resolve(), reject });
      setTimeout(() => reject(new Error(`the probe did not start within 15 s: ${probe.stderr}`)), 15_000).unref();
    });
    return probe;
  }

  private call(op: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.stdin!.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  async request(host: string, port: number, payload: string, timeoutMs = 5000): Promise<string> {
    return (await this.call('request', { host, port, payload, timeoutMs }))['reply'] as string;
  }

  /** One gamesrv exchange: its tick counter and boot id. */
  async gamesrv(host: string, timeoutMs = 5000): Promise<{ tick: number; boot: string }> {
    const reply = await this.request(host, GAMESRV_PORT, 'hello', timeoutMs);
    const m = /tick=(\d+) boot=(\w+)/.exec(reply);
    if (!m) throw new Error(`unexpected gamesrv reply: ${reply}`);
    return { tick: Number(m[1]), boot: m[2]! };
  }

  /** Asks the guest's memcheck to verify its whole area. */
  async memcheckVerify(host: string, timeoutMs = 30_000): Promise<MemcheckVerdict> {
    const reply = await this.request(host, MEMCHECK_PORT, 'verify', timeoutMs);
    const m = /pages=(\d+) mismatches=(\d+) first=(-?\d+) rewrites=(\d+)/.exec(reply);
    if (!m) throw new Error(`unexpected memcheck reply: ${reply}`);
    return { pages: Number(m[1]), mismatches: Number(m[2]), firstBadPage: Number(m[3]), rewrites: Number(m[4]) };
  }

  async setDirtyRate(host: string, mibps: number): Promise<void> {
    await this.request(host, MEMCHECK_PORT, `rate ${mibps}`);
  }

  /**
   * Asks the guest's diskcheck to read its whole disk area back and judge every
   * block against the table of completed writes it keeps in RAM.
   */
  async diskcheckVerify(host: string, timeoutMs = 120_000): Promise<DiskcheckVerdict> {
    const reply = await this.request(host, DISKCHECK_PORT, 'verify', timeoutMs);
    const f = parseFields('diskcheck', 'verify', reply, ['blocks', 'ok', 'lost', 'torn', 'foreign', 'first', 'ms'] as const);
    return { blocks: f.blocks, ok: f.ok, lost: f.lost, torn: f.torn, foreign: f.foreign, firstBadBlock: f.first, ms: f.ms };
  }

  async diskcheckStats(host: string, timeoutMs = 5000): Promise<DiskcheckStats> {
    const reply = await this.request(host, DISKCHECK_PORT, 'stats', timeoutMs);
    return parseFields('diskcheck', 'stats', reply, ['blocks', 'writes', 'written', 'seq', 'errors', 'rate'] as const);
  }

  /** What the disk held when diskcheck started (it takes a disk it finds as it is): valid, torn and foreign blocks, the highest seq. */
  async diskcheckStartup(host: string, timeoutMs = 5000): Promise<{ valid: number; torn: number; foreign: number; maxseq: number; ms: number }> {
    const reply = await this.request(host, DISKCHECK_PORT, 'startup', timeoutMs);
    return parseFields('diskcheck', 'startup', reply, ['valid', 'torn', 'foreign', 'maxseq', 'ms'] as const);
  }

  /** Sets how many blocks per second diskcheck rewrites (0: idle). */
  async diskcheckRate(host: string, blocksPerSec: number): Promise<void> {
    const reply = await this.request(host, DISKCHECK_PORT, `rate ${blocksPerSec}`);
    if (reply !== `rate ${blocksPerSec}`) throw new Error(`unexpected diskcheck reply to 'rate ${blocksPerSec}': ${reply}`);
  }

  /** Writes every block of the first `mib` MiB of the disk (gives a migration data to move); returns the MiB written and the time taken. */
  async diskcheckFill(host: string, mib: number, timeoutMs = 120_000): Promise<{ mib: number; ms: number }> {
    const reply = await this.request(host, DISKCHECK_PORT, `fill ${mib}`, timeoutMs);
    return parseFields('diskcheck', 'fill', reply, ['mib', 'ms'] as const);
  }

  /**
   * For tests of diskcheck itself: damages one block behind its table's back,
   * `corrupt` (a torn block) or `rewind` (an older valid version, a lost write).
   */
  async diskcheckDamage(host: string, how: 'corrupt' | 'rewind', block: number): Promise<void> {
    const reply = await this.request(host, DISKCHECK_PORT, `${how} ${block}`);
    if (!reply.startsWith(`${how} ${block}`)) throw new Error(`diskcheck refused '${how} ${block}': ${reply}`);
  }

  async startStream(host: string, hz = 200): Promise<void> {
    await this.call('stream-start', { host, port: GAMESRV_PORT, hz });
  }

  /**
   * A Quake 3 game client's view of a real server: `getinfo` at `hz` (at most 9: the server answers
   * 10 a second in all), from the lab's query addresses in turn (each is answered once a second).
   */
  async startQuake3Stream(host: string, sources: string[], hz = 8): Promise<void> {
    if (hz > QUAKE3_MAX_QUERIES_PER_SEC - 1) throw new RangeError(`a Quake 3 server answers ${QUAKE3_MAX_QUERIES_PER_SEC} queries a second in all; ask at most ${QUAKE3_MAX_QUERIES_PER_SEC - 1}`);
    if (sources.length < hz) throw new RangeError(`${hz} queries a second need ${hz} source addresses (each is answered once a second); ${sources.length} given`);
    await this.call('stream-start', { host, port: QUAKE3_PORT, hz, protocol: 'quake3', sources });
  }

  /** One out-of-band Quake 3 query (getstatus: variables and players; getinfo: the summary; rcon PASSWORD CMD: what it printed). */
  async quake3(host: string, command: string, timeoutMs = 5000): Promise<Quake3Reply> {
    return (await this.call('quake3', { host, port: QUAKE3_PORT, command, timeoutMs }))['reply'] as Quake3Reply;
  }

  async window(): Promise<StreamWindow> {
    return (await this.call('window'))['window'] as StreamWindow;
  }

  async stopStream(): Promise<StreamWindow> {
    return (await this.call('stream-stop'))['window'] as StreamWindow;
  }

  async close(): Promise<void> {
    this.child.stdin!.end();
    if (this.child.exitCode === null) await new Promise((r) => this.child.once('exit', r));
  }
}
