/**
 * Both sides of a migration as QEMU processes on this machine. The source
 * wraps a running VmInstance; the destination launches one paused. A host agent
 * uses the same classes for its own side and speaks to the peer over its API.
 */
import { CancelPendingError } from './errors.ts';
import path from 'node:path';
import type { NetworkAttacher } from '../qemu/instance.ts';
import { VmInstance } from '../qemu/instance.ts';
import { eventTime, type QmpEvent } from '../qemu/qmp.ts';
import { memoryDigest } from '../qemu/ram-scan.ts';
import type { Accel, VmSpec } from '../qemu/spec.ts';
import { localQemuBuild, type QemuBuild } from '../qemu/host-probe.ts';
import type { QemuVersion } from '../qemu/version.ts';
import { ACTIVE_STATUSES, toRamProgress, toSummary, type QemuMigrationInfo } from './qmp-migration.ts';
import type {
  DestinationSide,
  DestinationTimes,
  DiskNeed,
  DiskProgress,
  MigrationCapabilities,
  NbdTargets,
  PreparedDestination,
  QemuMigrationSummary,
  ReplicaHandover,
  SourceSide,
} from './sides.ts';
import { completeMirrors, dropTargets, mirrorProgress, removeAllMirrors, startMirrors } from './disk-mirror.ts';
import { startNbdExports, stopNbdExports } from './nbd-export.ts';
import { replicationStatus } from '../storage/replication.ts';
import { replicatedDisks } from '../storage/replicated.ts';
import type { StorageCatalog } from '../storage/registry.ts';
import { volumeOf, type IncomingDisk } from '../storage/types.ts';
import { checkIncomingStorage } from './storage-check.ts';
import type { RamProgress } from './types.ts';

/** How long migrate_cancel may take before the migration's sockets are yanked. */
const CANCEL_BEFORE_YANK_MS = 3000;
/** How long a rollback waits for QEMU to end its stream before it finishes in the background. */
const CANCEL_WAIT_MS = 30_000;

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
  /**
   * On the destination: the certificate identity (distinguished name) that alone may connect to
   * its migration stream and NBD exports — the source host's. Without it any certificate of the
   * cluster CA would do.
   */
  peer?: string;
}

const TLS_OBJECT = 'ferry-migration-tls';
const AUTHZ_OBJECT = 'ferry-migration-authz';

/** Creates (or recreates) the TLS credentials object that the migration stream and the NBD connections use. */
async function addTlsObject(instance: VmInstance, tls: StreamTls, endpoint: 'server' | 'client'): Promise<void> {
  const qmp = instance.qmp;
  await qmp.execute('object-del', { id: TLS_OBJECT }).catch(() => undefined);
  await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_OBJECT, dir: tls.dir, endpoint, 'verify-peer': true });
}

/** The authorization object that lets only `tls.peer` in (none: any certificate of the CA). */
async function addAuthzObject(instance: VmInstance, tls: StreamTls): Promise<string | undefined> {
  if (!tls.peer) return undefined;
  await instance.qmp.execute('object-add', { 'qom-type': 'authz-simple', id: AUTHZ_OBJECT, identity: tls.peer });
  return AUTHZ_OBJECT;
}

export interface LocalSourceOptions {
  /** Certificates for a TLS stream (needed when the destination asks for TLS). */
  tls?: StreamTls;
  /** This host's storage pools: needed for a VM with disks. */
  storage?: StorageCatalog;
  /** Where to say that a stale copy could not be removed after the migration. */
  log?: (line: string) => void;
  /** Moves the replication of replicated disks (needed for a VM with such disks). */
  replicas?: ReplicaHandover;
}


export class LocalSource implements SourceSide {
  readonly lost: Promise<string>;
  private readonly tls: StreamTls | undefined;
  /** Disks being mirrored to the destination, from startDiskMirror on. */
  private mirrored: string[] = [];
  /** Disks the destination received a copy of: after switchover this host's copies are stale. */
  private copied: string[] = [];
  private tlsReady = false;

  constructor(readonly instance: VmInstance, private readonly options: LocalSourceOptions = {}) {
    this.lost = unexpectedExit(instance);
    this.tls = options.tls;
  }

  /** Why the mirrors could not be completed at pre-switchover, if that is why the stream ended. */
  private mirrorFailure: string | undefined;

  get spec(): VmSpec {
    return this.instance.spec;
  }

