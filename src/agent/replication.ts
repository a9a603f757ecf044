/**
 * Replicated volumes on this host, reconciled once a second from the store
 * (KubeVirt style: what should be is read, what is is asked of QEMU and of the
 * export processes, the difference is acted on; a restart at any line is
 * repaired by the next pass):
 *
 * - this host runs the VM (primary): each replicated disk has its replication
 *   job into the peer's export; a paused job (peer away) is resumed once the
 *   peer's export answers again, which resynchronises the blocks written meanwhile;
 * - the peer runs the VM: this host serves its replica over NBD with TLS and
 *   publishes where (`/ferry/replica-endpoints/`);
 * - otherwise (VM stopped, destroyed): no export.
 *
 * While a VM migrates, the migration moves the replication (ReplicaHandover)
 * and the pass leaves its volumes alone. Both go through one lock per volume.
 */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { mkdir } from 'node:fs/promises';
import type { OutdatedReplica, OwnedVm, StoredVolume } from '../cluster/model.ts';
import { certificateIdentity } from '../cluster/pki.ts';
import type { ReplicaHandover } from '../migration/sides.ts';
import type { VmInstance } from '../qemu/instance.ts';
import type { DiskSpec, VmSpec } from '../qemu/spec.ts';
import { ReplicaServer } from '../storage/replica-server.ts';
import { isFencePaused, pauseForFence, resumeAfterFence } from './replica-fence.ts';
import { peerOf, ReplicatedDriver, replicatedDisks } from '../storage/replicated.ts';
import {
  connectReplica,
  ensureReplicaTls,
  replicaConnected,
  startReplicationJob,
  replicationJobId,
  replicationStatus,
  replicationTarget,
  resumeReplication,
  startReplication,
  stopReplication,
  type ReplicationStatus,
} from '../storage/replication.ts';
import type { ReplicaEndpoint } from '../storage/types.ts';
import { volumeOf } from '../storage/types.ts';
import { accepts } from '../util/net.ts';
import { run } from '../util/exec.ts';
import { storageCatalog, type AgentContext } from './context.ts';

const PASS_INTERVAL_MS = 1_000;
/** Passes in a row without an answer from the peer before a replicating primary cuts the connection. */
const UNREACHABLE_PASSES = 2;
/** How often a fenced guest's agent tries again to write down that the peer is outdated. */
const FENCE_RETRY_MS = 500;
/** How long a new primary waits at switchover for the old one to serve its replica. */
const HANDOVER_WAIT_MS = 10_000;

const key = (pool: string, name: string) => `${pool}/${name}`;

export interface VolumeReplication extends ReplicationStatus {
  pool: string;
  volume: string;
  replicas: string[];
  /** The host running the VM (writing to both replicas), if it runs. */
  primary?: string;
  /** Set while the other replica lacks writes (a recovery there would lose them). */
  outdated?: OutdatedReplica;
}

export class ReplicationManager implements ReplicaHandover {
  /** This host's replica server (started when this host first keeps a replica). */
  private server: ReplicaServer | undefined;
  private starting: Promise<ReplicaServer> | undefined;
  /** The identities the server lets in now, one per line. */
  private allowed = '';
  /** Volumes (pool/name) this host serves now. */
  private readonly served = new Set<string>();
  /** The endpoint each local job writes to: a peer that moved to another port needs a new job. */
  private readonly targets = new Map<string, string>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly lastState = new Map<string, string>();
  /** Whether the peer's replica is written down as outdated, per volume (as last written by this agent). */
  private readonly outdated = new Map<string, boolean>();
  private readonly watched = new WeakSet<VmInstance>();
  /** Volumes whose guest is being fenced now. */
  private readonly fencing = new Set<string>();
  /** Passes in a row in which a replicating primary could not reach its peer. */
  private readonly misses = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private passing = false;
  private stopped = false;

  constructor(private readonly ctx: AgentContext) {}

  start(): void {
    this.timer = setInterval(() => void this.pass(), PASS_INTERVAL_MS);
  }

