/**
 * A small Ceph cluster for the lab and the tests: one monitor and three
 * memstore OSDs inside a network namespace of ours, cephx on, a private
 * configuration (every path under its directory, nothing in /etc/ceph or
 * /var/log/ceph), and an `rbd` pool. Clients use its ceph.conf and keyring.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { killInNetns } from '../net/netns.ts';
import { run } from '../util/exec.ts';

export interface CephClusterOptions {
  netns: string;
  dir: string;
  /** The monitor's address (the clients' way in). */
  address: string;
  osds?: number;
  /** Memory each memstore OSD may fill. */
  osdMiB?: number;
}

export const CEPH_PACKAGES = ['ceph-mon', 'ceph-osd', 'ceph-common'];

export class CephCluster {
  private constructor(
    readonly dir: string,
    readonly conf: string,
    readonly netns: string,
  ) {}

  /** The pool the cluster offers for RBD images. */
  readonly pool = 'rbd';

  static async start(options: CephClusterOptions): Promise<CephCluster> {
    await run('sh', ['-c', 'command -v ceph-mon && command -v ceph-osd && command -v rbd']).catch(() => {
      throw new Error(`Ceph is not installed; install the Debian packages ${CEPH_PACKAGES.join(' ')} (scripts/setup.sh does)`);
    });
    const { dir, netns, address } = options;
    const osds = options.osds ?? 3;
    const fsid = randomUUID();
    for (const d of ['run', 'log', 'mon/ceph-a', 'osd']) await mkdir(path.join(dir, d), { recursive: true });
    const conf = path.join(dir, 'ceph.conf');
    const adminKeyring = path.join(dir, 'ceph.client.admin.keyring');
    await writeFile(
      conf,
      [
        '[global]',
        `fsid = ${fsid}`,
        `mon host = v1:${address}:6789`,
        'auth cluster required = cephx',
        'auth service required = cephx',
        'auth client required = cephx',
        `keyring = ${adminKeyring}`,
        `run dir = ${path.join(dir, 'run')}`,
        `mon cluster log file = ${path.join(dir, 'log')}/cluster.log`,
        'osd objectstore = memstore',
        `memstore device bytes = ${(options.osdMiB ?? 1024) * 2 ** 20}`,
        // All OSDs live on one host: replicas go to different OSDs, not hosts.
        'osd crush chooseleaf type = 0',
        'osd pool default size = 2',
        'osd pool default min size = 1',
        'mon allow pool delete = true',
        'ms bind ipv4 = true',
        'ms bind ipv6 = false',
        // Clients (QEMU, rbd) on every host: one log, no admin sockets to collide on.
        '[client]',
        `log file = ${path.join(dir, 'log')}/client.log`,
        'admin socket =',
        '[mon]',
        `admin socket = ${path.join(dir, 'run')}/$cluster-$name.asok`,
        `pid file = ${path.join(dir, 'run')}/$cluster-$name.pid`,
        `log file = ${path.join(dir, 'log')}/$cluster-$name.log`,
        '[mon.a]',
        `mon data = ${path.join(dir, 'mon', 'ceph-a')}`,
        `public addr = ${address}`,
        '[osd]',
        `admin socket = ${path.join(dir, 'run')}/$cluster-$name.asok`,
        `pid file = ${path.join(dir, 'run')}/$cluster-$name.pid`,
        `log file = ${path.join(dir, 'log')}/$cluster-$name.log`,
        `osd data = ${path.join(dir, 'osd')}/$cluster-$id`,
        `keyring = ${path.join(dir, 'osd')}/$cluster-$id/keyring`,
        '',
      ].join('\n'),
    );
    const monKeyring = path.join(dir, 'mon.keyring');
    await run('ceph-authtool', ['--create-keyring', monKeyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', ['--create-keyring', adminKeyring, '--gen-key', '-n', 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    await run('ceph-authtool', [monKeyring, '--import-keyring', adminKeyring]);
    const monmap = path.join(dir, 'monmap');
    await run('monmaptool', ['--create', '--addv', 'a', `[v1:${address}:6789]`, '--fsid', fsid, monmap]);
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', monKeyring]);
    const cluster = new CephCluster(dir, conf, netns);
    await cluster.daemon(['ceph-mon', '-c', conf, '-f', '-i', 'a'], 'mon.a');
    await cluster.ceph(['-s'], 30_000);
    for (let i = 0; i < osds; i++) {
      const uuid = randomUUID();
      const id = (await cluster.ceph(['osd', 'new', uuid])).trim();
      const data = path.join(dir, 'osd', `ceph-${id}`);
      await mkdir(data, { recursive: true });
      // cephx: the OSD's key exists in the monitor before the OSD is made.
      await cluster.ceph(['auth', 'get-or-create', `osd.${id}`, 'mon', 'allow profile osd', 'osd', 'allow *', 'mgr', 'allow profile osd', '-o', path.join(data, 'keyring')]);
      await run('ip', ['netns', 'exec', netns, 'ceph-osd', '-c', conf, '-i', id, '--mkfs', '--osd-uuid', uuid], { timeoutMs: 60_000 });
      await cluster.daemon(['ceph-osd', '-c', conf, '-f', '-i', id], `osd.${id}`);
    }
    await cluster.ceph(['osd', 'pool', 'create', cluster.pool, '32']);
    await cluster.waitFor(async () => /"num_up_osds":\s*(\d+)/.exec(await cluster.ceph(['osd', 'stat', '--format', 'json']))?.[1] === String(osds), 60_000, `${osds} OSDs up`);
    await run('ip', ['netns', 'exec', netns, 'rbd', '-c', conf, 'pool', 'init', cluster.pool], { timeoutMs: 60_000 });
    return cluster;
  }

  /** The admin keyring (clients on the hosts use it through ceph.conf). */
  get keyring(): string {
    return path.join(this.dir, 'ceph.client.admin.keyring');
  }

  async ceph(args: string[], timeoutMs = 30_000): Promise<string> {
    return run('ip', ['netns', 'exec', this.netns, 'ceph', '-c', this.conf, '--connect-timeout', '10', ...args], { timeoutMs });
  }

  private async daemon(argv: string[], name: string): Promise<void> {
    const child = spawn('ip', ['netns', 'exec', this.netns, ...argv], { detached: true, stdio: 'ignore' });
    child.unref();
    const pids = path.join(this.dir, 'pids.json');
    const known = JSON.parse(await readFile(pids, 'utf8').catch(() => '{}')) as Record<string, number>;
    known[name] = child.pid!;
    await writeFile(pids, JSON.stringify(known));
  }

  private async waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await check().catch(() => false)) return;
      if (Date.now() > deadline) throw new Error(`Ceph in ${this.netns}: not ${what} within ${timeoutMs / 1000} s (logs in ${path.join(this.dir, 'log')})`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** Kills the monitor and the OSDs still running in `netns` (memstore: their data goes with them). */
  static async stop(dir: string, netns: string): Promise<void> {
    const known = JSON.parse(await readFile(path.join(dir, 'pids.json'), 'utf8').catch(() => '{}')) as Record<string, number>;
    await killInNetns(netns, Object.values(known));
  }
}
