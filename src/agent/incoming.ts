/**
 * The destination side of migrations on this host (libvirt's prepare and
 * finish). The incoming QEMU stays paused until the source, having won the
 * ownership compare-and-swap, asks it to resume with the new token — which
 * this agent checks against the store itself.
 */
import { cpuMisfit } from '../cluster/cpu.ts';
import type { VmSpec } from '../qemu/spec.ts';
import { faultPoint } from './faults.ts';
import { certificateIdentity } from '../cluster/pki.ts';
import { LocalDestination } from '../migration/local.ts';
import { checkToken, freeMemoryMiB, requireVm, storageCatalog, type AgentContext } from './context.ts';
import { checkIncomingStorage } from '../migration/storage-check.ts';
import type { DestinationTimes, DiskNeed, PreparedDestination } from '../migration/sides.ts';
import { NotFoundError, RefusedError, StaleTokenError } from './errors.ts';
import { ForbiddenError, requireSourceHost, type Caller } from './authz.ts';
import type { IncomingRequest, IncomingState } from './remote-destination.ts';
import { networkProblems } from './networks.ts';

interface Incoming {
  request: IncomingRequest;
  destination: LocalDestination;
  state: IncomingState;
  completed: boolean;
  /** Settles at the next change worth telling a waiting source about. */
  changed: Promise<void>;
  /** The resume in progress, if any. */
  resuming?: Promise<void> | undefined;
}

/** How often a destination checks that its migration still exists. */
const ORPHAN_CHECK_MS = 2000;

export class IncomingMigrations {
  private readonly byId = new Map<string, Incoming>();

  constructor(private readonly ctx: AgentContext) {}

  /**
   * begin: could this host take the VM's disks? Asked by the VM's owner only, and answered for the
   * VM's disks as the store holds them (a sent spec could name any path to probe).
   */
  /** begin, for the VM's owner: what this host lacks to take the VM as the store records it (its disks, its NICs' networks). */
  async check(name: string, needs: DiskNeed[], caller: string): Promise<string[]> {
    const vm = await requireVm(this.ctx, name);
    if (vm.owner !== caller) throw new ForbiddenError(`'${name}' is owned by ${vm.owner}; host '${caller}' may not ask about its disks`);
    const cpu = await this.cpuProblem(vm.spec, caller);
    return [...(cpu ? [cpu] : []), ...(await checkIncomingStorage(vm.spec, await storageCatalog(this.ctx), needs)), ...(await networkProblems(this.ctx, vm.spec))];
  }

  /** Whether this host runs the VM's CPU as the source gives it (checked here too: a source's agent may be older). */
  private async cpuProblem(spec: VmSpec, source: string): Promise<string | undefined> {
    const [here, there] = await Promise.all([this.ctx.state.host(this.ctx.node.name), this.ctx.state.host(source)]);
    return here ? cpuMisfit(spec, here, there) : undefined;
  }

