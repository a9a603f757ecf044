/**
 * Both sides of a migration as QEMU processes on this machine. The source
 * wraps a running VmInstance; the destination launches one paused. A host agent
 * uses the same classes for its own side and speaks to the peer over its API.
 */
import path from 'node:path';
import type { NetworkAttacher } from '../qemu/instance.ts';
import { VmInstance } from '../qemu/instance.ts';
import { memoryDigest } from '../qemu/ram-scan.ts';
import type { Accel, VmSpec } from '../qemu/spec.ts';
import { ACTIVE_STATUSES, toRamProgress, toSummary, type QemuMigrationInfo } from './qmp-migration.ts';
import type { DestinationSide, MigrationCapabilities, PreparedDestination, QemuMigrationSummary, SourceSide } from './sides.ts';
import type { RamProgress } from './types.ts';

function capabilityList(capabilities: MigrationCapabilities) {
  return Object.entries(capabilities).map(([capability, state]) => ({ capability, state }));
}

/** Resolves with a description when the instance's QEMU exits without ferry asking. */
function unexpectedExit(instance: VmInstance): Promise<string> {
  return instance.process.exited.then((exit) =>
    exit.expected ? new Promise<string>(() => undefined) : `exit code ${exit.code}, signal ${exit.signal}; ${instance.process.stderrTail(3) || 'no error output'}`,
  );
}

/** TLS for the migration stream: a directory in QEMU's tls-creds-x509 layout (ca-cert.pem, server-/client-cert.pem, -key.pem). */
export interface StreamTls {
  dir: string;
}

const TLS_OBJECT = 'ferry-migration-tls';

/** Creates (or recreates) the TLS credentials object and points the migration parameters at it. */
async function useTls(instance: VmInstance, tls: StreamTls, endpoint: 'server' | 'client', hostname?: string): Promise<void> {
  const qmp = instance.qmp;
  await qmp.execute('object-del', { id: TLS_OBJECT }).catch(() => undefined);
  await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_OBJECT, dir: tls.dir, endpoint, 'verify-peer': true });
  await qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_OBJECT, ...(hostname ? { 'tls-hostname': hostname } : {}) });
}

export class LocalSource implements SourceSide {
  readonly lost: Promise<string>;

  constructor(readonly instance: VmInstance, private readonly tls?: StreamTls) {
    this.lost = unexpectedExit(instance);
  }

  get spec(): VmSpec {
    return this.instance.spec;
  }

  async checkMigratable(): Promise<string[]> {
    if (!this.instance.process.isRunning) return [`the VM '${this.spec.name}' has no running QEMU; start it first`];
    const { status } = await this.instance.qmp.execute<{ status: string }>('query-status');
    const migration = await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate');
    const problems: string[] = [];
    if (status !== 'running') problems.push(`the VM '${this.spec.name}' is ${status}, not running; only a running VM is live-migrated`);
    if (migration.status && ACTIVE_STATUSES.has(migration.status))
      problems.push(`a migration of '${this.spec.name}' is already in progress (${migration.status}); wait for it or cancel it`);
    return problems;
  }