  get accel(): Accel {
    return this.instance.accel;
  }

  async qemuVersion(): Promise<QemuVersion> {
    const { qemu } = await this.instance.qmp.execute<{ qemu: QemuVersion }>('query-version');
    return qemu;
  }

  async checkMigratable(): Promise<string[]> {
    if (!this.instance.process.isRunning) return [`the VM '${this.spec.name}' has no running QEMU; start it first`];
    const { status } = await this.instance.qmp.execute<{ status: string }>('query-status');
    const migration = await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate');
    const problems: string[] = [];
    if (status !== 'running') problems.push(`the VM '${this.spec.name}' is ${status}, not running; only a running VM is live-migrated`);
    if (migration.status && ACTIVE_STATUSES.has(migration.status))
      problems.push(`a migration of '${this.spec.name}' is already in progress (${migration.status}); wait for it or cancel it`);
    if ((this.spec.disks ?? []).length && !this.options.storage) problems.push(`the VM '${this.spec.name}' has disks but this host has no storage configured`);
    if (replicatedDisks(this.spec).length && !this.options.replicas) problems.push(`the VM '${this.spec.name}' has replicated disks but nothing on this host moves their replication`);
    // The destination opens its own replica: it must have every write.
    for (const disk of replicatedDisks(this.spec)) {
      // A guest write in flight shows as a moment of 'resyncing': look again for a second.
      let { state } = await replicationStatus(this.instance.qmp, disk.id);
      for (let i = 0; i < 20 && state === 'resyncing'; i++) {
        await new Promise((r) => setTimeout(r, 50));
        ({ state } = await replicationStatus(this.instance.qmp, disk.id));
      }
      if (state !== 'in-sync')
        problems.push(
          `the replication of ${disk.pool}/${disk.volume} is ${state}: the replica on the other host lacks recent writes; ` +
            `wait until 'ferry volume show ${disk.volume} --pool ${disk.pool}' says in-sync`,
        );
    }
    return problems;
  }

  async diskNeeds(): Promise<DiskNeed[]> {
    const storage = this.options.storage;
    if (!storage) return [];
    return Promise.all(
      (this.spec.disks ?? []).map(async (disk) => ({ id: disk.id, allocatedBytes: (await storage.get(disk.pool).usage(volumeOf(disk))).allocatedBytes })),
    );
  }

  private async ensureTls(): Promise<string | undefined> {
    if (!this.tls) return undefined;
    if (!this.tlsReady) await addTlsObject(this.instance, this.tls, 'client');
    this.tlsReady = true;
    return TLS_OBJECT;
  }

  async startDiskMirror(targets: NbdTargets, speedBytesPerSec?: number): Promise<void> {
    if (targets.tlsHostname && !this.tls) throw new Error('the destination expects TLS on its NBD exports but this source has no certificate');
    await removeAllMirrors(this.instance.qmp); // leftovers of an earlier run would clash with the job and node names
    this.mirrored = [...targets.disks];
    this.copied = [...targets.disks];
    await startMirrors(this.instance.qmp, targets, targets.tlsHostname ? await this.ensureTls() : undefined, speedBytesPerSec);
  }

  async diskProgress(): Promise<DiskProgress> {
    // From pre-switchover on the jobs are being completed and then gone: report their last figures.
    if ((this.completing || !this.mirrored.length) && this.lastMirror) return { ...this.lastMirror, ready: true };
    this.lastMirror = await mirrorProgress(this.instance.qmp, this.mirrored);
    return this.lastMirror;
  }

  private lastMirror: DiskProgress | undefined;
  /** Set at pre-switchover: the jobs are being completed, progress polls must not mistake that for a failure. */
  private completing = false;