  /**
   * prepare, for the host `caller` (the name in its certificate): the source is the caller, whatever
   * the request says; the VM must be the caller's, with a migration to this host that the caller
   * began (its in-flight record) under this id; and the QEMU started is built from the VM's spec as
   * the store holds it, never from the request's.
   */
  async prepare(body: IncomingRequest, caller: string): Promise<PreparedDestination> {
    const { ctx } = this;
    if (body.source !== undefined && body.source !== caller)
      throw new ForbiddenError(`host '${caller}' asked for a migration from '${body.source}': a host can only migrate its own VMs`);
    const name = String(body.spec?.name ?? '');
    const vm = await checkToken(ctx, name, body.token);
    if (vm.owner !== caller) throw new RefusedError(`'${vm.spec.name}' is owned by ${vm.owner}, not by ${caller}`);
    if (vm.owner === ctx.node.name) throw new RefusedError(`'${vm.spec.name}' already runs on ${ctx.node.name}`);
    const inFlight = await ctx.state.migration(name);
    if (!inFlight || inFlight.id !== body.migrationId || inFlight.source !== caller || inFlight.destination !== ctx.node.name)
      throw new RefusedError(`no migration ${body.migrationId} of '${name}' from ${caller} to ${ctx.node.name} was begun; the source writes it down before it asks`);
    if (this.byId.has(body.migrationId)) throw new RefusedError(`incoming migration ${body.migrationId} exists already on ${ctx.node.name}`);
    if (ctx.runtime.get(vm.spec.name)) throw new RefusedError(`a copy of '${vm.spec.name}' already runs on ${ctx.node.name}`);
    const cpu = await this.cpuProblem(vm.spec, caller);
    if (cpu) throw new RefusedError(`'${name}' cannot come to ${ctx.node.name}: ${cpu}`);
    const free = (await freeMemoryMiB(ctx, ctx.node.name)) - this.incomingMiB();
    if (free < vm.spec.memoryMiB)
      throw new RefusedError(`host '${ctx.node.name}' has ${free} MiB free for guests (incoming migrations counted), '${name}' needs ${vm.spec.memoryMiB} MiB; choose another host or stop a VM there`);
    const request: IncomingRequest = { ...body, source: caller, spec: vm.spec };

    const destination = new LocalDestination({
      spec: request.spec,
      accel: request.accel,
      runDir: ctx.runtime.runDir,
      network: ctx.runtime.network,
      listenAddress: ctx.node.address,
      // Only the source host's certificate may connect to the stream and the NBD exports.
      tls: { dir: ctx.node.certDir, peer: certificateIdentity(request.source) },
      storage: await storageCatalog(ctx),
      replicas: ctx.replication,
      log: (line) => ctx.log(`incoming ${request.spec.name}: ${line}`),
      onLaunched: (instance) => ctx.runtime.record(instance, 'incoming', request.migrationId),
    });
    const entry: Incoming = { request, destination, state: 'preparing', completed: false, changed: Promise.resolve() };
    this.byId.set(request.migrationId, entry);
    try {
      const prepared = await destination.prepare(request.capabilities, request.disks ?? []);
      entry.state = 'listening';
      const completed = destination.incomingComplete(24 * 3600_000).then(() => {
        entry.completed = true;
        if (entry.state === 'listening') {
          entry.state = 'loaded';
          this.watchOwnership(request.migrationId);
        }
      });
      const postcopy = destination.postcopyReady().then(() => {
        if (entry.state === 'listening') entry.state = 'postcopy';
      });
      entry.changed = Promise.race([completed, postcopy]);
      entry.changed.catch(() => undefined);
      void postcopy.then(() => (entry.changed = completed));
      void destination.lost.then((why) => {
        if (entry.state === 'aborted' || entry.state === 'running') return;
        const before = entry.state;
        entry.state = 'lost';
        // A destination QEMU that ended before the guest ran here (its stream broke, it was killed) holds
        // nothing anyone needs: its tap and half-copied volumes go now, not when its source next calls.
        if (before === 'listening' || before === 'loaded') {
          ctx.log(`incoming migration ${request.migrationId} of ${request.spec.name}: the destination QEMU ended (${why}); removing what it held`);
          void this.abort(request.migrationId).catch((err: Error) => ctx.log(`incoming migration ${request.migrationId}: could not remove the ended destination: ${err.message}`));
        }
      });
      ctx.log(`incoming migration ${request.migrationId} of ${request.spec.name} from ${request.source}: listening on ${prepared.uri}`);
      this.watchForOrphan(request.migrationId);
      return prepared;
    } catch (err) {
      await this.abort(request.migrationId);
      throw err;
    }
  }

  /** Memory held by incoming QEMUs here (paused, not yet owned: the store does not count them). */
  private incomingMiB(): number {
    const holding: IncomingState[] = ['preparing', 'listening', 'loaded', 'postcopy'];
    return [...this.byId.values()].filter((e) => holding.includes(e.state)).reduce((sum, e) => sum + e.request.spec.memoryMiB, 0);
  }

  /** Refuses anyone but the source host of incoming migration `id` (an id that is gone is left to the route). */
  requireSource(id: string, caller: Caller): void {
    const entry = this.byId.get(id);
    if (entry) requireSourceHost(caller, entry.request.source, `incoming migration ${id}`);
  }

  get(id: string): Incoming {
    const entry = this.byId.get(id);
    if (!entry) throw new NotFoundError(`no incoming migration ${id} on this host (it was aborted, or this agent restarted)`);
    return entry;
  }

