/**
 * `ferry agent`: the daemon of one host. It joins the cluster under a lease,
 * recovers what an earlier run left, and serves the API.
 */
import { X509Certificate } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { ClusterState, KEYS, type HostRecord } from '../cluster/model.ts';
import { CERTIFICATE_WARNING_DAYS, loadIdentity } from '../cluster/pki.ts';
import { LeaseExpiredError, StoreNoQuorumError, type Store } from '../cluster/store/types.ts';
import { BridgeTapAttacher } from '../net/tap.ts';
import { resolvePlacement } from './networks.ts';
import { loadClusterConfig, openHostStore, type ClusterConfig, type NodeConfig } from './config.ts';
import type { AgentContext } from './context.ts';
import { IncomingMigrations } from './incoming.ts';
import { reconcile } from './reconcile.ts';
import { fingerprintOf, RevocationList } from './revocation.ts';
import { ReplicationManager } from './replication.ts';
import { ConsoleRelay } from './console.ts';
import { VncRelay } from './vnc.ts';
import { removeStaleImports } from './images.ts';
import { routes } from './routes.ts';
import { haTiming } from '../cluster/ha/timing.ts';
import { HaRecords } from '../cluster/ha/records.ts';
import { liftOwnFences } from './storage-fencing.ts';
import { WatchdogClient } from './watchdog-client.ts';
import { startHaManager } from './ha.ts';
import { LocalRuntime } from './runtime.ts';
import { serve } from './server.ts';
import { localQemuBuild } from '../qemu/host-probe.ts';
import { advertiseHostCpu, describeJoin } from './cpu.ts';
import { AgentMetrics } from '../api/metrics.ts';
import { DEFAULT_API_PORT, serveApi } from '../api/server.ts';
import type { HostCpu } from '../cluster/cpu.ts';
import { formatQemuVersion } from '../qemu/version.ts';

/** This host's certificate was revoked: it was removed from the cluster. */
export class HostRemovedError extends Error {
  override name = 'HostRemovedError';
  constructor(host: string, at: string, reason: string) {
    super(`host '${host}' was removed from the cluster at ${at} (${reason}): its certificate is revoked; to bring it back, join it again (ferry join) and install the new bundle`);
  }
}

export interface RunningAgent {
  ctx: AgentContext;
  stop(): Promise<void>;
}

