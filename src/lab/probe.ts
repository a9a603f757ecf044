/**
 * The probe client as seen from ferry: a child process inside a network
 * namespace (probe-agent.ts) that talks UDP to guests, driven over stdin/stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { StreamWindow } from './probe-agent.ts';

export type { StreamWindow } from './probe-agent.ts';

const AGENT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'probe-agent.ts');

export const GAMESRV_PORT = 7777;
export const MEMCHECK_PORT = 7778;

export interface MemcheckVerdict {
  pages: number;
  mismatches: number;
  firstBadPage: number;
  rewrites: number;
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
    const node = [process.execPath, '--import', 'tsx', AGENT];
    const [cmd, args] = netns ? ['ip', ['netns', 'exec', netns, ...node]] : [node[0]!, node.slice(1)];
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: path.resolve(path.dirname(AGENT), '../..') });
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

  async startStream(host: string, hz = 200): Promise<void> {
    await this.call('stream-start', { host, port: GAMESRV_PORT, hz });
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
