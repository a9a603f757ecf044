/**
 * The peer's half of replicated volumes: one `qemu-storage-daemon` per host
 * serves this host's replicas to the hosts that run their VMs, over NBD with
 * mutual TLS (the cluster's certificates; a client without one is refused,
 * and so is one whose certificate is not a host's: the admin's, say).
 * The daemon and its NBD server run all the time; serving or withdrawing a
 * replica is two QMP commands, which keeps the handover of a migration short
 * (a `qemu-nbd` started per replica took 100–670 ms to listen on these
 * machines). Writes go through to the file before they are acknowledged
 * (`writethrough`): the primary counts a write as done only once the peer has
 * it, as DRBD's protocol C does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { VolumeFormat } from '../qemu/spec.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { QmpCommandError } from '../qemu/errors.ts';
import { accepts, freePort } from '../util/net.ts';
import { StorageError } from './errors.ts';

export class ReplicaServerError extends StorageError {
  override name = 'ReplicaServerError';
}

export interface ReplicaServerOptions {
  /** This host's address on the hosts' network. */
  address: string;
  /** A directory in QEMU's tls-creds-x509 layout (ca-cert.pem, server-cert.pem, server-key.pem). */
  tlsDir: string;
  /** Private directory for the daemon's QMP socket, pid and port files (kept across agent restarts). */
  dir: string;
  /** The certificate identities (distinguished names) that may connect: the cluster's hosts. */
  allowed: string[];
}

const AUTHZ_OBJECT = 'ferry-authz';

const START_TIMEOUT_MS = 10_000;
/** A withdrawn export that does not go within this long means a daemon in trouble: the caller hears of it. */
const WITHDRAW_TIMEOUT_MS = 10_000;
/** Node names are at most 31 characters of [A-Za-z0-9._-]; export names are free text. */
const nodeName = (exportName: string) => `rep${createHash('sha256').update(exportName).digest('hex').slice(0, 16)}`;
/** Export ids have no length limit: the export name, hex-encoded, so that it can be read back. */
const exportId = (exportName: string) => `x${Buffer.from(exportName).toString('hex')}`;

export class ReplicaServer {
  private constructor(
    private readonly qmp: QmpClient,
    readonly port: number,
    private readonly pid: number,
    private readonly child: ChildProcess | undefined,
    private readonly dir: string,
  ) {}

  get running(): boolean {
    if (this.child) return this.child.exitCode === null && this.child.signalCode === null;
    return existsSync(`/proc/${this.pid}`);
  }

  /**
   * The daemon an earlier run of this agent left (adopted through its QMP socket), or a new one.
   * A new one listens on the port used before, so that primaries reconnect to it.
   */
  static async start(options: ReplicaServerOptions): Promise<ReplicaServer> {
    const adopted = await ReplicaServer.adopt(options).catch(() => undefined);
    if (adopted) return adopted;
    await stopStale(options.dir);
    const portFile = path.join(options.dir, 'port');
    const earlier = Number((await readFile(portFile, 'utf8').catch(() => '')).trim()) || undefined;
    for (let attempt = 1; ; attempt++) {
      const port = earlier && attempt === 1 ? earlier : await freePort(options.address);
      try {
        const server = await ReplicaServer.spawnOn(options, port);
        await writeFile(portFile, `${port}\n`);
        return server;
      } catch (err) {
        if (attempt >= 4 || !/in use|bind|listen/i.test((err as Error).message)) throw err;
      }
    }
  }

  private static async adopt(options: ReplicaServerOptions): Promise<ReplicaServer | undefined> {
    const pid = Number((await readFile(path.join(options.dir, 'pid'), 'utf8').catch(() => '')).trim());
    const port = Number((await readFile(path.join(options.dir, 'port'), 'utf8').catch(() => '')).trim());
    if (!pid || !port || !(await isDaemon(pid))) return undefined;
    const qmp = await QmpClient.connect(path.join(options.dir, 'qmp.sock'), { connectTimeoutMs: 2000 });
    const server = new ReplicaServer(qmp, port, pid, undefined, options.dir);
    try {
      await server.allow(options.allowed);
    } catch (err) {
      // A daemon without the authorization object (started by an older ferry) lets any certificate of the CA in.
      qmp.close();
      throw err;
    }
    return server;
  }