  /** A stopped agent stops serving: the primaries degrade, and resync when it is back. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    while (this.passing) await new Promise((r) => setTimeout(r, 20));
    await this.starting?.catch(() => undefined);
    await this.server?.stop().catch(() => undefined);
    this.served.clear();
  }

  /** The replica server, started (or adopted from an earlier run) on first use, restarted if it died. */
  private async replicaServer(): Promise<ReplicaServer> {
    if (this.server?.running) return this.server;
    if (this.stopped) throw new Error('the agent is stopping');
    this.served.clear(); // a dead server served nothing
    this.server?.close();
    this.starting ??= (async () => {
      const dir = path.join(this.ctx.node.stateDir, 'replica-server');
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const allowed = await this.hostIdentities();
      const server = await ReplicaServer.start({ address: this.ctx.node.address, tlsDir: this.ctx.node.certDir, dir, allowed });
      this.allowed = allowed.join('\n');
      for (const name of await server.served()) this.served.add(name);
      this.ctx.log(`replica server listening at ${this.ctx.node.address}:${server.port} (NBD, TLS)`);
      return server;
    })().finally(() => (this.starting = undefined));
    this.server = await this.starting;
    return this.server;
  }

  /**
   * The certificates the replica server lets in: the peers of the replicated volumes this host keeps
   * a replica of (a volume's primary is its other replica host), no other host. The server is one
   * per host and NBD's TLS authorization is per server, so a peer of one volume could reach another
   * volume's export here; every export's name is the volume's, and only the two replica hosts of a
   * volume know to ask for it.
   */
  private async hostIdentities(): Promise<string[]> {
    const me = this.ctx.node.name;
    const peers = new Set((await this.ctx.state.volumes()).flatMap((v) => (v.replicas?.includes(me) ? v.replicas.filter((h) => h !== me) : [])));
    return [...peers].sort().map((h) => certificateIdentity(h));
  }

  /** A volume made since the server started may have another peer. */
  private async authorizeHosts(server: ReplicaServer): Promise<void> {
    const allowed = await this.hostIdentities();
    if (allowed.join('\n') === this.allowed) return;
    await server.allow(allowed);
    this.allowed = allowed.join('\n');
  }

  /** Runs `body` with the volume's lock: the periodic pass and a migration's handover never interleave. */
  private async locked<T>(volumeKey: string, body: () => Promise<T>): Promise<T> {
    const before = this.locks.get(volumeKey) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(body);
    this.locks.set(volumeKey, run.catch(() => undefined));
    return run;
  }

  /** One reconcile pass over the replicated volumes this host keeps a replica of. */
  async pass(): Promise<void> {
    if (this.passing || this.stopped) return;
    this.passing = true;
    try {
      const pools = new Set((await this.ctx.state.pools()).filter((p) => p.type === 'replicated').map((p) => p.name));
      if (!pools.size && !this.served.size) return;
      const me = this.ctx.node.name;
      const volumes = (await this.ctx.state.volumes()).filter((v) => pools.has(v.pool) && v.replicas?.includes(me));
      const wanted = new Set(volumes.map((v) => key(v.pool, v.name)));
      // Kept running whenever this host keeps a replica: a migration's handover then only adds an export.
      if (volumes.length) await this.authorizeHosts(await this.replicaServer());
      for (const volume of volumes) {
        await this.locked(key(volume.pool, volume.name), () => this.reconcileVolume(volume)).catch((err: Error) =>
          this.say(volume, 'error', `replication of ${volume.pool}/${volume.name}: ${err.message}`),
        );
      }
      // Volumes deleted meanwhile: their exports go.
      for (const k of [...this.served].filter((k) => !wanted.has(k))) await this.locked(k, () => this.stopExport(k));
    } catch (err) {
      this.ctx.log(`replication pass failed: ${(err as Error).message}`);
    } finally {
      this.passing = false;
    }
  }

  private async reconcileVolume(volume: StoredVolume): Promise<void> {
    const me = this.ctx.node.name;
    const vm = volume.vm ? await this.ctx.state.vm(volume.vm) : undefined;
    // The migration moves the replication, unless its source host is gone (nobody closes that record then).
    const migration = vm ? await this.ctx.state.migration(vm.spec.name) : undefined;
    if (migration && (await this.ctx.state.host(migration.source))) return;
    const peer = peerOf(volume, me);
    if (vm?.owner === me) {
      await this.stopExport(key(volume.pool, volume.name));
      const instance = this.ctx.runtime.get(vm.spec.name);
      const disk = diskOf(vm, volume);
      if (instance && disk) await this.keepReplicating(instance, disk, volume, peer);
    } else if (vm?.owner === peer && vm.desired === 'running') {
      await this.ensureExport(volume);
    } else {
      await this.stopExport(key(volume.pool, volume.name));
    }
  }