export async function runAgent(node: NodeConfig): Promise<RunningAgent> {
  const cluster: ClusterConfig = await loadClusterConfig(node.clusterDir);
  const identity = await loadIdentity(node.certDir);
  const store = await openHostStore(node, cluster, identity);
  const log = (line: string) => console.log(`${new Date().toISOString()} ${node.name}: ${line}`);
  const attacher = new BridgeTapAttacher(node.netns, (nic) => resolvePlacement(ctx, nic));
  const runtime = new LocalRuntime(node.stateDir, node.runDir, attacher, log);
  const ctx = { node, identity, state: new ClusterState(store), runtime, log } as AgentContext;
  ctx.replication = new ReplicationManager(ctx);
  ctx.consoles = new ConsoleRelay(runtime, log);
  ctx.displays = new VncRelay(runtime, log);
  ctx.revocations = new RevocationList(ctx.state, log);
  await ctx.revocations.start();
  const mine = fingerprintOf(identity.cert);
  const revoked = ctx.revocations.check(mine);
  if (revoked) throw new HostRemovedError(node.name, revoked.revokedAt, revoked.reason);
  const before = await ctx.state.member(node.name);
  if (before && before.fingerprint !== mine) {
    // This host was joined again (a renewal): its earlier certificate is no good to anyone now.
    await ctx.state.revokeCertificate({ fingerprint: before.fingerprint, name: node.name, revokedAt: new Date().toISOString(), reason: 'renewed: the host runs with a new certificate' });
    log(`this host's earlier certificate (sha256 ${before.fingerprint.slice(0, 16)}…) is revoked: it runs with a new one`);
  }
  const storageAddress = node.storageAddress ?? node.address;
  if (!before || before.fingerprint !== mine || before.address !== storageAddress)
    await ctx.state.putMember({ name: node.name, fingerprint: mine, since: before?.fingerprint === mine ? before.since : new Date().toISOString(), address: storageAddress });

  // A VM that stopped by itself is not running: its record says so (the HA manager starts it again if asked to).
  runtime.onUnexpectedExit = async (name) => {
    const vm = await ctx.state.vm(name).catch(() => undefined);
    if (!vm || vm.owner !== node.name || vm.desired !== 'running') return;
    if ((await ctx.state.updateVm(vm, { desired: 'stopped' }).catch(() => undefined)) !== undefined) log(`'${name}' is recorded as stopped`);
  };
  const stallWatch = watchEventLoop(log);
  const cpu = await advertiseHostCpu(node); // before any QEMU starts here: they hide what the host hides
  ctx.metrics = new AgentMetrics(ctx);
  await reconcile(ctx);
  await removeStaleImports(ctx);
  ctx.replication.start();
  const membership = await keepMembership(ctx, store, mine, cpu);
  const servers = await serve(ctx, routes(ctx, new IncomingMigrations(ctx), cluster));
  const api = node.apiPort === 0 ? undefined : await serveApi(ctx, node.apiPort ?? DEFAULT_API_PORT);
  const ha = startHaManager(ctx, store);
  log(`agent up at https://${node.address}:${node.port}${node.socket ? ` and ${node.socket}` : ''} (store: ${cluster.store.kind})${api ? `; REST API at https://${node.address}:${node.apiPort ?? DEFAULT_API_PORT} and ${api.socket}` : ''}`);
  return {
    ctx,
    async stop() {
      clearInterval(stallWatch);
      ctx.revocations.stop();
      await ha.stop();
      await membership.stop();
      await ctx.replication.stop();
      for (const s of servers) s.close();
      await api?.close();
      await runtime.shutdownAll();
      await store.close();
    },
  };
}

/**
 * The host record lives under a lease renewed every third of its TTL. If the
 * agent cannot renew for most of the TTL (measured on the local monotonic
 * clock, not trusted to the store client) it stops its guests before the lease
 * can expire elsewhere: the self-fencing rule of sanlock and Proxmox.
 */
/**
 * Writes down when this process did not run its timers for a while (a synchronous call that
 * blocked, a machine starved of CPU): every API request and lease renewal waited meanwhile.
 */
function watchEventLoop(log: (line: string) => void): NodeJS.Timeout {
  let last = performance.now();
  return setInterval(() => {
    const now = performance.now();
    if (now - last > EVENT_LOOP_STALL_MS) log(`the agent did not run for ${Math.round(now - last)} ms (event loop blocked or starved of CPU)`);
    last = now;
  }, 250).unref();
}

const EVENT_LOOP_STALL_MS = 2_000;

/** Every how many renewals an agent looks for storage fences of its own it has not lifted (about a minute). */
const FENCE_LOOK_EVERY = 18;

/** How soon a failed lease renewal is tried again. */
const RENEW_RETRY_MS = 500;

/** How often the time since the last lease renewal is checked against the fencing deadline. */
const FENCE_CHECK_MS = 250;

/** `fingerprint`: this host's certificate's, checked against the revoked list at every renewal. */
async function keepMembership(ctx: AgentContext, store: Store, fingerprint: string, cpu: HostCpu): Promise<{ stop(): void }> {
  const { node } = ctx;
  const ttl = node.leaseTtlSeconds;
  const timing = haTiming(ttl);
  const qemu = await localQemuBuild();
  const record: HostRecord = {
    name: node.name,
    qemu: { version: formatQemuVersion(qemu.version), machineTypes: qemu.machineTypes },
    url: `https://${node.address}:${node.port}`,
    address: node.address,
    memoryMiB: node.memoryMiB,
    ...(node.socket ? { socket: node.socket } : {}),
    startedAt: new Date().toISOString(),
    certificateExpires: new Date(new X509Certificate(ctx.identity.cert).validTo).toISOString(),
    cpu,
  };
  const daysLeft = (Date.parse(record.certificateExpires!) - Date.now()) / 86_400_000;
  if (daysLeft < CERTIFICATE_WARNING_DAYS)
    ctx.log(`warning: this host's certificate expires in ${Math.max(0, Math.floor(daysLeft))} days (${record.certificateExpires}); renew it: ferry join --name ${node.name} ... on the CA's machine, then install the new bundle`);
  const register = async () => {
    const lease = await store.grantLease(ttl);
    await store.put(KEYS.host(node.name), JSON.stringify(record), { lease });
    return lease;
  };
  const watchdog = node.watchdog ? new WatchdogClient(node.watchdog.socket, ctx.log) : undefined;
  if (!watchdog) ctx.log('no watchdog configured (node.json "watchdog"): HA guests here are guarded by self-fencing alone, which a frozen agent cannot do');
  const ha = new HaRecords(store);
  let guarded: number[] = [];
  let listed = false;
  let advertised: string | undefined; // what the store was last told (undefined: nothing yet, so the first list is written even if empty)
  /** Cluster maintenance, as last read: an agent stopped meanwhile disarms its watchdog (nobody recovers its guests). */
  let maintenance = false;
  /**
   * The QEMUs the HA manager would start elsewhere if this host went silent: the watchdog guards them,
   * and then the store is told which VMs are guarded (the manager recovers no running VM of a dead
   * host that is not in that list: a VM put under HA while its host was frozen was never guarded).
   */
  /** The watchdog's deadline moved on from the last renewal, with the guests it guarded so far. */
  const petWatchdog = () => {
    if (watchdog && listed) watchdog.pet(Math.max(1, Math.round(timing.watchdogMs - (performance.now() - lastRenewed))), guarded);
  };
  const guard = async (): Promise<void> => {
    if (!watchdog) return;
    const deadline = () => Math.max(1, Math.round(timing.watchdogMs - (performance.now() - lastRenewed)));
    petWatchdog(); // at once, with what it guarded: a slow read below must not delay it
    try {
      const [resources, inMaintenance] = await Promise.all([ha.resources(), ha.maintenance()]);
      maintenance = inMaintenance !== undefined;
      const names = new Set(resources.filter((r) => r.request === 'started' || r.request === 'stopped').map((r) => r.vm));
      const running = [...ctx.runtime.pids()].filter(([name]) => names.has(name));
      guarded = running.map(([, pid]) => pid);
      listed = true;
      watchdog.pet(deadline(), guarded);
      await watchdog.firstAnswer(1000);
      // Claimed only while the watchdog answers: a host whose watchdog is gone guards nothing.
      const claimed = watchdog.connected ? running.map(([name]) => name).sort() : [];
      if (claimed.join('\n') !== advertised) {
        await ha.putGuarded(node.name, claimed);
        advertised = claimed.join('\n');
      }
    } catch {
      /* the store answered the renewal a moment ago: the watchdog keeps the last list until it answers again */
    }
  };
  /** Guests this host stopped when it fenced itself: recorded as stopped once the store answers again. */
  const fencedVms = new Set<string>();
  const recordFenced = async (): Promise<void> => {
    for (const name of fencedVms) {
      const vm = await ctx.state.vm(name);
      if (vm?.owner === node.name && vm.desired === 'running' && !ctx.runtime.get(name)) await ctx.state.updateVm(vm, { desired: 'stopped' });
      fencedVms.delete(name);
    }
  };
  let lease = await register();
  let lastRenewed = performance.now();
  void describeJoin(ctx, record).then(ctx.log, (err: Error) => ctx.log(`CPU: ${err.message}`));
  /**
   * Storage fences of this host (set while it was thought lost) are lifted once it runs only its own
   * guests: looked for at registration, then at every FENCE_LOOK_EVERY-th renewal (a recovery that
   * fenced and then died may leave one behind), out of band — a slow storage backend must not hold
   * up the renewals and the watchdog.
   */
  let fencesLeft = true;
  let lifting = false;
  let renewals = 0;
  const liftFences = () => {
    if (lifting) return;
    lifting = true;
    void liftOwnFences(ctx)
      .then((none) => (fencesLeft = !none), (err: Error) => ctx.log(`storage fences: ${err.message}`))
      .finally(() => (lifting = false));
  };
  await guard();
  liftFences();
  ctx.guard = guard;
  let fenced = false;
  let renewing = false;
  /** The store said no quorum can exist (StoreNoQuorumError.impossibleSince), and has not had one since. */
  let quorumLost = false;
  const renew = async () => {
    const revoked = ctx.revocations.check(fingerprint);
    if (revoked) {
      // Removed from the cluster (it owned no VM then): it takes no further part, and takes its record
      // away (if its store user is gone already, its lease runs out instead).
      ctx.log(new HostRemovedError(node.name, revoked.revokedAt, revoked.reason).message);
      clearInterval(renewTimer);
      clearTimeout(retryTimer);
      clearInterval(fenceTimer);
      await ctx.state.deleteOwnHostRecord(node.name).catch(() => undefined);
      return;
    }
    try {
      const renewStarted = performance.now();
      try {
        await store.keepAlive(lease);
      } catch (err) {
        if (!(err instanceof LeaseExpiredError)) throw err;
        lease = await register();
        ctx.log('host lease had expired; registered again');
        fencesLeft = true;
      }
      lastRenewed = performance.now();
      if (ctx.metrics) Object.assign(ctx.metrics.lease, { renewedAt: lastRenewed, renewMs: lastRenewed - renewStarted });
      fenced = false;
      await guard();
      if (fencesLeft || ++renewals % FENCE_LOOK_EVERY === 0) liftFences();
      if (fencedVms.size) await recordFenced().catch((err: Error) => ctx.log(`could not record the fenced guests as stopped yet: ${err.message}`));
      if (quorumLost) ctx.log('the store has a quorum again: the host lease is renewed');
      quorumLost = false;
    } catch (err) {
      if (err instanceof StoreNoQuorumError && err.impossibleSince !== undefined) {
        // No leader anywhere: no lease can expire before then plus its TTL, and no host can take a
        // guest over (cluster/store/types.ts). That moment counts as a renewal; the store is not read.
        lastRenewed = Math.max(lastRenewed, err.impossibleSince);
        petWatchdog();
        if (!quorumLost) ctx.log(`${err.message}. This host keeps its guests running: no other host can take them over until a quorum is back, and then its lease runs for its full TTL again`);
        quorumLost = true;
        return;
      }
      ctx.log(`cannot renew the host lease for ${Math.round(performance.now() - lastRenewed)} ms: ${(err as Error).message}`);
      // Tried again soon, not a whole interval later: two failed renewals use up the self-fence
      // deadline, and a store that lost its leader a moment ago may say more in a second.
      retryTimer = setTimeout(tick, RENEW_RETRY_MS);
    }
  };
  let retryTimer: NodeJS.Timeout | undefined;
  const tick = () => {
    clearTimeout(retryTimer);
    if (renewing) return; // a store that does not answer: the call in flight has its own timeout
    renewing = true;
    void renew().finally(() => (renewing = false));
  };
  const renewTimer = setInterval(tick, timing.renewMs);
  // Watched apart from the renewals: a renewal that hangs (a store cut off without a reset)
  // must not hold the fencing back until the lease has expired elsewhere.
  const fenceTimer = setInterval(async () => {
    const silentMs = performance.now() - lastRenewed;
    if (fenced || silentMs <= timing.selfFenceMs) return;
    fenced = true;
    ctx.log(`self-fencing: the host lease was not renewed for ${Math.round(silentMs)} ms; stopping all guests of this host before it expires`);
    for (const vm of await ctx.runtime.list()) {
      await ctx.runtime.stop(vm.name, true).catch(() => undefined);
      fencedVms.add(vm.name);
    }
  }, FENCE_CHECK_MS);
  return {
    stop: async () => {
      clearInterval(renewTimer);
      clearTimeout(retryTimer);
      clearInterval(fenceTimer);
      // In cluster maintenance the manager recovers nothing: the store is told first that this host
      // guards nothing (so that nothing is recovered after the maintenance either, while it may run
      // them unguarded), then the watchdog lets go, and the agent may be away as long as it takes.
      // Asked afresh: an admin may stop the agent right after switching the maintenance on.
      if (watchdog && guarded.length) maintenance = await ha.maintenance().then((m) => m !== undefined, () => maintenance);
      if (watchdog && maintenance && guarded.length) {
        try {
          await ha.putGuarded(node.name, []);
          guarded = [];
          ctx.log('cluster maintenance: the watchdog is disarmed while this agent is away; its guests run unguarded until it is back');
        } catch (err) {
          ctx.log(`cluster maintenance, but the store could not be told that this host guards nothing (${(err as Error).message}): the watchdog stays armed`);
        }
      }
      // Guests left running for the next agent to adopt stay guarded: it must be back before the deadline.
      if (watchdog && !guarded.length) watchdog.disarm();
      else if (watchdog) {
        const left = Math.max(1, Math.round(timing.watchdogMs - (performance.now() - lastRenewed)));
        watchdog.pet(left, guarded);
        ctx.log(`the watchdog keeps guarding ${guarded.length} HA guest(s): an agent must pet it within ${left} ms or they are killed`);
      }
      watchdog?.close();
    },
  };
}