  private static async spawnOn(options: ReplicaServerOptions, port: number): Promise<ReplicaServer> {
    const socket = path.join(options.dir, 'qmp.sock');
    await rm(socket, { force: true });
    // Its messages (refused clients among them) go to a file: the daemon outlives the agent that started it.
    const logFile = path.join(options.dir, 'daemon.log');
    const log = await open(logFile, 'a');
    const child = spawn(
      'qemu-storage-daemon',
      [
        '--chardev', `socket,id=qmp,path=${socket},server=on,wait=off`,
        '--monitor', 'chardev=qmp',
        '--object', `tls-creds-x509,id=ferry-tls,dir=${options.tlsDir},endpoint=server,verify-peer=on`,
        '--object', JSON.stringify({ 'qom-type': 'authz-list', id: AUTHZ_OBJECT, policy: 'deny', rules: authzRules(options.allowed) }),
        '--nbd-server', `addr.type=inet,addr.host=${options.address},addr.port=${port},tls-creds=ferry-tls,tls-authz=${AUTHZ_OBJECT}`,
      ],
      { stdio: ['ignore', 'ignore', log.fd] },
    );
    await log.close();
    // Written at once: an agent that dies before the daemon listens leaves no daemon it cannot find.
    await writeFile(path.join(options.dir, 'pid'), `${child.pid}\n`);
    const failed = new Promise<never>((_, reject) =>
      child.once('exit', async (code, signal) => {
        const said = (await readFile(logFile, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join('; ');
        reject(new ReplicaServerError(`qemu-storage-daemon exited (code ${code}, signal ${signal}): ${said || 'no error output'} (${logFile})`));
      }),
    );
    failed.catch(() => undefined);
    const deadline = Date.now() + START_TIMEOUT_MS;
    try {
      for (;;) {
        const up = existsSync(socket) && (await Promise.race([accepts(options.address, port), failed]));
        if (up) break;
        if (Date.now() > deadline) throw new ReplicaServerError(`qemu-storage-daemon did not listen on ${options.address}:${port} within ${START_TIMEOUT_MS / 1000} s`);
        await new Promise((r) => setTimeout(r, 10));
      }
      const qmp = await Promise.race([QmpClient.connect(socket, { connectTimeoutMs: 2000 }), failed]);
      return new ReplicaServer(qmp, port, child.pid!, child, options.dir);
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
  }

  /** Lets exactly these certificate identities connect from now on (connections made stay). */
  async allow(identities: string[]): Promise<void> {
    await this.qmp.execute('qom-set', { path: `/objects/${AUTHZ_OBJECT}`, property: 'rules', value: authzRules(identities) });
  }

  /** The export names being served now. */
  async served(): Promise<string[]> {
    const exports = await this.qmp.execute<{ id: string }[]>('query-block-exports');
    return exports.filter((e) => /^x[0-9a-f]+$/.test(e.id)).map((e) => Buffer.from(e.id.slice(1), 'hex').toString());
  }

  /** Serves a replica file under `exportName` (writable, each write on the file before it is acknowledged). */
  async serve(exportName: string, file: string, format: VolumeFormat): Promise<void> {
    if ((await this.served()).includes(exportName)) return;
    const node = nodeName(exportName);
    await this.qmp.execute('blockdev-add', {
      driver: format,
      'node-name': node,
      file: { driver: 'file', 'node-name': `${node}-file`, filename: file },
    });
    try {
      await this.qmp.execute('block-export-add', { type: 'nbd', id: exportId(exportName), 'node-name': node, name: exportName, writable: true, writethrough: true });
    } catch (err) {
      await this.qmp.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
      throw err;
    }
  }

  /** Stops serving a replica: clients are cut off, the image is flushed and closed (its lock released). */
  async withdraw(exportName: string): Promise<void> {
    const node = nodeName(exportName);
    const id = exportId(exportName);
    const exports = await this.qmp.execute<{ id: string }[]>('query-block-exports');
    if (exports.some((e) => e.id === id)) {
      const deleted = this.qmp.waitForEvent('BLOCK_EXPORT_DELETED', WITHDRAW_TIMEOUT_MS, (e) => e.data['id'] === id);
      deleted.catch(() => undefined);
      await this.qmp.execute('block-export-del', { id, mode: 'hard' });
      await deleted;
    }
    await this.qmp.execute('blockdev-del', { 'node-name': node }).catch((err) => {
      if (!(err instanceof QmpCommandError && /not found|Cannot find/i.test(err.description))) throw err;
    });
  }

  /** Drops the monitor connection (a daemon that died). */
  close(): void {
    this.qmp.close();
  }

  async stop(): Promise<void> {
    this.qmp.close();
    if (!this.running) return;
    process.kill(this.pid, 'SIGTERM');
    for (let i = 0; i < 250 && this.running; i++) await new Promise((r) => setTimeout(r, 20));
    if (this.running) process.kill(this.pid, 'SIGKILL');
    await rm(path.join(this.dir, 'pid'), { force: true });
  }
}

function authzRules(identities: string[]): { match: string; policy: 'allow' }[] {
  return identities.map((match) => ({ match, policy: 'allow' }));
}

async function isDaemon(pid: number): Promise<boolean> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).startsWith('qemu-storage-daemon');
}

/** A daemon that no longer answers on its socket: stopped before a new one takes its port. */
async function stopStale(dir: string): Promise<void> {
  const pid = Number((await readFile(path.join(dir, 'pid'), 'utf8').catch(() => '')).trim());
  if (pid > 0 && (await isDaemon(pid))) {
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 250 && (await isDaemon(pid)); i++) await new Promise((r) => setTimeout(r, 20));
  }
  await rm(path.join(dir, 'pid'), { force: true });
}
