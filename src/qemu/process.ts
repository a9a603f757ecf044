/**
 * Supervision of one QEMU process: start it, connect QMP, notice when it exits
 * or crashes, and shut it down gracefully (powerdown with a time limit, then
 * quit, then kill).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { open } from 'node:fs/promises';
import { QemuStartError, QmpTimeoutError } from './errors.ts';
import { QmpClient } from './qmp.ts';

export const QEMU_BINARY = process.env['FERRY_QEMU'] ?? 'qemu-system-x86_64';

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when ferry asked for the exit (quit, kill); false for a crash or an outside kill. */
  expected: boolean;
}

export type ShutdownOutcome = 'powered-off' | 'quit' | 'killed' | 'already-exited';

export interface QemuStartOptions {
  argv: string[];
  qmpSocket: string;
  serialLog: string;
  /** Run inside this network namespace (where the VM's taps live). */
  netns?: string;
  connectTimeoutMs?: number;
}

export class QemuProcess {
  private stderr = '';
  private expectingExit = false;
  private exitInfo: QemuExit | undefined;
  readonly exited: Promise<QemuExit>;

  private constructor(
    private readonly child: ChildProcess | { pid: number },
    readonly serialLog: string,
  ) {
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitInfo) return;
        this.exitInfo = { code, signal, expected: this.expectingExit };
        resolve(this.exitInfo);
      };
      if ('once' in child) {
        child.once('exit', done);
        child.once('error', () => done(null, null)); // never started: no 'exit' will come
      }
      else this.watchAdopted(child.pid, done);
    });
    if ('stderr' in child) {
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (chunk: string) => {
        this.stderr = (this.stderr + chunk).slice(-16_384);
      });
    }
  }

  /**
   * Takes over a QEMU that an earlier run of this agent started (the agent was
   * restarted, QEMU kept running). Its exit is noticed by polling the pid.
   */
  static async adopt(options: { pid: number; qmpSocket: string; serialLog: string }): Promise<QemuProcess> {
    const proc = new QemuProcess({ pid: options.pid }, options.serialLog);
    proc.qmp = await QmpClient.connect(options.qmpSocket, { connectTimeoutMs: 2_000 });
    return proc;
  }

  private watchAdopted(pid: number, done: (code: number | null, signal: NodeJS.Signals | null) => void): void {
    const timer = setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch {
        clearInterval(timer);
        done(null, null);
      }
    }, 200);
    timer.unref();
  }

  qmp!: QmpClient;

  get pid(): number {
    return this.child.pid ?? -1;
  }



  get isRunning(): boolean {
    return this.exitInfo === undefined;
  }

  /** The last lines QEMU wrote to stderr: what to show a user when it failed. */
  stderrTail(lines = 10): string {
    return this.stderr.trim().split('\n').slice(-lines).join('\n');
  }

  static async start(options: QemuStartOptions): Promise<QemuProcess> {
    const [command, args] = options.netns
      ? ['ip', ['netns', 'exec', options.netns, QEMU_BINARY, ...options.argv]]
      : [QEMU_BINARY, options.argv];
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const proc = new QemuProcess(child, options.serialLog);
    const spawnError = new Promise<never>((_, reject) =>
      child.once('error', (err) => reject(new QemuStartError(`cannot run ${QEMU_BINARY}: ${err.message} (install the Debian package qemu-system-x86)`))),
    );
    const earlyExit = proc.exited.then((exit) => {
      throw new QemuStartError(`QEMU exited while starting (code ${exit.code}, signal ${exit.signal})`, proc.stderr);
    });
    try {
      proc.qmp = await Promise.race([
        QmpClient.connect(options.qmpSocket, { connectTimeoutMs: options.connectTimeoutMs ?? 15_000 }),
        spawnError,
        earlyExit,
      ]);
    } catch (err) {
      await proc.kill();
      throw err instanceof QemuStartError ? err : new QemuStartError(`QEMU did not open its QMP socket: ${(err as Error).message}`, proc.stderr);
    }
    earlyExit.catch(() => undefined);
    spawnError.catch(() => undefined);
    return proc;
  }

  /** Resolves with the first serial-console line that matches, polling the log file. */
  async waitForSerialLine(pattern: RegExp, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let offset = 0;
    let partial = '';
    while (Date.now() < deadline) {
      if (!this.isRunning) throw new QemuStartError('QEMU exited before the guest was ready', this.stderr);
      const chunk = await readFrom(this.serialLog, offset);
      offset += chunk.length;
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      const hit = lines.find((l) => pattern.test(l));
      if (hit) return hit.replace(/\r$/, '');
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new QmpTimeoutError(`wait for serial line ${pattern}`, timeoutMs);
  }

  /**
   * Graceful stop: ACPI powerdown and wait up to powerdownTimeoutMs, then QMP quit,
   * then SIGKILL. Says which step ended the process.
   */
  async shutdown(options: { powerdownTimeoutMs?: number; quitTimeoutMs?: number } = {}): Promise<ShutdownOutcome> {
    if (!this.isRunning) return 'already-exited';
    this.expectingExit = true;
    const powerdownTimeoutMs = options.powerdownTimeoutMs ?? 30_000;
    if (powerdownTimeoutMs > 0) {
      try {
        await this.qmp.execute('system_powerdown', undefined, 5_000);
        if (await this.exitsWithin(powerdownTimeoutMs)) return 'powered-off';
      } catch {
        /* QMP gone or refused: fall through to quit */
      }
    }
    try {
      await this.qmp.execute('quit', undefined, 5_000).catch(() => undefined);
      if (await this.exitsWithin(options.quitTimeoutMs ?? 5_000)) return 'quit';
    } catch {
      /* fall through to kill */
    }
    await this.kill();
    return 'killed';
  }

  /** Stops QEMU at once (SIGKILL) and waits for it. */
  async kill(): Promise<QemuExit> {
    this.expectingExit = true;
    if (this.isRunning) {
      if ('kill' in this.child) this.child.kill('SIGKILL');
      else process.kill(this.child.pid, 'SIGKILL');
    }
    if (this.qmp && !this.qmp.isClosed) this.qmp.close();
    // An adopted QEMU's exit is seen by an unref'd poll (an idle adopted guest must not keep a
    // process alive). Waiting for it here must: an agent that removes a stale copy before it
    // serves anything has no other handle, and Node would exit silently mid-await.
    const keepAlive = setInterval(() => undefined, 1000);
    try {
      return await this.exited;
    } finally {
      clearInterval(keepAlive);
    }
  }

  private async exitsWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
    const result = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return result;
  }
}

async function readFrom(path: string, offset: number): Promise<Buffer> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch {
    return Buffer.alloc(0);
  }
  try {
    const { size } = await handle.stat();
    if (size <= offset) return Buffer.alloc(0);
    const buf = Buffer.alloc(size - offset);
    await handle.read(buf, 0, buf.length, offset);
    return buf;
  } finally {
    await handle.close();
  }
}
