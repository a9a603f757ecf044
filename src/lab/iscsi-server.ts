/**
 * An iSCSI target for the lab and the tests: tgt (user-space target) inside a
 * network namespace of ours, one target with a few LUNs backed by sparse
 * files. Its management socket gets a port of its own, so it never meets a
 * host's own tgtd.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { closeSync, existsSync, openSync } from 'node:fs';
import { killInNetns } from '../net/netns.ts';
import { run } from '../util/exec.ts';

export interface IscsiServerOptions {
  netns: string;
  dir: string;
  /** Address the portal listens on. */
  address: string;
  target: string;
  luns: number;
  lunMiB: number;
  /** tgtd's management channel (socket /var/run/tgtd/socket.N). */
  controlPort: number;
  /** The only initiator addresses let in (the hosts; not the guests on the same network). Default: any. */
  initiators?: string[];
}

export const TGT_PACKAGES = ['tgt', 'libiscsi-bin'];

export class IscsiServer {
  private constructor(readonly options: IscsiServerOptions) {}

  get portal(): string {
    return `${this.options.address}:3260`;
  }

  /**
   * A management port no tgtd uses: tgtd's socket and lock live machine-wide in /var/run/tgtd,
   * so a port whose socket exists (a host's own tgtd, another lab) is skipped.
   */
  static async freeControlPort(preferred: number): Promise<number> {
    for (let port = preferred; port < preferred + 200; port++) {
      if (!existsSync(`/var/run/tgtd/socket.${port}`) && !existsSync(`/var/run/tgtd/socket.${port}.lock`)) return port;
    }
    throw new Error(`no free tgtd management port in ${preferred}-${preferred + 199} (/var/run/tgtd is full of sockets)`);
  }

  static async start(options: IscsiServerOptions): Promise<IscsiServer> {
    await run('sh', ['-c', 'command -v tgtd && command -v tgtadm']).catch(() => {
      throw new Error(`tgt is not installed; install the Debian packages ${TGT_PACKAGES.join(' ')} (scripts/setup.sh does)`);
    });
    await mkdir(options.dir, { recursive: true });
    // tgtd's own messages (a refused login, a LUN it cannot open) go to tgtd.log beside its LUNs.
    const logFd = openSync(path.join(options.dir, 'tgtd.log'), 'a');
    const child = spawn('ip', ['netns', 'exec', options.netns, 'tgtd', '-f', '-C', String(options.controlPort), '--iscsi', `portal=${options.address}:3260`], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
    });
    closeSync(logFd);
    child.unref();
    await writeFile(path.join(options.dir, 'tgtd.json'), JSON.stringify({ pid: child.pid, controlPort: options.controlPort, netns: options.netns }));
    const server = new IscsiServer(options);
    await server.admin(['--mode', 'target', '--op', 'new', '--tid', '1', '--targetname', options.target], 10_000);
    for (let lun = 1; lun <= options.luns; lun++) {
      const file = path.join(options.dir, `lun${lun}.img`);
      await writeFile(file, '');
      await truncate(file, options.lunMiB * 2 ** 20);
      await server.admin(['--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', String(lun), '-b', file]);
    }
    for (const initiator of options.initiators ?? ['ALL']) await server.admin(['--mode', 'target', '--op', 'bind', '--tid', '1', '-I', initiator]);
    return server;
  }

  /** tgtadm against this tgtd; retried while the daemon is still starting. */
  private async admin(args: string[], waitMs = 0): Promise<void> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        await run('ip', ['netns', 'exec', this.options.netns, 'tgtadm', '-C', String(this.options.controlPort), '--lld', 'iscsi', ...args]);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`tgtadm ${args.join(' ')}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** Stops our tgtd (it ignores SIGTERM while targets exist, so SIGKILL) and removes its management socket. */
  static async stop(dir: string, netns: string): Promise<void> {
    const info = JSON.parse(await readFile(path.join(dir, 'tgtd.json'), 'utf8').catch(() => '{}')) as { pid?: number; controlPort?: number };
    if (!info.pid) return;
    await killInNetns(netns, [info.pid]);
    // The socket is ours: start() chose a port no other tgtd had.
    if (info.controlPort !== undefined) {
      for (const suffix of ['', '.lock']) await run('rm', ['-f', `/var/run/tgtd/socket.${info.controlPort}${suffix}`]).catch(() => undefined);
    }
  }
}