  /** Long poll: returns at the next change (loaded, post-copy, all pages in) or when the time is up. */
  async wait(id: string, timeoutMs: number): Promise<{ state: IncomingState; completed: boolean }> {
    const entry = this.get(id);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([entry.changed.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, Math.min(timeoutMs, 30_000))))]);
    clearTimeout(timer);
    return { state: entry.state, completed: entry.completed };
  }

  async running(id: string): Promise<boolean> {
    return this.get(id).destination.isRunning();
  }

  /** Post-copy only: the guest runs here already, its missing pages wait for a new stream from the source. */
  async recoverPostcopy(id: string): Promise<string> {
    const entry = this.get(id);
    if (entry.state !== 'running' && entry.state !== 'postcopy') throw new RefusedError(`incoming migration ${id} is ${entry.state}, not in post-copy; there is nothing to recover`);
    return entry.destination.recoverPostcopy();
  }

  async digest(id: string): Promise<string[]> {
    const entry = this.get(id);
    if (entry.state !== 'loaded') throw new RefusedError(`incoming migration ${id} is ${entry.state}; its memory can be compared only once loaded`);
    return entry.destination.memoryDigest();
  }

  /**
   * A loaded destination does not depend on the source to be told it won: once
   * the store says this host owns the VM, it resumes by itself (the source may
   * have died, or lost the answer to its resume call, right after the swap).
   */
  private watchOwnership(id: string): void {
    const timer = setInterval(async () => {
      const entry = this.byId.get(id);
      if (!entry || (entry.state !== 'loaded' && entry.state !== 'postcopy')) return clearInterval(timer);
      const vm = await this.ctx.state.vm(entry.request.spec.name).catch(() => undefined);
      if (vm?.owner !== this.ctx.node.name) return;
      clearInterval(timer);
      await this.resume(id, vm.token)
        .then(() => this.ctx.log(`incoming migration ${id}: ownership of ${vm.spec.name} moved here but the source did not say so; resumed it`))
        .catch((err: Error) => this.ctx.log(`incoming migration ${id}: could not resume on its own: ${err.message}`));
    }, 1000);
    timer.unref();
  }

  /**
   * A destination whose source ended the migration without reaching it (the link was cut when it
   * sent abort, or the answer to prepare was lost) would wait forever: once the store holds no
   * migration of this id and the VM is not this host's, it removes itself.
   */
  private watchForOrphan(id: string): void {
    const timer = setInterval(async () => {
      const entry = this.byId.get(id);
      if (!entry || entry.state === 'running' || entry.state === 'aborted') return clearInterval(timer);
      if (entry.resuming) return;
      const name = entry.request.spec.name;
      // A store that does not answer decides nothing.
      const [inFlight, vm] = await Promise.all([this.ctx.state.migration(name), this.ctx.state.vm(name)]).catch(() => [null, null] as const);
      if (inFlight === null || vm === null) return;
      if (inFlight?.id === id || vm?.owner === this.ctx.node.name) return;
      clearInterval(timer);
      this.ctx.log(`incoming migration ${id} of ${name}: its source ended it without telling this host (the store has no such migration; ${name} runs on ${vm?.owner ?? 'no host'}); removing the destination`);
      await this.abort(id).catch((err: Error) => this.ctx.log(`incoming migration ${id}: could not remove the orphaned destination: ${err.message}`));
    }, ORPHAN_CHECK_MS);
    timer.unref();
  }

  /** switchover: only with the token that made this host the owner. Asking twice is fine. */
  async resume(id: string, token: unknown): Promise<void> {
    const entry = this.get(id);
    const vm = await checkToken(this.ctx, entry.request.spec.name, token);
    if (vm.owner !== this.ctx.node.name) throw new StaleTokenError(vm.spec.name, Number(token), vm.token);
    if (entry.state === 'running') return;
    if (entry.resuming) return entry.resuming; // the source and the ownership watch may ask at the same moment
    if (entry.state !== 'loaded' && entry.state !== 'postcopy') throw new RefusedError(`incoming migration ${id} is ${entry.state}, not loaded; it cannot resume`);
    entry.resuming = entry.destination.resume();
    try {
      await entry.resuming;
    } finally {
      entry.resuming = undefined;
    }
    entry.state = 'running';
    await this.ctx.runtime.adoptRunning(entry.destination.instance);
    await this.ctx.runtime.forget(entry.request.spec.name, 'incoming');
    // An HA guest that arrives is guarded (and said to be) now, not at the next renewal; off the switchover's path.
    void this.ctx.guard?.().catch(() => undefined);
  }

  async finish(id: string): Promise<DestinationTimes> {
    const entry = this.get(id);
    await faultPoint(this.ctx, 'before-incoming-finish', entry.request.spec.name);
    const times = await entry.destination.finish();
    this.byId.delete(id);
    return times;
  }

  async abort(id: string): Promise<void> {
    const entry = this.byId.get(id);
    if (!entry) return;
    // A resume under way decides first: once the guest runs here, it is not aborted.
    await entry.resuming?.catch(() => undefined);
    if (entry.state === 'running') throw new RefusedError(`incoming migration ${id} already switched over; the VM runs here now`);
    entry.state = 'aborted';
    this.byId.delete(id);
    await entry.destination.abort();
    await this.ctx.runtime.forget(entry.request.spec.name, 'incoming');
    this.ctx.log(`incoming migration ${id} of ${entry.request.spec.name} aborted; destination removed`);
  }
}