  async startMigration(destination: PreparedDestination, capabilities: MigrationCapabilities, parameters: Record<string, unknown>): Promise<void> {
    const qmp = this.instance.qmp;
    // With disks mirrored or replicated, QEMU stops at pre-switchover (vCPUs paused, disks still
    // active) for the mirrors to complete and the replication jobs to end in sync.
    const withMirrors = this.mirrored.length > 0 || replicatedDisks(this.spec).length > 0;
    await qmp.execute('migrate-set-capabilities', { capabilities: capabilityList({ ...capabilities, 'pause-before-switchover': withMirrors }) });
    await qmp.execute('migrate-set-parameters', parameters);
    if (destination.tlsHostname && !this.tls) throw new Error('the destination expects a TLS migration stream but this source has no certificate');
    const tlsObject = await this.ensureTls();
    await qmp.execute('migrate-set-parameters', tlsObject ? { 'tls-creds': tlsObject, ...(destination.tlsHostname ? { 'tls-hostname': destination.tlsHostname } : {}) } : { 'tls-creds': '' });
    if (withMirrors) this.completeMirrorsAtPreSwitchover();
    const unwatch = this.watchStop();
    // After a failed stream QEMU cleans up (unregisters the migration's yank instance, joins its
    // thread) in a bottom half that may run after query-migrate already says 'failed'; a 'migrate'
    // right then is refused with "duplicate yank instance" or "There's a migration process in
    // progress" (each seen once on a loaded machine, on a refused TLS peer followed at once by a new
    // attempt). The cleanup takes milliseconds: ask again for up to 2 s.
    for (let attempt = 1; ; attempt++) {
      try {
        await qmp.execute('migrate', { uri: destination.uri });
        return;
      } catch (err) {
        if (!/duplicate yank instance|migration process in progress/.test((err as Error).message) || attempt >= 20) {
          unwatch(); // no stream, no end event to stop watching at
          throw err;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** When the guest stopped for the final copy: the start of its blackout. */
  private stoppedAt: number | undefined;

  /** Notes the guest's STOP until the stream ends; returns how to stop watching earlier. */
  private watchStop(): () => void {
    const qmp = this.instance.qmp;
    this.stoppedAt = undefined;
    const onEvent = (e: QmpEvent) => {
      if (e.event === 'STOP') this.stoppedAt = eventTime(e);
      else if (e.event !== 'MIGRATION' || !['completed', 'failed', 'cancelled'].includes(e.data['status'] as string)) return;
      qmp.off('event', onEvent);
    };
    qmp.on('event', onEvent);
    return () => qmp.off('event', onEvent);
  }

  /**
   * Reacts to the pre-switchover pause at once (it is part of the guest's
   * downtime): complete the mirrors, then let QEMU send the device state. If
   * the mirrors cannot complete, the stream is cancelled and the engine rolls back.
   */
  private completeMirrorsAtPreSwitchover(): void {
    const qmp = this.instance.qmp;
    const onEvent = (e: { event: string; data: Record<string, unknown> }) => {
      if (e.event !== 'MIGRATION') return;
      const status = e.data['status'];
      if (status === 'pre-switchover') {
        // Replicated disks: this host serves its replicas once the stream completed (below).
        if (!replicatedDisks(this.spec).length) qmp.off('event', onEvent);
        const done = [...this.mirrored];
        this.completing = true;
        (done.length ? completeMirrors(qmp, done) : Promise.resolve())
          .then(async () => {
            this.mirrored = [];
            // Under a millisecond here (measured), and a clean NBD disconnect while the destination's server still runs.
            await dropTargets(qmp, done);
            if (replicatedDisks(this.spec).length) {
              this.replicationPaused = true;
              await this.options.replicas!.pauseForSwitchover(this.instance);
            }
            await qmp.execute('migrate-continue', { state: 'pre-switchover' });
          })
          .catch(async (err: Error) => {
            this.mirrorFailure = err.message;
            await qmp.execute('migrate_cancel').catch(() => undefined);
          });
      } else if (status === 'completed') {
        qmp.off('event', onEvent);
        // The images are inactive now (their locks released): the destination will replicate into them.
        if (this.replicationPaused)
          this.serving = this.options.replicas!.serveAfterSwitchover(this.spec).catch((err: Error) => this.options.log?.(`warning: this host's replicas could not be served: ${err.message}`));
      } else if (status === 'failed' || status === 'cancelled') {
        qmp.off('event', onEvent);
      }
    };
    qmp.on('event', onEvent);
  }

  /** Set once the replication jobs ended in sync at pre-switchover; rollback restarts them. */
  private replicationPaused = false;
  /** This host serving its replicas after the stream completed. */
  private serving: Promise<void> = Promise.resolve();

  async setParameters(parameters: Record<string, unknown>): Promise<void> {
    await this.instance.qmp.execute('migrate-set-parameters', parameters);
  }

  async startPostcopy(): Promise<void> {
    await this.instance.qmp.execute('migrate-start-postcopy');
  }

  async pausePostcopy(): Promise<void> {
    await this.instance.qmp.execute('migrate-pause');
  }

  async resumePostcopy(uri: string): Promise<void> {
    await this.instance.qmp.execute('migrate', { uri, resume: true });
  }

  async progress(): Promise<RamProgress> {
    return toRamProgress(await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate'));
  }

  memoryDigest(): Promise<string[]> {
    return memoryDigest(this.instance);
  }

  async summary(): Promise<QemuMigrationSummary> {
    const summary = { ...toSummary(await this.instance.qmp.execute<QemuMigrationInfo>('query-migrate')), ...(this.stoppedAt ? { stoppedAt: this.stoppedAt } : {}) };
    return this.mirrorFailure ? { ...summary, error: `disk mirror: ${this.mirrorFailure}` } : summary;
  }

  /**
   * Rollback on the source: the stream cancelled, mirrors removed, the guest running again. A cancel
   * QEMU cannot finish yet (a stream or TLS handshake stuck on a cut link, which neither cancel nor
   * yank ends) is waited for here up to CANCEL_WAIT_MS; past that the rollback finishes in the
   * background once QEMU lets go of the stream, and this says so (CancelPendingError).
   */
  async cancelAndResume(waitMs = CANCEL_WAIT_MS): Promise<void> {
    const waited = await this.cancelStream(waitMs);
    if (waited !== 'cancelled') {
      const started = Date.now();
      void this.cancelStream(Number.POSITIVE_INFINITY)
        .then(async (outcome) => {
          if (outcome !== 'cancelled') return;
          await this.resumeAfterCancel();
          this.options.log?.(`rollback of ${this.spec.name} finished: QEMU let go of the stream ${Math.round((Date.now() - started + waitMs) / 1000)} s after the cancel`);
        })
        .catch((err: Error) => this.options.log?.(`rollback of ${this.spec.name} could not finish: ${err.message}`));
      throw new CancelPendingError(`QEMU's migration is still ${waited} ${waitMs / 1000} s after migrate_cancel and yank (its stream is stuck on a link that does not answer); the rollback finishes by itself once QEMU lets go of it`);
    }
    await this.resumeAfterCancel();
  }

  /** Cancels QEMU's migration and waits until it is no longer active: 'cancelled', or the status it is still in. */
  private async cancelStream(timeoutMs: number): Promise<'cancelled' | string> {
    const qmp = this.instance.qmp;
    let info = await qmp.execute<QemuMigrationInfo>('query-migrate');
    if (!info.status || !ACTIVE_STATUSES.has(info.status)) return 'cancelled';
    if (info.status !== 'cancelling') await qmp.execute('migrate_cancel');
    const started = Date.now();
    let yanked = false;
    while (info.status && ACTIVE_STATUSES.has(info.status)) {
      // A stream whose peer vanished (a cut link: no RST, only retransmits) can keep the migration
      // thread in a send that cancel does not end; QEMU's yank shuts its sockets down for good.
      if (!yanked && Date.now() - started > CANCEL_BEFORE_YANK_MS) {
        yanked = true;
        await qmp.execute('yank', { instances: [{ type: 'migration' }] }).catch(() => undefined);
      }
      if (Date.now() - started > timeoutMs) return info.status;
      await new Promise((r) => setTimeout(r, timeoutMs === Number.POSITIVE_INFINITY ? 500 : 20));
      info = await qmp.execute<QemuMigrationInfo>('query-migrate');
    }
    return 'cancelled';
  }

  /** After the stream is cancelled: mirrors removed, replication taken back, the guest running. */
  private async resumeAfterCancel(): Promise<void> {
    const qmp = this.instance.qmp;
    try {
      // The source's own volumes were only read by the mirrors: removing them leaves the volumes as they were.
      await removeAllMirrors(qmp);
    } catch (err) {
      this.mirrorFailure = `leftover mirror jobs could not be removed (${(err as Error).message}); restart the VM to clear them`;
    } finally {
      this.mirrored = [];
      this.copied = [];
      this.completing = false;
      // A stream that completed (or failed in its last stage) leaves the source paused in postmigrate.
      const { status } = await qmp.execute<{ status: string }>('query-status');
      await this.takeReplicationBack(status, () => qmp.execute('cont'));
      // A destination that had loaded the stream announced the guest's MACs from its port: take them back.
      if (status === 'postmigrate') await qmp.execute('announce-self', { initial: 0, max: 100, rounds: 3, step: 50 }).catch(() => undefined);
    }
  }

  /**
   * Rollback of a VM with replicated disks, around the `cont` that lets the guest run again. Before
   * the stream completed the images are still active: replication restarts before the guest runs,
   * and nothing needs copying if the guest is still paused. After it completed, the images become writable only with `cont`
   * (QEMU 7.2 has no other way to reactivate them), so this host stops serving its replicas
   * first and replicates in full once the guest runs.
   */
  private async takeReplicationBack(status: string, cont: () => Promise<unknown>): Promise<void> {
    const replicas = this.options.replicas;
    if (!this.replicationPaused || !replicas) {
      if (status !== 'running') await cont();
      return;
    }
    this.replicationPaused = false;
    if (status === 'postmigrate') {
      await this.serving;
      await replicas.stopServing(this.spec);
      await cont();
      await replicas.resumeAfterRollback(this.instance, 'full').catch((err: Error) => this.options.log?.(`warning: replication not restarted (${err.message}); the agent retries`));
    } else {
      // QEMU itself lets the guest run again when a stream fails or is cancelled after the pause:
      // its writes since the jobs ended were recorded nowhere, so then the copy is a full one.
      const sync = status === 'running' ? 'full' : 'none';
      await replicas.resumeAfterRollback(this.instance, sync).catch((err: Error) => this.options.log?.(`warning: replication not restarted (${err.message}); the agent retries`));
      if (status !== 'running') await cont();
    }
  }

  /**
   * Settles when this host's stale copies of the migrated disks are removed. That happens after
   * retire() returns: the migration is complete by then, and deleting a large image takes a while.
   */
  released: Promise<void> = Promise.resolve();

  async retire(): Promise<void> {
    await this.instance.stop({ powerdownTimeoutMs: 0 });
    // The destination holds the disks now; this host's copies are stale.
    const stale = (this.spec.disks ?? []).filter((disk) => this.copied.includes(disk.id));
    this.released = (async () => {
      for (const disk of stale) {
        await this.options.storage
          ?.get(disk.pool)
          .releaseAfterMigration(volumeOf(disk))
          .catch((err: Error) => this.options.log?.(`warning: the stale copy of ${disk.pool}/${disk.volume} on this host could not be removed: ${err.message}`));
      }
    })();
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
  /** This host's storage pools: needed for a VM with disks. */
  storage?: StorageCatalog;
  /** Moves the replication of replicated disks to this host at resume. */
  replicas?: ReplicaHandover;
  /** Where to say what resuming took. */
  log?: (line: string) => void;
  /**
   * Announce the guest's MACs again right after `cont` (default true). QEMU announces by itself when
   * the stream has loaded (the guest still paused); the benchmark measures what the second one adds.
   */
  announceAfterResume?: boolean;
}

export class LocalDestination implements DestinationSide {
  private launched: VmInstance | undefined;
  private preparing: Promise<unknown> | undefined;
  private completion: Promise<void> | undefined;
  private postcopy: Promise<void> | undefined;
  private aborted = false;
  private readonly completionTimers = new Set<NodeJS.Timeout>();
  /** Volumes prepare made available, and how: rollback undoes exactly these. */
  private readonly incomingDisks = new Map<string, IncomingDisk>();
  private nbdRunning = false;
  private exportsStopped: Promise<void> = Promise.resolve();
  /** Replicated disks: this host's exports stopped and the source's replicas connected, once the stream completed. */
  private handoverPrepared: Promise<void> = Promise.resolve();
  private streamCompleted = false;
  private readonly times: DestinationTimes = { loadedAt: null, resumedAt: null };
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

  qemu(): Promise<QemuBuild> {
    return localQemuBuild();
  }

  /** Disks only: a destination in this process attaches NICs with the same attacher as its source. */
  checkResources(needs: DiskNeed[]): Promise<string[]> {
    return checkIncomingStorage(this.spec, this.options.storage, needs);
  }

  prepare(capabilities: MigrationCapabilities, needs: DiskNeed[] = []): Promise<PreparedDestination> {
    const work = this.doPrepare(capabilities, needs);
    this.preparing = work.catch(() => undefined);
    return work;
  }

  private async prepareVolumes(needs: DiskNeed[]): Promise<void> {
    const disks = this.spec.disks ?? [];
    if (!disks.length) return;
    const storage = this.options.storage;
    if (!storage) throw new Error(`the destination has no storage configured for the disks of '${this.spec.name}'`);
    for (const disk of disks) {
      if (this.aborted) throw new Error('aborted');
      const allocated = needs.find((n) => n.id === disk.id)?.allocatedBytes ?? disk.sizeBytes;
      this.incomingDisks.set(disk.id, await storage.get(disk.pool).prepareIncoming(volumeOf(disk), allocated));
    }
  }

  private async doPrepare(capabilities: MigrationCapabilities, needs: DiskNeed[]): Promise<PreparedDestination> {
    const { spec, accel, runDir, network, storage } = this.options;
    await this.prepareVolumes(needs);
    const disks = ((spec.disks ?? []).length || spec.cdrom?.medium) && storage ? storage.attach(spec) : undefined;
    const instance = await VmInstance.launch({ spec, accel, runDir, ...(network ? { network } : {}), ...(disks ? { disks } : {}), incoming: true });
    this.launched = instance;
    if (this.aborted) throw new Error('aborted');
    unexpectedExit(instance).then(this.reportLost);
    await this.options.onLaunched?.(instance);
    const qmp = instance.qmp;
    // This host serves its replica to the source until the guest resumes here: the images may be
    // activated (locked for writing) only then, at `cont`, not when the stream completes.
    const replicas = [...this.incomingDisks.values()].includes('replica');
    if (replicas && !this.options.replicas) throw new Error(`the destination cannot move the replication of '${spec.name}' (no replica handover)`);
    await qmp.execute('migrate-set-capabilities', { capabilities: capabilityList({ ...capabilities, ...(replicas ? { 'late-block-activate': true } : {}) }) });
    const address = this.options.listenAddress;
    let authz: string | undefined;
    if (this.options.tls) {
      await addTlsObject(instance, this.options.tls, 'server');
      authz = await addAuthzObject(instance, this.options.tls);
      await qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_OBJECT, ...(authz ? { 'tls-authz': authz } : {}) });
    }
    const copied = [...this.incomingDisks].filter(([, how]) => how === 'copy').map(([id]) => id);
    let nbd: NbdTargets | undefined;
    if (copied.length) {
      const tls = this.options.tls && address ? { tlsObject: TLS_OBJECT, tlsHostname: address, ...(authz ? { tlsAuthz: authz } : {}) } : {};
      nbd = await startNbdExports(instance, copied, { ...(address ? { address } : {}), ...tls });
      this.nbdRunning = true;
    }
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
        if (e.data['status'] === 'completed') {
          this.times.loadedAt = eventTime(e as QmpEvent);
          resolve();
        } else if (e.data['status'] === 'failed') reject(new Error('the destination failed to load the incoming state (see its QEMU log)'));
        else return;
        qmp.off('event', onEvent);
      };
      qmp.on('event', onEvent);
    });
    this.completion.catch(() => undefined);
    // The source completed its mirrors at pre-switchover, before it sent the device state: once the
    // stream is complete nobody writes to the exports any more, and they can stop before the resume.
    if (this.nbdRunning)
      this.exportsStopped = this.completion
        .then(() => stopNbdExports(instance))
        .then(
          () => void (this.nbdRunning = false),
          () => undefined, // resume stops them (and says why it cannot)
        );
    // The source's replication jobs ended before it sent the device state: once the stream is
    // complete this host's replica export has no writer left. Stopping it and connecting to the
    // source's replica now keeps both out of the guest's pause.
    if (replicas)
      this.handoverPrepared = this.completion
        .then(() => {
          this.streamCompleted = true;
          return this.options.replicas!.prepareTakeOver(instance);
        })
        .catch((err: Error) => this.options.log?.(`the replica handover could not be prepared (${err.message}); it is tried again at resume`));
    await qmp.execute('migrate-incoming', { uri: address ? `tcp:${address}:0` : `unix:${path.join(instance.dir, 'migrate.sock')}` });
    const uri = address ? `tcp:${address}:${await this.listeningPort()}` : `unix:${path.join(instance.dir, 'migrate.sock')}`;
    return {
      uri,
      ...(this.options.tls && address ? { tlsHostname: address } : {}),
      disks: [...this.incomingDisks].map(([id, mode]) => ({ id, mode })),
      ...(nbd ? { nbd } : {}),
    };
  }

  async recoverPostcopy(): Promise<string> {
    const qmp = this.instance.qmp;
    const status = async () => (await qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none';
    let now = await status();
    // A link that drops packets leaves this side waiting on a stream that never ends: break it off.
    if (now === 'postcopy-active') {
      await qmp.execute('migrate-pause');
      for (let i = 0; i < 50 && now !== 'postcopy-paused'; i++) {
        await new Promise((r) => setTimeout(r, 100));
        now = await status();
      }
    }
    if (now === 'postcopy-recover-setup' || now === 'postcopy-recover') return this.recoveryUri ?? Promise.reject(new Error(`the destination is ${now} but does not say where`));
    if (now !== 'postcopy-paused') throw new Error(`the destination's incoming migration is ${now}, not postcopy-paused; it cannot be recovered`);
    const address = this.options.listenAddress;
    const socket = path.join(this.instance.dir, `recover-${++this.recoveries}.sock`);
    await qmp.execute('migrate-recover', { uri: address ? `tcp:${address}:0` : `unix:${socket}` });
    this.recoveryUri = address ? `tcp:${address}:${await this.listeningPort()}` : `unix:${socket}`;
    return this.recoveryUri;
  }

  private recoveries = 0;
  private recoveryUri: string | undefined;

  /** The port QEMU picked for `tcp:ADDRESS:0`. */
  private async listeningPort(): Promise<number> {
    const info = await this.instance.qmp.execute<{ 'socket-address'?: { type: string; port?: string }[] }>('query-migrate');
    const port = info['socket-address']?.find((a) => a.type === 'inet')?.port;
    if (!port) throw new Error('the destination QEMU did not report its migration port');
    return Number(port);
  }

  async incomingComplete(timeoutMs: number): Promise<void> {
    if (!this.completion) throw new Error('the destination has not been prepared');
    // Each wait has its own timer (post-copy waits twice: in perform, then in finish); abort clears them all.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the destination did not finish loading within ${timeoutMs} ms`)), timeoutMs);
      this.completionTimers.add(timer);
    });
    try {
      await Promise.race([this.completion, timeout]);
    } finally {
      clearTimeout(timer);
      if (timer) this.completionTimers.delete(timer);
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
    // The source's mirrors are done; from now on the guest must be the disks' only writer. Normally
    // the exports stopped when the stream completed (out of the guest's pause); in post-copy, here.
    await this.exportsStopped;
    if (this.nbdRunning) await stopNbdExports(this.instance);
    this.nbdRunning = false;
    if ([...this.incomingDisks.values()].includes('replica')) {
      await this.handoverPrepared;
      await this.options.replicas!.takeOver(this.instance);
    }
    const started = performance.now();
    const onResume = (e: QmpEvent) => {
      if (e.event !== 'RESUME') return;
      this.times.resumedAt = eventTime(e);
      qmp.off('event', onResume);
    };
    qmp.on('event', onResume);
    await qmp.execute('cont');
    this.options.log?.(`guest resumed here (cont took ${Math.round(performance.now() - started)} ms)`);
    // Tell the switches where the guest's MACs are now, at once and a few times more.
    if (this.options.announceAfterResume !== false) await qmp.execute('announce-self', { initial: 0, max: 100, rounds: 3, step: 50 });
  }

  async isRunning(): Promise<boolean> {
    return (await this.instance.qmp.execute<{ status: string }>('query-status')).status === 'running';
  }

  async finish(): Promise<DestinationTimes> {
    const { status } = await this.instance.qmp.execute<{ status: string }>('query-status');
    if (status !== 'running') throw new Error(`the destination guest is ${status} after switchover, not running`);
    return { ...this.times };
  }

  async abort(): Promise<void> {
    this.aborted = true;
    for (const timer of this.completionTimers) clearTimeout(timer); // nobody waits for the stream any more
    this.completionTimers.clear();
    await this.preparing;
    await this.launched?.destroy();
    if ([...this.incomingDisks.values()].includes('replica')) {
      // This host withdrew its replicas when the stream completed: the source replicates into them again.
      if (this.streamCompleted) await this.handoverPrepared;
      await this.options.replicas!.abortTakeOver(this.spec).catch((err: Error) => this.options.log?.(`warning: this host's replicas are not served again (${err.message}); the agent retries`));
    }
    // Only what prepare made goes: a copy's half-filled volume; shared volumes stay as they are.
    for (const disk of this.spec.disks ?? []) {
      const how = this.incomingDisks.get(disk.id);
      if (how) await this.options.storage?.get(disk.pool).abortIncoming(volumeOf(disk), how);
      this.incomingDisks.delete(disk.id);
    }
  }
}