  /** Primary: the job exists and writes to the peer, or is started; a paused one is resumed once the peer answers. */
  private async keepReplicating(instance: VmInstance, disk: DiskSpec, volume: StoredVolume, peer: string): Promise<void> {
    const qmp = instance.qmp;
    this.watchReplicationErrors(instance);
    const status = await replicationStatus(qmp, disk.id);
    // Resyncing leaves the mark as it is: a resync after a gap keeps it until in sync, and a guest
    // write in flight (a moment of 'resyncing' while in sync) must not set it.
    if (status.state !== 'resyncing') await this.markOutdated(volume.pool, volume.name, peer, status.state !== 'in-sync');
    // A guest left paused for fencing (by an earlier run of this agent): the mark is written now.
    if (this.outdated.get(key(volume.pool, volume.name)) && isFencePaused(instance) && !this.fencing.has(key(volume.pool, volume.name))) {
      await resumeAfterFence(instance);
      this.ctx.log(`'${instance.spec.name}' resumed: its peer ${peer} is written down as outdated`);
    }
    const endpoint = await this.ctx.state.replicaEndpoint(volume.pool, volume.name, peer);
    const reachable = endpoint ? await accepts(endpoint.address, endpoint.port) : false;
    const k = key(volume.pool, volume.name);
    const target = endpoint ? `${endpoint.address}:${endpoint.port}` : undefined;
    // A job this agent did not start (it restarted meanwhile): where it writes is asked of QEMU.
    if (status.state !== 'off' && !this.targets.has(k)) {
      const current = await replicationTarget(qmp, disk.id);
      if (current) this.targets.set(k, current);
    }
    if (status.state === 'off' || (status.state === 'degraded' && reachable && target !== this.targets.get(k))) {
      if (!endpoint || !reachable) return this.say(volume, 'degraded', `${volume.pool}/${volume.name}: no replication yet, the replica on ${peer} is not served`);
      await ensureReplicaTls(qmp, this.ctx.node.certDir);
      // Without a running job nothing recorded which blocks differ: copy what the peer lacks.
      if (status.state !== 'off') await stopReplication(qmp, disk.id, { inSync: false });
      await startReplication(qmp, disk.id, endpoint, 'full');
      this.targets.set(k, target!);
      return this.say(volume, 'resyncing', `${volume.pool}/${volume.name}: replicating to ${peer} (full comparison: no record of what differs)`);
    }
    if (status.state === 'degraded') {
      if (!reachable) return this.say(volume, 'degraded', `${volume.pool}/${volume.name}: degraded, ${peer} is away; writes go to this replica and are recorded`);
      if (await resumeReplication(qmp, disk.id)) this.say(volume, 'resyncing', `${volume.pool}/${volume.name}: ${peer} is back, copying the blocks written meanwhile`);
      return;
    }
    if (!reachable) {
      // Replicating, but the peer does not answer: a cut network holds the guest's writes. Twice in a row (2 s): cut loose.
      const misses = (this.misses.get(k) ?? 0) + 1;
      this.misses.set(k, misses);
      if (misses >= UNREACHABLE_PASSES) {
        this.misses.delete(k);
        await abortConnections(this.targets.get(k) ?? target!);
        return this.say(volume, 'degraded', `${volume.pool}/${volume.name}: ${peer} does not answer; connection aborted, writes go to this replica and are recorded`);
      }
      return;
    }
    this.misses.delete(k);
    this.say(volume, status.state, `${volume.pool}/${volume.name}: ${status.state === 'in-sync' ? `in sync with ${peer}` : `resyncing to ${peer}`}`);
  }

  /**
   * Writes down (or clears) that the peer's replica lacks writes this one has, so that a recovery
   * never boots from it by mistake (DRBD's "outdated"). Only on a change: not a store write a second.
   */
  private async markOutdated(pool: string, name: string, peer: string, outdated: boolean): Promise<void> {
    const k = key(pool, name);
    if (this.outdated.get(k) === outdated) return;
    if (outdated) await this.ctx.state.putReplicaOutdated(pool, name, { outdated: peer, upToDate: this.ctx.node.name, since: new Date().toISOString() });
    else if (await this.ctx.state.replicaOutdated(pool, name)) await this.ctx.state.deleteReplicaOutdated(pool, name);
    this.outdated.set(k, outdated);
  }

