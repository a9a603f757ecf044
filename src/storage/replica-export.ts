/**
 * The peer's half of a replicated volume: `qemu-nbd` serves this host's
 * replica to the host that runs the VM, over NBD with mutual TLS (the cluster's
 * certificates; a client without one is refused). Writes go through to the
 * file before they are acknowledged (`--cache=writethrough`): the primary
 * counts a write as done only once the peer has it, as DRBD's protocol C does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import type { VolumeFormat } from '../qemu/spec.ts';
import { accepts, freePort } from '../util/net.ts';
import { StorageError } from './errors.ts';

export class ReplicaExportError extends StorageError {
  override name = 'ReplicaExportError';
}

export interface ReplicaExportOptions {
  file: string;
  format: VolumeFormat;
  /** This host's address on the hosts' network. */
  address: string;
  /** The port to use again (the primary's NBD client reconnects to it); a free one when absent or taken. */
  port?: number;
  exportName: string;
  /** A directory in QEMU's tls-creds-x509 layout (ca-cert.pem, server-cert.pem, server-key.pem). */
  tlsDir: string;
  /** Where the process id is written, for an agent that restarts to find it. */
  pidFile: string;
}

const START_TIMEOUT_MS = 5_000;

export class ReplicaExport {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    private readonly pidFile: string,
    readonly exited: Promise<void>,
  ) {}

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  static async start(options: ReplicaExportOptions): Promise<ReplicaExport> {
    await stopStale(options.pidFile);
    const wanted = options.port;
    for (let attempt = 1; ; attempt++) {
      const port = wanted && attempt === 1 ? wanted : await freePort(options.address);
      try {
        return await ReplicaExport.spawnOn(options, port);
      } catch (err) {
        if (attempt >= 4 || !/in use|bind|listen/i.test((err as Error).message)) throw err;
      }
    }
  }

  private static async spawnOn(options: ReplicaExportOptions, port: number): Promise<ReplicaExport> {
    const child = spawn(
      'qemu-nbd',
      [
        '--object', `tls-creds-x509,id=ferry-tls,dir=${options.tlsDir},endpoint=server,verify-peer=on`,
        '--tls-creds', 'ferry-tls',
        '--format', options.format,
        '--cache', 'writethrough',
        '--persistent',
        // A primary that reconnects after a cut may find its old connection not yet closed here.
        '--shared', '2',
        '--bind', options.address,
        '--port', String(port),
        '--export-name', options.exportName,
        options.file,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr = (stderr + chunk).slice(-2000)));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const failed = new Promise<never>((_, reject) =>
      child.once('exit', (code, signal) => reject(new ReplicaExportError(`qemu-nbd for ${options.file} exited (code ${code}, signal ${signal}): ${stderr.trim() || 'no error output'}`))),
    );
    failed.catch(() => undefined);
    const deadline = Date.now() + START_TIMEOUT_MS;
    try {
      for (;;) {
        const up = await Promise.race([accepts(options.address, port), failed]);
        if (up) break;
        if (Date.now() > deadline) throw new ReplicaExportError(`qemu-nbd for ${options.file} did not listen on ${options.address}:${port} within ${START_TIMEOUT_MS / 1000} s`);
        await new Promise((r) => setTimeout(r, 20));
      }
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    await writeFile(options.pidFile, `${child.pid}\n`);
    return new ReplicaExport(child, port, options.pidFile, exited);
  }

  /** SIGTERM lets qemu-nbd flush the image (qcow2 metadata) before it exits. */
  async stop(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
      await this.exited;
      clearTimeout(timer);
    }
    await rm(this.pidFile, { force: true });
  }
}

/** An export left by an agent that died: stopped before a new one opens the same file. */
async function stopStale(pidFile: string): Promise<void> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (pid > 0) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('qemu-nbd')) {
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 250 && (await readFile(`/proc/${pid}/cmdline`, 'utf8').then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 20));
    }
  }
  await rm(pidFile, { force: true });
}
