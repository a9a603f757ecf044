/**
 * An NFS server for the lab and the tests: NFS-Ganesha (VFS backend, NFSv3)
 * with its portmapper, both inside a network namespace of ours, exporting one
 * directory. QEMU's libnfs client needs the portmapper on port 111, so rpcbind
 * runs there too, with a private /run (its socket and lock files) so that it
 * never meets a host's own rpcbind.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { killInNetns } from '../net/netns.ts';
import { run } from '../util/exec.ts';

export interface NfsServerOptions {
  netns: string;
  /** Working directory: the export, Ganesha's config, log and recovery state. */
  dir: string;
  /** The address clients use (for messages and the pool's configuration). */
  address: string;
  /** The only client addresses served (the hosts; not the guests on the same network). Default: any. */
  clients?: string[];
}

export const GANESHA_PACKAGES = ['nfs-ganesha', 'nfs-ganesha-vfs', 'rpcbind'];

export class NfsServer {
  private constructor(
    readonly options: NfsServerOptions,
    readonly exportPath: string,
  ) {}

  static async start(options: NfsServerOptions): Promise<NfsServer> {
    for (const bin of ['ganesha.nfsd', 'rpcbind']) {
      await run('sh', ['-c', `command -v ${bin}`]).catch(() => {
        throw new Error(`${bin} is not installed; install the Debian packages ${GANESHA_PACKAGES.join(' ')} (scripts/setup.sh does)`);
      });
    }
    const exportPath = path.join(options.dir, 'export');
    await mkdir(exportPath, { recursive: true });
    await mkdir(path.join(options.dir, 'recovery'), { recursive: true });
    const config = path.join(options.dir, 'ganesha.conf');
    await writeFile(
      config,
      [
        // NFSv3 only (what libnfs speaks by default); no grace period, no lock manager: a lab server.
        'NFS_CORE_PARAM { Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; }',
        `NFSv4 { Graceless = true; RecoveryRoot = ${path.join(options.dir, 'recovery')}; }`,
        'EXPORT {',
        `  Export_Id = 1; Path = ${exportPath}; Pseudo = /export; Squash = No_Root_Squash;`,
        `  Access_Type = ${options.clients ? 'None' : 'RW'};`,
        '  Transports = TCP; Protocols = 3; SecType = sys;',
        '  FSAL { Name = VFS; }',
        ...(options.clients ? [`  CLIENT { Clients = ${options.clients.join(', ')}; Access_Type = RW; }`] : []),
        '}',
        'LOG { Default_Log_Level = WARN; }',
        '',
      ].join('\n'),
    );
    const log = path.join(options.dir, 'ganesha.log');
    const script =
      `mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind && { rpcbind -f & echo $! > ${path.join(options.dir, 'rpcbind.pid')}; } && sleep 0.2 && ` +
      `exec ganesha.nfsd -F -f ${config} -L ${log} -p ${path.join(options.dir, 'ganesha.pid')}`;
    const child = spawn('ip', ['netns', 'exec', options.netns, 'unshare', '-m', 'sh', '-c', script], { detached: true, stdio: 'ignore' });
    child.unref();
    const server = new NfsServer(options, exportPath);
    await server.waitReady(20_000);
    return server;
  }

  /** Ready when its export can be listed through the portmapper, as a client would. */
  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await run('ip', ['netns', 'exec', this.options.netns, 'rpcinfo', '-p', '127.0.0.1'], { timeoutMs: 3000 }).then((out) => {
          if (!/\b100005\b/.test(out)) throw new Error('mountd not registered yet');
        });
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          const log = await readFile(path.join(this.options.dir, 'ganesha.log'), 'utf8').catch(() => '');
          throw new Error(`the NFS server in ${this.options.netns} did not come up within ${timeoutMs / 1000} s (${(err as Error).message}); ganesha.log: ${log.split('\n').slice(-5).join(' | ')}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** Stops Ganesha and its rpcbind, by the pids they left in `dir`, if they still run in `netns`. */
  static async stop(dir: string, netns: string): Promise<void> {
    const pids: number[] = [];
    for (const file of ['ganesha.pid', 'rpcbind.pid']) {
      const pid = Number((await readFile(path.join(dir, file), 'utf8').catch(() => '')).trim());
      if (pid) pids.push(pid);
    }
    await killInNetns(netns, pids);
  }
}