  async startMigration(destination: PreparedDestination, capabilities: MigrationCapabilities, parameters: Record<string, unknown>): Promise<void> {
    const qmp = this.instance.qmp;
    await qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(capabilities) });
    await qmp.execute('migrate-set-parameters', parameters);
    if (destination.tlsHostname && !this.tls) throw new Error('the destination expects a TLS migration stream but this source has no certificate');
    if (this.tls) await useTls(this.instance, this.tls, 'client', destination.tlsHostname);
    else await qmp.execute('migrate-set-parameters', { 'tls-creds': '' });
    await qmp.execute('migrate', { uri: destination.uri });
  }

  async setParameters(parameters: Record<string, unknown>): Promise<void> {
    await this.instance.qmp.execute('migrate-set-parameters', parameters);
  }

  async startPostcopy(): Promise<void> {
    await this.instance.qmp.execute('migrate-start-postcopy');
  }

  async progress(): Promise<RamProgress> {
    return toRamProgress(await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate'));
  }

  memoryDigest(): Promise<string[]> {
    return memoryDigest(this.instance);
  }

  async summary(): Promise<QemuMigrationSummary> {
    return toSummary(await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate'));
  }

  async cancelAndResume(): Promise<void> {
    const qmp = this.instance.qmp;
    let info = await qmp.execute<QemuMigrationInfo>('query-migrate');
    if (info.status && ACTIVE_STATUSES.has(info.status)) {
      await qmp.execute('migrate_cancel');
      const deadline = Date.now() + 30_000;
      while (info.status && ACTIVE_STATUSES.has(info.status)) {
        if (Date.now() > deadline) throw new Error(`the source migration is still ${info.status} 30 s after migrate_cancel`);
        await new Promise((r) => setTimeout(r, 20));
        info = await qmp.execute<QemuMigrationInfo>('query-migrate');
      }
    }
    // A stream that completed (or failed in its last stage) leaves the source paused in postmigrate.
    const { status } = await qmp.execute<{ status: string }>('query-status');
    if (status !== 'running') await qmp.execute('cont');
  }

  async retire(): Promise<void> {
    await this.instance.stop({ powerdownTimeoutMs: 0 });
  }
}

export interface LocalDestinationOptions {
  spec: VmSpec;
  accel: Accel;
  runDir: string;
  network?: NetworkAttacher;
  /** Listen on TCP at this address (another host); default: a unix socket (same machine). */
  listenAddress?: string;
  /** Require TLS on the stream; the certificate must name `listenAddress`. */
  tls?: StreamTls;
  /** Called once QEMU is started, before it listens: for the agent to write its pid down. */
  onLaunched?: (instance: VmInstance) => Promise<void>;
}

export class LocalDestination implements DestinationSide {
  private launched: VmInstance | undefined;
  private preparing: Promise<unknown> | undefined;
  private completion: Promise<void> | undefined;
  private postcopy: Promise<void> | undefined;
  private aborted = false;
  private completionTimer: NodeJS.Timeout | undefined;
  readonly lost: Promise<string>;
  private reportLost!: (detail: string) => void;

  constructor(private readonly options: LocalDestinationOptions) {
    this.lost = new Promise((resolve) => (this.reportLost = resolve));
  }

  get spec(): VmSpec {
    return this.options.spec;
  }

  /** The running VM once the migration completed. */
  get instance(): VmInstance {
    if (!this.launched) throw new Error('the destination has not been prepared');
    return this.launched;
  }

  prepare(capabilities: MigrationCapabilities): Promise<PreparedDestination> {
    const work = this.doPrepare(capabilities);
    this.preparing = work.catch(() => undefined);
    return work;
  }

  private async doPrepare(capabilities: MigrationCapabilities): Promise<PreparedDestination> {
    const { spec, accel, runDir, network } = this.options;
    const instance = await VmInstance.launch({ spec, accel, runDir, ...(network ? { network } : {}), incoming: true });
    this.launched = instance;
    if (this.aborted) throw new Error('aborted');
    unexpectedExit(instance).then(this.reportLost);
    await this.options.onLaunched?.(instance);
    const qmp = instance.qmp;
    await qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(capabilities) });
    const address = this.options.listenAddress;
    if (this.options.tls) await useTls(instance, this.options.tls, 'server');
    // Listen for the end of the incoming stream before starting it, so the event cannot be missed.
    this.postcopy = new Promise<void>((resolve) => {
      const onEvent = (e: { event: string; data: Record<string, unknown> }) => {
        if (e.event === 'MIGRATION' && e.data['status'] === 'postcopy-active') {
          qmp.off('event', onEvent);
          resolve();
        }
      };
      qmp.on('event', onEvent);
    });
    this.completion = new Promise<void>((resolve, reject) => {
      const onEvent = (e: { event: string; data: Record<string, unknown> }) => {
        if (e.event !== 'MIGRATION') return;
        if (e.data['status'] === 'completed') resolve();
        else if (e.data['status'] === 'failed') reject(new Error('the destination failed to load the incoming state (see its QEMU log)'));
        else return;
        qmp.off('event', onEvent);
      };
      qmp.on('event', onEvent);
    });
    this.completion.catch(() => undefined);
    await qmp.execute('migrate-incoming', { uri: address ? `tcp:${address}:0` : `unix:${path.join(instance.dir, 'migrate.sock')}` });
    const uri = address ? `tcp:${address}:${await this.listeningPort()}` : `unix:${path.join(instance.dir, 'migrate.sock')}`;
    return { uri, ...(this.options.tls && address ? { tlsHostname: address } : {}) };
  }

  /** The port QEMU picked for `tcp:ADDRESS:0`. */
  private async listeningPort(): Promise<number> {
    const info = await this.instance.qmp.execute<{ 'socket-address'?: { type: string; port?: string }[] }>('query-migrate');
    const port = info['socket-address']?.find((a) => a.type === 'inet')?.port;
    if (!port) throw new Error('the destination QEMU did not report its migration port');
    return Number(port);
  }

  async incomingComplete(timeoutMs: number): Promise<void> {
    if (!this.completion) throw new Error('the destination has not been prepared');
    const timeout = new Promise<never>((_, reject) => {
      this.completionTimer = setTimeout(() => reject(new Error(`the destination did not finish loading within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([this.completion, timeout]);
    } finally {
      clearTimeout(this.completionTimer);
    }
  }

  /** Resolves when a post-copy switch reached the destination (it then runs as soon as it is told to). */
  postcopyReady(): Promise<void> {
    if (!this.postcopy) throw new Error('the destination has not been prepared');
    return this.postcopy;
  }

  memoryDigest(): Promise<string[]> {
    return memoryDigest(this.instance);
  }

  async resume(): Promise<void> {
    const qmp = this.instance.qmp;
    await qmp.execute('cont');
    // Tell the switches where the guest's MACs are now, at once and a few times more.
    await qmp.execute('announce-self', { initial: 0, max: 100, rounds: 3, step: 50 });
  }

  async isRunning(): Promise<boolean> {
    return (await this.instance.qmp.execute<{ status: string }>('query-status')).status === 'running';
  }

  async finish(): Promise<void> {
    const { status } = await this.instance.qmp.execute<{ status: string }>('query-status');
    if (status !== 'running') throw new Error(`the destination guest is ${status} after switchover, not running`);
  }

  async abort(): Promise<void> {
    this.aborted = true;
    clearTimeout(this.completionTimer); // nobody waits for the stream any more
    await this.preparing;
    await this.launched?.destroy();
  }
}
