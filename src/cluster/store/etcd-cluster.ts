/**
 * Runs a local etcd cluster (Debian's etcd-server) for the lab and the tests:
 * N members, each with its own data directory and ports, optionally each in a
 * network namespace of the lab.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { EtcdStore } from './etcd.ts';
import { run } from '../../util/exec.ts';

export interface EtcdMemberSpec {
  name: string;
  /** The member's address (loopback, or a lab address inside `netns`). */
  host: string;
  clientPort: number;
  peerPort: number;
  netns?: string;
  /** Serve clients and peers over TLS with this certificate directory (cert.pem, key.pem, ca-cert.pem), and require client certificates. */
  tlsDir?: string;
}

export class EtcdMember {
  private child: ChildProcess | undefined;
  private log = '';

  constructor(readonly spec: EtcdMemberSpec, private readonly dataDir: string, private readonly initialCluster: string, private readonly token: string) {}

  get clientUrl(): string {
    return `${this.spec.tlsDir ? 'https' : 'http'}://${this.spec.host}:${this.spec.clientPort}`;
  }

  get peerUrl(): string {
    return `${this.spec.tlsDir ? 'https' : 'http'}://${this.spec.host}:${this.spec.peerPort}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts the member; with logFile it runs detached (outlives this process, as in the lab). */
  start(logFile?: number): void {
    const s = this.spec;
    const args = [
      '--name', s.name,
      '--data-dir', this.dataDir,
      '--listen-client-urls', this.clientUrl,
      '--advertise-client-urls', this.clientUrl,
      '--listen-peer-urls', this.peerUrl,
      '--initial-advertise-peer-urls', this.peerUrl,
      '--initial-cluster', this.initialCluster,
      '--initial-cluster-token', this.token,
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', '50',
      '--election-timeout', '500',
      '--logger', 'zap',
      '--log-outputs', 'stderr',
    ];
    if (s.tlsDir) {
      const f = (name: string) => path.join(s.tlsDir!, name);
      args.push(
        '--cert-file', f('cert.pem'), '--key-file', f('key.pem'), '--trusted-ca-file', f('ca-cert.pem'), '--client-cert-auth',
        '--peer-cert-file', f('cert.pem'), '--peer-key-file', f('key.pem'), '--peer-trusted-ca-file', f('ca-cert.pem'), '--peer-client-cert-auth',
      );
    }
    const [cmd, argv] = s.netns ? ['ip', ['netns', 'exec', s.netns, 'etcd', ...args]] : ['etcd', args];
    if (logFile !== undefined) {
      this.child = spawn(cmd, argv, { stdio: ['ignore', logFile, logFile], detached: true });
      this.child.unref();
      return;
    }
    this.child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr?.setEncoding('utf8');
    this.child.stderr?.on('data', (c: string) => (this.log = (this.log + c).slice(-8000)));
    this.child.on('error', (err) => (this.log += `\ncannot run etcd: ${err.message} (install the Debian package etcd-server)`));
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  logTail(): string {
    return this.log.trim().split('\n').slice(-5).join('\n');
  }
}

export class EtcdCluster {
  private constructor(readonly members: EtcdMember[]) {}

  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /** Starts all members and waits until the cluster answers a write. */
  /**
   * logFile: run the members detached, logging there. Members in a network namespace are
   * checked from inside it (with etcdctl): their addresses are not reachable from here.
   */
  static async start(specs: EtcdMemberSpec[], dataRoot: string, timeoutMs = 30_000, logFile?: number): Promise<EtcdCluster> {
    const members: EtcdMember[] = [];
    for (const [i, s] of specs.entries()) {
      await mkdir(path.join(dataRoot, s.name), { recursive: true, mode: 0o700 });
      members.push(EtcdCluster.memberOf(specs, dataRoot, i));
    }
    members.forEach((m) => m.start(logFile));
    const cluster = new EtcdCluster(members);
    const netns = specs[0]?.netns;
    const store = netns ? undefined : new EtcdStore(cluster.endpoints, 1000);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const tlsDir = specs[0]?.tlsDir;
        const tlsArgs = tlsDir ? [`--cacert=${path.join(tlsDir, 'ca-cert.pem')}`, `--cert=${path.join(tlsDir, 'cert.pem')}`, `--key=${path.join(tlsDir, 'key.pem')}`] : [];
        if (netns) await run('ip', ['netns', 'exec', netns, 'etcdctl', `--endpoints=${cluster.endpoints.join(',')}`, ...tlsArgs, '--command-timeout=1s', 'put', 'ferry/health', 'ok']);
        else await store!.put('ferry/health', String(Date.now()));
        return cluster;
      } catch (err) {
        if (Date.now() > deadline) {
          await cluster.stop();
          throw new Error(`etcd cluster did not become ready within ${timeoutMs / 1000} s: ${(err as Error).message}\n${members.map((m) => m.logTail()).join('\n')}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** Member `index` of a cluster started from `specs` in `dataRoot`, not running: to start one again after it died. */
  static memberOf(specs: EtcdMemberSpec[], dataRoot: string, index: number): EtcdMember {
    const initialCluster = specs.map((s) => `${s.name}=${s.tlsDir ? 'https' : 'http'}://${s.host}:${s.peerPort}`).join(',');
    return new EtcdMember(specs[index]!, path.join(dataRoot, specs[index]!.name), initialCluster, `ferry-${path.basename(dataRoot)}`);
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop()));
  }
}