  /** The moment a write fails to reach the peer (not a second later, at the next pass): the peer is outdated. */
  private watchReplicationErrors(instance: VmInstance): void {
    if (this.watched.has(instance)) return;
    this.watched.add(instance);
    instance.qmp.on('event', (e: { event: string; data: Record<string, unknown> }) => {
      if (e.event !== 'BLOCK_JOB_ERROR') return;
      const disk = replicatedDisks(instance.spec).find((d) => replicationJobId(d.id) === e.data['device']);
      if (disk) void this.fence(instance, disk);
    });
  }

  /**
   * A write missed the peer: the guest is paused until the peer is written down as outdated
   * (see replica-fence.ts); if the store cannot be reached, it stays paused until it can be, or
   * until self-fencing stops it.
   */
  private async fence(instance: VmInstance, disk: DiskSpec): Promise<void> {
    const k = key(disk.pool, disk.volume);
    if (this.outdated.get(k) === true || this.fencing.has(k)) return;
    this.fencing.add(k);
    const peer = peerOf(volumeOf(disk), this.ctx.node.name);
    const name = instance.spec.name;
    try {
      const t0 = performance.now();
      const paused = await pauseForFence(instance, k).catch((err: Error) => {
        this.ctx.log(`'${name}' could not be paused for fencing: ${err.message}`);
        return false;
      });
      if (paused) this.ctx.log(`'${name}' paused: a write missed ${peer}; writing down that its replica of ${k} is outdated before the guest runs on`);
      for (let attempt = 1; ; attempt++) {
        if (this.stopped || !instance.process.isRunning) return;
        try {
          await this.markOutdated(disk.pool, disk.volume, peer, true);
          break;
        } catch (err) {
          if (attempt === 1) this.ctx.log(`'${name}' stays paused: that the replica of ${k} on ${peer} is outdated cannot be written down (${(err as Error).message}); retrying`);
          await new Promise((r) => setTimeout(r, FENCE_RETRY_MS));
        }
      }
      if (paused) {
        await resumeAfterFence(instance);
        this.ctx.log(`'${name}' paused ${Math.round(performance.now() - t0)} ms: a write missed ${peer}, its replica of ${k} is now written down as outdated`);
      }
    } catch (err) {
      this.ctx.log(`fencing '${name}' for ${k}: ${(err as Error).message}`);
    } finally {
      this.fencing.delete(k);
    }
  }

  /** Peer: serve this host's replica and say where. */
  private async ensureExport(volume: StoredVolume): Promise<ReplicaEndpoint> {
    const k = key(volume.pool, volume.name);
    const me = this.ctx.node.name;
    const server = await this.replicaServer();
    const endpoint: ReplicaEndpoint = { host: me, address: this.ctx.node.address, port: server.port, export: k };
    const published = await this.ctx.state.replicaEndpoint(volume.pool, volume.name, me);
    if (this.served.has(k) && published?.port === endpoint.port) return published;
    const driver = (await storageCatalog(this.ctx)).get(volume.pool);
    if (!(driver instanceof ReplicatedDriver)) throw new Error(`pool '${volume.pool}' is not a replicated pool`);
    await server.serve(k, driver.fileOf(volume), volume.format);
    this.served.add(k);
    await this.ctx.state.putReplicaEndpoint(volume.pool, volume.name, endpoint);
    this.ctx.log(`serving replica ${k} at ${endpoint.address}:${endpoint.port}`);
    return endpoint;
  }

  /**
   * Withdraws the export and always its record (a record left by a dead server would send a
   * primary to a dead port). Asks the server itself, not only what this run of the agent served:
   * after an agent restart the adopted server may still serve a replica a guest needs now.
   */
  private async stopExport(k: string): Promise<void> {
    const [pool, name] = k.split('/') as [string, string];
    const me = this.ctx.node.name;
    if ((await this.ctx.state.replicaEndpoint(pool, name, me)) !== undefined) await this.ctx.state.deleteReplicaEndpoint(pool, name, me);
    const server = this.served.has(k) || !this.server ? await this.replicaServer() : this.server;
    if (!this.served.has(k) && !(await server.served()).includes(k)) return;
    await server.withdraw(k);
    this.served.delete(k);
    this.ctx.log(`stopped serving replica ${k}`);
  }

  /** Logs a volume's state when it changes (not every second). */
  private say(volume: StoredVolume, state: string, line: string): void {
    const k = key(volume.pool, volume.name);
    if (this.lastState.get(k) === state) return;
    this.lastState.set(k, state);
    this.ctx.log(line);
  }

  /** The replication of each replicated disk of a VM running here. */
  async statusOf(vmName: string): Promise<VolumeReplication[]> {
    const vm = await this.ctx.state.vm(vmName);
    const instance = this.ctx.runtime.get(vmName);
    if (!vm || !instance) return [];
    const out: VolumeReplication[] = [];
    for (const disk of replicatedDisks(vm.spec)) {
      const outdated = await this.ctx.state.replicaOutdated(disk.pool, disk.volume);
      out.push({
        pool: disk.pool,
        volume: disk.volume,
        replicas: disk.replicas,
        primary: this.ctx.node.name,
        ...(await replicationStatus(instance.qmp, disk.id)),
        ...(outdated ? { outdated } : {}),
      });
    }
    return out;
  }

  // ---- ReplicaHandover: the migration's part (see migration/local.ts) ----

  /** Source, guest paused before switchover: each job completes in sync, so the replicas are equal. */
  async pauseForSwitchover(instance: VmInstance): Promise<void> {
    for (const disk of replicatedDisks(instance.spec)) await stopReplication(instance.qmp, disk.id, { inSync: true });
  }

  /** Source, the stream completed (its images are inactive, their locks released): serve this host's replicas. */
  serveAfterSwitchover(spec: VmSpec): Promise<void> {
    return this.serveReplicasOf(spec);
  }


  /**
   * Before a guest with replicated disks boots here: until its first replication job is in sync
   * (started by the next pass, a full copy), the peers' replicas lack what the guest writes. That
   * is written down before the guest exists, as it is after a missed write.
   */
  async beforeStart(spec: VmSpec): Promise<void> {
    const me = this.ctx.node.name;
    for (const disk of replicatedDisks(spec)) {
      const peer = peerOf(volumeOf(disk), me);
      await this.ctx.state.putReplicaOutdated(disk.pool, disk.volume, { outdated: peer, upToDate: me, since: new Date().toISOString() });
      this.outdated.set(key(disk.pool, disk.volume), true);
    }
  }

  /** Source, rolled back: stop serving this host's replicas (the guest needs its images back). */
  async stopServing(spec: VmSpec): Promise<void> {
    for (const disk of replicatedDisks(spec)) {
      const k = key(disk.pool, disk.volume);
      await this.locked(k, () => this.stopExport(k));
    }
  }

  /**
   * Source, rolled back: replicate into the peer again. `none` when nothing was written since the
   * jobs completed in sync; `full` when the guest ran meanwhile (it had to continue before its
   * images could be written again).
   */
  async resumeAfterRollback(instance: VmInstance, sync: 'none' | 'full'): Promise<void> {
    const me = this.ctx.node.name;
    for (const disk of replicatedDisks(instance.spec)) {
      const k = key(disk.pool, disk.volume);
      await this.locked(k, async () => {
        // A job that never ended (the switchover failed before it came to this disk) goes on as it was.
        if ((await replicationStatus(instance.qmp, disk.id)).state !== 'off') return;
        const endpoint = await this.ctx.state.replicaEndpoint(disk.pool, disk.volume, peerOf(volumeOf(disk), me));
        if (!endpoint) return; // the next pass replicates in full once the peer serves again
        await ensureReplicaTls(instance.qmp, this.ctx.node.certDir);
        await startReplication(instance.qmp, disk.id, endpoint, sync);
        this.targets.set(k, `${endpoint.address}:${endpoint.port}`);
      });
    }
  }

  /**
   * Destination, once its stream completed (the source's jobs ended in sync before that): stop
   * serving this host's replica, and connect to the old primary's as soon as it serves it. The
   * connection (TLS handshake: about 90 ms here) is made while the source still decides the
   * switchover, not in the guest's pause. Nothing is written through it before takeOver.
   */
  async prepareTakeOver(instance: VmInstance): Promise<void> {
    const me = this.ctx.node.name;
    for (const disk of replicatedDisks(instance.spec)) {
      const k = key(disk.pool, disk.volume);
      const peer = peerOf(volumeOf(disk), me);
      await this.locked(k, async () => {
        await this.stopExport(k);
        await this.connectToPeer(instance, disk, peer); // if it cannot, takeOver says so
      });
    }
  }

  /** Destination, rolled back (its QEMU is gone): serve this host's replicas again, for the source to replicate into. */
  abortTakeOver(spec: VmSpec): Promise<void> {
    return this.serveReplicasOf(spec);
  }

  /** Serves this host's replicas of a VM's replicated disks (the VM runs, or is about to run, on the peer). */
  private async serveReplicasOf(spec: VmSpec): Promise<void> {
    for (const disk of replicatedDisks(spec)) {
      const volume = await this.ctx.state.volume(disk.pool, disk.volume);
      if (volume) await this.locked(key(volume.pool, volume.name), () => this.ensureExport(volume));
    }
  }


  /**
   * Destination, after winning the ownership and before the guest runs: replicate into the old
   * primary's replica. Both replicas are equal at this point, so nothing is copied.
   */
  async takeOver(instance: VmInstance): Promise<void> {
    const me = this.ctx.node.name;
    for (const disk of replicatedDisks(instance.spec)) {
      const k = key(disk.pool, disk.volume);
      const peer = peerOf(volumeOf(disk), me);
      await this.locked(k, async () => {
        const started = performance.now();
        await this.stopExport(k);
        const ahead = await replicaConnected(instance.qmp, disk.id);
        try {
          if (!ahead && !(await this.connectToPeer(instance, disk, peer))) throw new Error(`${peer} did not serve its replica within ${HANDOVER_WAIT_MS / 1000} s`);
          await startReplicationJob(instance.qmp, disk.id, 'none');
        } catch (err) {
          // The ownership is here already: the guest must run, degraded; the pass replicates in full once the peer serves.
          await stopReplication(instance.qmp, disk.id, { inSync: false }).catch(() => undefined);
          this.targets.delete(k);
          this.ctx.log(`warning: ${disk.pool}/${disk.volume}: no replication to ${peer} at switchover (${(err as Error).message}); the guest runs degraded until ${peer} serves its replica`);
          return;
        }
        this.ctx.log(`${disk.pool}/${disk.volume}: replication handed over to ${me} in ${Math.round(performance.now() - started)} ms (connection to ${peer} ${ahead ? 'made ahead' : 'made in the pause'})`);
      });
    }
  }

  /** Connects the VM's QEMU to the peer's replica once the peer serves it (waits up to HANDOVER_WAIT_MS); false if it never did. */
  private async connectToPeer(instance: VmInstance, disk: DiskSpec, peer: string): Promise<boolean> {
    const endpoint = await this.waitForEndpoint(disk.pool, disk.volume, peer);
    if (!endpoint) return false;
    // QEMU's monitor would wait out a TCP connect to a dead host.
    if (!(await accepts(endpoint.address, endpoint.port))) throw new Error(`${peer}'s replica server at ${endpoint.address}:${endpoint.port} does not answer`);
    await ensureReplicaTls(instance.qmp, this.ctx.node.certDir);
    await connectReplica(instance.qmp, disk.id, endpoint);
    this.targets.set(key(disk.pool, disk.volume), `${endpoint.address}:${endpoint.port}`);
    return true;
  }

  private async waitForEndpoint(pool: string, volume: string, host: string): Promise<ReplicaEndpoint | undefined> {
    const deadline = Date.now() + HANDOVER_WAIT_MS;
    for (;;) {
      const endpoint = await this.ctx.state.replicaEndpoint(pool, volume, host);
      if (endpoint || Date.now() > deadline) return endpoint;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/**
 * A cut network holds the NBD client's requests (and the guest's writes) until TCP gives up,
 * minutes later. Aborting the connections to the peer's replica server from this host's side
 * (SOCK_DESTROY, as `ss -K` does) fails them at once; the client then takes its reconnect path:
 * the job pauses with those writes recorded, and resumes when the peer answers again. (QMP's
 * `yank` would also free them, but leaves QEMU 7.2's NBD client unable ever to reconnect.)
 */
async function abortConnections(target: string): Promise<void> {
  const [address, port] = target.split(':') as [string, string];
  await run('ss', ['-K', 'dst', address, 'dport', '=', port]);
}


function diskOf(vm: OwnedVm, volume: StoredVolume): DiskSpec | undefined {
  return vm.spec.disks?.find((d) => d.pool === volume.pool && d.volume === volume.name);
}
