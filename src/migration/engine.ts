/**
 * The migration protocol: begin → prepare → perform → switchover → finish → confirm.
 *
 * Until switchover commits, any failure (destination dies, stream breaks,
 * cancel, timeout, refused switchover) rolls back: the destination is removed
 * and the guest runs on the source as before. After the commit the destination
 * owns the guest and the remaining phases only tidy up.
 */
import { replicatedDisks } from '../storage/replicated.ts';
import { performance } from 'node:perf_hooks';
import {
  MigrationCancelledError,
  MigrationError,
  MigrationRefusedError,
  MigrationRolledBackError,
  LostPagesError,
  PhaseFailure,
  CancelPendingError,
  RollbackIncompleteError,
  SourceLostError,
} from './errors.ts';
import { migrationIncompatibilities } from '../qemu/spec.ts';
import { differingChunks } from '../qemu/ram-scan.ts';
import type {
  DestinationSide,
  DiskNeed,
  DiskProgress,
  MigrationCapabilities,
  PreparedDestination,
  QemuMigrationSummary,
  SourceSide,
  SwitchoverHook,
} from './sides.ts';
import { ALWAYS_SWITCH } from './sides.ts';
import { PolicyController, diskCopyTimeoutMs, planMigration, type MigrationPlan, type PolicyAction } from './policy/policy.ts';
import {
  DEFAULT_PARAMS,
  UNLIMITED_BANDWIDTH,
  type MigrationParams,
  type MigrationPhase,
  type MigrationProgress,
  type DiskOutcome,
  type MigrationRecord,
  type PhaseTiming,
  type RamProgress,
  type SwitchoverTimeline,
} from './types.ts';
import { compareQemuVersions, formatQemuVersion, lostPagesDefect } from '../qemu/version.ts';
import { ACTIVE_STATUSES } from './qmp-migration.ts';

export interface MigrateOptions {
  source: SourceSide;
  destination: DestinationSide;
  /** The ownership decision at switchover; by default the destination always wins. */
  switchover?: SwitchoverHook;
  params?: Partial<MigrationParams>;
  signal?: AbortSignal;
  onProgress?: (progress: MigrationProgress) => void;
  /** A human-readable task log, one line per call. */
  log?: (line: string) => void;
}

/** `events` on both sides lets the destination report completion at once (no polling delay in the blackout). */
function destinationCapabilities(plan: MigrationPlan): MigrationCapabilities {
  const both = ['postcopy-ram', 'multifd', 'postcopy-preempt'];
  return { events: true, ...Object.fromEntries(both.map((c) => [c, plan.capabilities[c] ?? false])) };
}

/** return-path: the destination reports load failures back, so "completed" on the source means loaded. */
function sourceCapabilities(plan: MigrationPlan): MigrationCapabilities {
  return { events: true, 'return-path': true, ...plan.capabilities };
}

export async function migrate(options: MigrateOptions): Promise<MigrationRecord> {
  return new MigrationRun(options).run();
}

class MigrationRun {
  private readonly params: MigrationParams;
  private plan!: MigrationPlan;
  private policy!: PolicyController;
  private readonly startedAt = new Date();
  private readonly t0 = performance.now();
  private readonly timings: PhaseTiming[] = [];
  private current: MigrationPhase = 'begin';
  /** The last RAM sample: QEMU drops its figures once a stream is cancelled, the record keeps them. */
  private lastRam: RamProgress | undefined;
  private lastDisk: DiskProgress | undefined;
  /** Set when the switchover committed but the destination could not confirm the guest runs. */
  private unconfirmed: string | undefined;
  private diskNeeds: DiskNeed[] = [];
  private diskOutcomes: DiskOutcome[] = [];
  private readonly log: (line: string) => void;
  private readonly timeline: SwitchoverTimeline = { stoppedAt: null, loadedAt: null, verifiedAt: null, ownedAt: null, resumedAt: null };
  /** Set in begin when the source QEMU has a defect that loses pages (version.ts). */
  private lostPagesDefect: string | undefined;
  private warnedDefect = false;

  /** Rejects at the first event that must stop the migration; raced against every step before switchover. */
  private readonly interrupted: Promise<never>;

  constructor(private readonly o: MigrateOptions) {
    this.params = { ...DEFAULT_PARAMS, ...o.params };
    this.log = o.log ?? (() => undefined);
    this.interrupted = new Promise<never>((_, reject) => {
      o.source.lost.then((detail) => reject(new SourceLostError(o.source.spec.name, this.current, detail)));
      o.destination.lost.then((detail) => reject(new PhaseFailure(this.current, `the destination QEMU exited: ${detail}`)));
      const signal = o.signal;
      if (signal?.aborted) reject(new MigrationCancelledError());
      signal?.addEventListener('abort', () => reject(new MigrationCancelledError()), { once: true });
    });
    this.interrupted.catch(() => undefined);
  }

  async run(): Promise<MigrationRecord> {
    const vm = this.o.source.spec.name;
    this.log(`migration of ${vm}: begin`);
    await this.phase('begin', () => this.begin());

    try {
      const prepared = await this.phase('prepare', () => this.guarded(this.o.destination.prepare(destinationCapabilities(this.plan), this.diskNeeds)));
      this.diskOutcomes = prepared.disks;
      this.log(`destination ready and paused, listening on ${prepared.uri}`);
      for (const disk of prepared.disks)
        this.log(`disk ${disk.id}: ${disk.mode === 'shared' ? 'shared storage, the destination opens the same volume' : `copied to the destination over NBD${prepared.nbd?.tlsHostname ? ' with TLS' : ''}`}`);
      await this.phase('perform', () => this.perform(prepared));
      await this.phase('switchover', () => this.switchover());
    } catch (err) {
      return this.rollback(err);
    }

    // Past the commit: the destination owns the guest. Nothing below may resume the source, and the
    // source is retired whatever finish says: its RAM is older than what ran on the destination.
    let finishError: Error | undefined;
    try {
      await this.phase('finish', async () => {
        // The destination could not be asked: it owns the guest, and its agent runs it when it sees that.
        if (this.unconfirmed) return;
        // In post-copy the source still holds pages the destination has not pulled: it stays until they are all sent.
        if (this.policy.inPostcopy) await this.completePostcopy();
        const times = await this.o.destination.finish();
        this.timeline.loadedAt = times.loadedAt;
        this.timeline.resumedAt = times.resumedAt;
      });
    } catch (err) {
      finishError = err as Error;
    }
    const summary = await this.completedSummary();
    await this.phase('confirm', async () => {
      // The migration has succeeded; a source that does not tidy up cleanly does not change that.
      await this.o.source.retire().catch((err: Error) => this.log(`warning: the source did not retire cleanly: ${err.message}`));
    });
    if (finishError)
      throw new MigrationError(
        `'${vm}' switched over: the destination owns it and the source is retired, but the destination failed afterwards (${finishError.message}); ` +
          `the guest may still run there: see 'ferry vm show ${vm}', and start it on its owner if it does not`,
      );
    const record = this.record('completed', summary);
    record.switchover = { ...this.timeline, stoppedAt: summary.stoppedAt ?? null };
    if (this.unconfirmed) record.warnings = [this.unconfirmed];
    this.log(
      `completed in ${record.totalMs} ms: QEMU downtime ${record.downtimeMs} ms, ` +
        `${(record.bytes / 2 ** 20).toFixed(1)} MiB sent in ${record.rounds} round(s)`,
    );
    return record;
  }

  /** begin (source): is the VM migratable, and is the destination the same machine model? */
  private async begin(): Promise<void> {
    const sourceProblems = await this.o.source.checkMigratable();
    const problems = [...sourceProblems, ...migrationIncompatibilities(this.o.source.spec, this.o.destination.spec)];
    // A source QEMU that is not running cannot say its version: its problem says enough.
    if (!sourceProblems.length) problems.push(...(await this.qemuCompatibility()));
    if (!problems.length) {
      try {
        this.diskNeeds = await this.o.source.diskNeeds();
        problems.push(...(await this.o.destination.checkResources(this.diskNeeds)));
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    if (this.params.maxBandwidth !== 'unlimited' && !(this.params.maxBandwidth >= 1024 * 1024))
      problems.push(`bandwidth ${this.params.maxBandwidth} B/s is below 1 MiB/s; give a larger limit or 'unlimited'`);
    try {
      this.plan = planMigration(
        {
          name: this.params.policy,
          maxBandwidth: this.params.maxBandwidth,
          allowPostcopy: this.params.allowPostcopy,
          ...(this.params.multifd !== undefined ? { multifd: this.params.multifd } : {}),
          ...(this.params.postcopyPreempt !== undefined ? { postcopyPreempt: this.params.postcopyPreempt } : {}),
          ...(this.params.downtimeLimitMs !== undefined ? { downtimeLimitMs: this.params.downtimeLimitMs } : {}),
          ...(this.params.performTimeoutMs !== undefined ? { timeoutMs: this.params.performTimeoutMs } : {}),
        },
        this.o.source.spec.memoryMiB,
      );
      this.policy = new PolicyController(this.plan);
      if (this.plan.postcopyAllowed && this.lostPagesDefect)
        problems.push(`post-copy is refused: ${this.lostPagesDefect}, and post-copy switches over before a memory check could catch the loss; migrate without --allow-postcopy`);
      if (this.plan.postcopyAllowed && replicatedDisks(this.o.source.spec).length)
        problems.push(
          'post-copy is refused for a VM with replicated disks: the destination must take over the replication before its guest runs, ' +
            'which post-copy does not wait for; migrate without --allow-postcopy',
        );
    } catch (err) {
      problems.push((err as Error).message);
    }
    if (problems.length) throw new MigrationRefusedError(this.o.source.spec.name, problems);
    this.throwIfCancelled();
  }

  /**
   * begin: can the destination's QEMU load what the source's sends? The machine type must exist
   * there (a VM keeps the versioned type it was created with), and an older destination QEMU is a
   * backward migration, which QEMU supports only on a best-effort basis: it takes a flag.
   */
  private async qemuCompatibility(): Promise<string[]> {
    const problems: string[] = [];
    try {
      const [sourceVersion, destination] = await Promise.all([this.o.source.qemuVersion(), this.o.destination.qemu()]);
      const from = formatQemuVersion(sourceVersion);
      const to = formatQemuVersion(destination.version);
      this.lostPagesDefect = lostPagesDefect(sourceVersion, this.o.source.accel);
      const machine = this.o.source.spec.machine;
      if (/^pc-q35-\d+\.\d+$/.test(machine)) {
        if (!destination.machineTypes.includes(machine))
          problems.push(
            `machine type ${machine}: the VM runs it on QEMU ${from}, but the destination's QEMU ${to} does not provide it ` +
              `(newest there: ${destination.machineTypes[0] ?? 'none'}); upgrade QEMU on the destination, or choose a host with QEMU >= ${machine.slice('pc-q35-'.length)}`,
          );
      } else if (compareQemuVersions(sourceVersion, destination.version) !== 0) {
        problems.push(
          `machine type '${machine}' is an alias whose meaning changes with the QEMU version (source QEMU ${from}, destination ${to}); ` +
            'only a VM with a versioned machine type (pc-q35-X.Y) moves between different QEMU versions',
        );
      }
      if (compareQemuVersions(destination.version, sourceVersion) < 0 && !this.params.allowOlderDestination)
        problems.push(
          `the destination runs QEMU ${to}, older than the source's ${from}: a backward migration is best effort in QEMU ` +
            `(a device state it does not know fails the load); upgrade the destination, or pass --allow-older-destination to try anyway (a failed load leaves the VM on the source)`,
        );
      this.log(`QEMU ${from} on the source, ${to} on the destination; machine type ${machine}`);
    } catch (err) {
      problems.push(`cannot compare the two sides' QEMU: ${(err as Error).message}`);
    }
    return problems;
  }

  /**
   * perform, first step for local storage: mirror the copied disks until every
   * job is ready (from then on guest writes reach both sides), before any RAM moves.
   */
  private async mirrorDisks(prepared: PreparedDestination): Promise<void> {
    if (!prepared.nbd) return;
    const plan = this.plan;
    await this.guarded(this.o.source.startDiskMirror(prepared.nbd, plan.maxBandwidth === 'unlimited' ? undefined : plan.maxBandwidth));
    const totalAllocated = this.diskNeeds.filter((n) => prepared.nbd!.disks.includes(n.id)).reduce((sum, n) => sum + n.allocatedBytes, 0);
    // A limited link sets its own pace: twice the time the bytes need at that rate, at least.
    const paced = plan.maxBandwidth === 'unlimited' ? 0 : Math.round(((totalAllocated / plan.maxBandwidth) * 2 + 30) * 1000);
    const timeoutMs = Math.max(diskCopyTimeoutMs(plan.policy, totalAllocated), paced);
    this.log(`mirroring ${prepared.nbd.disks.join(', ')} (${(totalAllocated / 2 ** 20).toFixed(0)} MiB allocated) in active mode; RAM follows when the mirror is ready`);
    const started = performance.now();
    for (;;) {
      const disk = await this.guarded(this.o.source.diskProgress());
      this.lastDisk = disk;
      this.o.onProgress?.({ phase: 'perform', elapsedMs: this.elapsed(), disk });
      if (disk.ready) break;
      if (performance.now() - started > timeoutMs)
        throw new PhaseFailure(
          'perform',
          `the disk copy did not finish within ${Math.round(timeoutMs / 1000)} s (policy ${plan.policy}` +
            `${plan.maxBandwidth === 'unlimited' ? '' : `, bandwidth ${(plan.maxBandwidth / 2 ** 20).toFixed(0)} MiB/s`}); cancelled — is the link slower than expected?`,
        );
      await this.guarded(sleep(this.params.progressIntervalMs));
    }
    this.log(`disk mirror ready: ${(this.lastDisk!.copiedBytes / 2 ** 20).toFixed(1)} MiB copied in ${Math.round(performance.now() - started)} ms`);
  }

  /** perform (source): mirror disks, then stream RAM until the destination has loaded everything (or, in post-copy, holds the device state). */
  private async perform(prepared: PreparedDestination): Promise<void> {
    await this.mirrorDisks(prepared);
    const plan = this.plan;
    const bandwidth = plan.maxBandwidth === 'unlimited' ? UNLIMITED_BANDWIDTH : plan.maxBandwidth;
    await this.guarded(
      this.o.source.startMigration(prepared, sourceCapabilities(plan), {
        ...plan.parameters,
        'max-bandwidth': bandwidth,
        // A limit the user gave holds after a switch to post-copy too (QEMU's own default there is unlimited).
        ...(plan.postcopyAllowed && plan.maxBandwidth !== 'unlimited' ? { 'max-postcopy-bandwidth': bandwidth } : {}),
        'downtime-limit': plan.downtimeLimitMs,
      }),
    );
    this.log(
      `streaming RAM${prepared.tlsHostname ? ' over TLS' : ''}: policy ${plan.policy}, ` +
        `bandwidth ${plan.maxBandwidth === 'unlimited' ? 'unlimited' : `${(bandwidth / 2 ** 20).toFixed(0)} MiB/s`}, ` +
        `downtime limit ${plan.downtimeLimitMs} ms, timeout ${Math.round(plan.timeoutMs / 1000)} s` +
        `${plan.capabilities['xbzrle'] ? ', XBZRLE' : ''}${plan.postcopyAllowed ? ', post-copy allowed' : ''}`,
    );

    let ready = false;
    // The engine enforces the timeout itself (and cancels); the destination's wait only has to outlast it.
    const destinationReady = Promise.race([this.o.destination.incomingComplete(plan.timeoutMs + 60_000), this.o.destination.postcopyReady()]).then(() => {
      ready = true;
    });
    destinationReady.catch(() => undefined);
    const deadline = performance.now() + plan.timeoutMs;
    let lastRound = 0;
    while (!ready) {
      const ram = await this.guarded(this.o.source.progress());
      this.lastRam = ram;
      // A mirror that fails while RAM streams must stop the migration too (its jobs end at pre-switchover).
      if (prepared.nbd && (ram.qemuStatus === 'active' || ram.qemuStatus === 'setup')) this.lastDisk = await this.guarded(this.o.source.diskProgress());
      this.o.onProgress?.({ phase: 'perform', elapsedMs: this.elapsed(), ram, ...(this.lastDisk ? { disk: this.lastDisk } : {}) });
      if (ram.qemuStatus === 'failed' || ram.qemuStatus === 'cancelled') {
        const summary = await this.o.source.summary();
        // QEMU 7.2 said so (a TLS handshake error); QEMU 10 sees the destination close the stream before any page went.
        // Only before any page went: a destination that dies mid-stream also ends it with a TLS error.
        const refusedAtTls = !summary.bytes && (/TLS (channel|handshake)/i.test(summary.error ?? '') || (Boolean(prepared.tlsHostname) && /reset by peer|end of file|Broken pipe/i.test(summary.error ?? '')));
        const hint = refusedAtTls
          ? '; the destination may have refused this host\'s certificate (it lets in only the source host it was prepared for; its QEMU log names the certificate it refused)'
          : '';
        throw new PhaseFailure('perform', `the migration stream ${ram.qemuStatus}${summary.error ? `: ${summary.error}` : ''}${hint}`);
      }
      if (ram.round > lastRound && ram.qemuStatus === 'active') {
        if (lastRound > 0) {
          const known = this.policy.steps.length;
          const actions = this.policy.onRound({ ...ram, elapsedMs: this.elapsed(), downtimeLimitMs: plan.downtimeLimitMs });
          for (const step of this.policy.steps.slice(known)) this.log(`policy: ${step.reason}`);
          for (const action of actions) await this.guarded(this.apply(action));
        }
        lastRound = ram.round;
      }
      if (performance.now() > deadline && !this.policy.inPostcopy)
        throw new PhaseFailure('perform', `the RAM copy did not finish within ${Math.round(plan.timeoutMs / 1000)} s (policy ${plan.policy}); cancelled`);
      await this.guarded(Promise.race([destinationReady, sleep(this.params.progressIntervalMs)]));
    }
  }

  private async apply(action: PolicyAction): Promise<void> {
    switch (action.kind) {
      case 'set-downtime-limit':
        this.plan = { ...this.plan, downtimeLimitMs: action.ms };
        return this.o.source.setParameters({ 'downtime-limit': action.ms });
      case 'throttle':
        return this.o.source.setParameters({
          'cpu-throttle-initial': action.initialPercent,
          'cpu-throttle-increment': action.incrementPercent,
          'throttle-trigger-threshold': action.triggerThresholdPercent,
        });
      case 'start-postcopy':
        return this.o.source.startPostcopy();
    }
  }

  /** switchover: the destination resumes only once the hook has said yes; otherwise the source resumes (in rollback). */
  private async switchover(): Promise<void> {
    this.throwIfCancelled();
    if (!this.policy.inPostcopy && this.mustVerifyMemory()) {
      await this.verifyMemory();
      this.timeline.verifiedAt = Date.now();
    }
    const hook: SwitchoverHook = this.o.switchover ?? ALWAYS_SWITCH;
    if (!(await hook.commit())) throw new PhaseFailure('switchover', 'the switchover was refused (ownership not granted to the destination)');
    this.timeline.ownedAt = Date.now();
    try {
      await this.o.destination.resume();
    } catch (err) {
      // After the commit an error does not prove the guest did not run there: if it runs, it stays.
      const running = await this.o.destination.isRunning().catch(() => undefined);
      if (running) {
        this.log(`resume reported "${(err as Error).message}", but the guest runs on the destination: keeping it there`);
        return;
      }
      // The source may run again only once the destination is gone for sure, and the ownership is back.
      const gone = running === false && (await this.o.destination.abort().then(() => true, () => false));
      if (gone) {
        await hook.revert?.();
        throw new PhaseFailure('switchover', `the destination could not resume: ${(err as Error).message}`);
      }
      this.unconfirmed =
        `the destination took ownership but did not confirm that the guest runs (${(err as Error).message}); ` +
        'the source is stopped, and the destination runs the guest as soon as its agent sees the ownership';
      this.log(`warning: ${this.unconfirmed}`);
      return;
    }
    this.log('switched over: guest running on the destination');
  }

  /**
   * Whether to compare RAM before switching over (MigrationParams.verifyMemory). It runs in the
   * guest's pause, so 'auto' checks only where a known defect of the source QEMU loses pages.
   */
  private mustVerifyMemory(): boolean {
    if (this.params.verifyMemory !== 'auto') return this.params.verifyMemory === 'always';
    if (!this.lostPagesDefect) return false;
    if (!this.warnedDefect) this.log(`warning: ${this.lostPagesDefect}; the guest's RAM is compared in the pause, which lengthens it`);
    this.warnedDefect = true;
    return true;
  }

  /** Both sides are paused with the same RAM, or the migration lost pages and must not switch over. */
  private async verifyMemory(): Promise<void> {
    const started = performance.now();
    const [[sourceView, ...source], [destinationView, ...destination]] = await Promise.all([this.o.source.memoryDigest(), this.o.destination.memoryDigest()]);
    if (sourceView !== destinationView) {
      // A QEMU started by an older ferry (pmemsave) and a new one (memfd) read RAM differently.
      this.log(`memory check skipped: the two sides read guest RAM differently (${sourceView}, ${destinationView})`);
      return;
    }
    const bad = differingChunks(source, destination);
    if (bad.length)
      throw new LostPagesError(`memory check failed: ${bad.length} of ${source.length} MiB differ between source and destination (first at ${bad[0]} MiB); QEMU lost pages in the stream`);
    this.log(`memory check: all ${source.length} MiB identical on both sides (${Math.round(performance.now() - started)} ms, guest paused)`);
  }

  /**
   * finish, post-copy: wait until the destination has every page. The guest already runs there and
   * the source holds the pages it has not pulled yet, so a broken link is not a rollback: QEMU's
   * postcopy recovery reconnects the two (the guest waits on a missing page meanwhile). A stream
   * that stops moving for POSTCOPY_STALL_MS is broken off (migrate-pause) to be recovered the same
   * way; recovery is tried every second until the link is back or the plan's timeout.
   */
  private async completePostcopy(): Promise<void> {
    const deadline = performance.now() + this.plan.timeoutMs;
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    // Asking the destination can fail while the link is down (between hosts its agent is behind
    // the same link): the wait is asked again as long as the source still holds pages to send.
    const wait: { outcome: 'waiting' | 'done' | Error; again(): void } = {
      outcome: 'waiting',
      again: () => {
        wait.outcome = 'waiting';
        this.o.destination.incomingComplete(left()).then(
          () => (wait.outcome = 'done'),
          (err: Error) => (wait.outcome = err),
        );
      },
    };
    wait.again();
    let lastMoved = performance.now();
    let lastBytes = -1;
    let paused = false;
    let lastAskError = '';
    for (;;) {
      if (wait.outcome === 'done') return;
      const ram = await this.o.source.progress().catch(() => undefined);
      const failed = wait.outcome;
      if (failed instanceof Error) {
        // The source still sends, or has sent all: the destination is worth asking again until the deadline.
        const unfinished = ram !== undefined && (ram.qemuStatus.startsWith('postcopy') || ram.qemuStatus === 'completed');
        if (!unfinished || performance.now() > deadline) throw failed;
        if (failed.message !== lastAskError) this.log(`post-copy: could not hear from the destination (${failed.message}); asking again`);
        lastAskError = failed.message;
        wait.again();
      }
      if (performance.now() > deadline) throw new Error(`post-copy did not complete within ${Math.round(this.plan.timeoutMs / 1000)} s`);
      if (ram?.qemuStatus === 'postcopy-active') {
        if (paused) this.log('post-copy resumed: the source sends the rest of the pages again');
        paused = false;
        if (ram.transferredBytes !== lastBytes) [lastBytes, lastMoved] = [ram.transferredBytes, performance.now()];
        else if (ram.remainingBytes > 0 && performance.now() - lastMoved > POSTCOPY_STALL_MS) {
          this.log(`post-copy: the stream has not moved for ${POSTCOPY_STALL_MS / 1000} s with ${(ram.remainingBytes / 2 ** 20).toFixed(1)} MiB left; breaking it off to recover it`);
          await this.o.source.pausePostcopy().catch((err: Error) => this.log(`migrate-pause: ${err.message}`));
          lastMoved = performance.now();
        }
      } else if (ram?.qemuStatus === 'postcopy-paused') {
        if (!paused) this.log('post-copy link lost: the guest runs on the destination and waits for the pages still on the source; reconnecting');
        paused = true;
        try {
          await this.o.source.resumePostcopy(await this.o.destination.recoverPostcopy());
          lastMoved = performance.now();
        } catch (err) {
          this.log(`post-copy recovery not possible yet (${(err as Error).message}); trying again in 1 s`);
          await sleep(1000);
          continue;
        }
      } else if (ram?.qemuStatus === 'failed') {
        throw new Error('the post-copy stream failed on the source; the pages it still held are lost');
      }
      await sleep(this.params.progressIntervalMs);
    }
  }

  /**
   * The source's last word on the stream. The destination can finish loading before the source
   * marks its side completed (it still waits for the return path), and only a completed stream
   * reports its downtime: ask until it says so, for a short while.
   */
  private async completedSummary(): Promise<QemuMigrationSummary> {
    const deadline = performance.now() + SOURCE_COMPLETION_WAIT_MS;
    for (;;) {
      const summary = await this.o.source.summary();
      if (!ACTIVE_STATUSES.has(summary.status) || performance.now() > deadline) return summary;
      await sleep(20);
    }
  }

  private async rollback(err: unknown): Promise<never> {
    if (err instanceof SourceLostError) {
      await this.o.destination.abort().catch(() => undefined);
      throw err;
    }
    const reason = err instanceof Error ? err.message : String(err);
    const failedPhase = err instanceof PhaseFailure ? err.phase : this.current;
    this.log(`${failedPhase} failed: ${reason}; rolling back`);
    // Destination first. If it cannot confirm, it still cannot run: ownership never left the source.
    await this.o.destination
      .abort()
      .catch((e: Error) => this.log(`the destination did not confirm its removal (${e.message}); it cannot run the guest without the ownership, which stays here`));
    try {
      await this.o.source.cancelAndResume();
    } catch (resumeErr) {
      // The source QEMU died during the rollback (its QMP closed): there is nothing left to resume.
      const exited = await Promise.race([this.o.source.lost, new Promise<undefined>((r) => setTimeout(() => r(undefined), 500))]);
      if (exited !== undefined) throw new SourceLostError(this.o.source.spec.name, failedPhase, exited);
      throw new RollbackIncompleteError(this.o.source.spec.name, failedPhase, (resumeErr as Error).message, resumeErr instanceof CancelPendingError);
    }
    const summary = await this.o.source.summary().catch(() => undefined);
    const record = this.record('rolled-back', summary, { phase: failedPhase, reason, ...(err instanceof LostPagesError ? { lostPages: true } : {}) });
    this.log('rolled back: guest running on the source, destination removed');
    throw new MigrationRolledBackError(record);
  }

  private async phase<T>(phase: MigrationPhase, body: () => Promise<T>): Promise<T> {
    this.current = phase;
    const t = performance.now();
    this.o.onProgress?.({ phase, elapsedMs: this.elapsed() });
    try {
      return await body();
    } finally {
      this.timings.push({ phase, ms: Math.round(performance.now() - t) });
    }
  }

  /** Races a step against cancel, the source dying and the destination dying. */
  private guarded<T>(step: Promise<T>): Promise<T> {
    step.catch(() => undefined);
    return Promise.race([step, this.interrupted]);
  }

  private throwIfCancelled(): void {
    if (this.o.signal?.aborted) throw new MigrationCancelledError();
  }

  private elapsed(): number {
    return Math.round(performance.now() - this.t0);
  }

  private record(outcome: MigrationRecord['outcome'], summary: QemuMigrationSummary | undefined, failure?: MigrationRecord['failure']): MigrationRecord {
    return {
      vm: this.o.source.spec.name,
      outcome,
      startedAt: this.startedAt.toISOString(),
      totalMs: this.elapsed(),
      attempts: 1,
      earlierAttempts: [],
      totalMsAllAttempts: this.elapsed(),
      downtimeMs: outcome === 'completed' ? (summary?.downtimeMs ?? null) : null,
      setupMs: summary?.setupMs ?? null,
      bytes: summary?.bytes || this.lastRam?.transferredBytes || 0,
      disks: this.diskOutcomes,
      diskBytes: this.lastDisk?.copiedBytes ?? 0,
      rounds: summary?.rounds || this.lastRam?.round || 0,
      phases: this.timings,
      params: this.params,
      plan: { policy: this.plan.policy, capabilities: this.plan.capabilities, downtimeLimitMs: this.plan.downtimeLimitMs, maxBandwidth: this.plan.maxBandwidth, timeoutMs: this.plan.timeoutMs, postcopyAllowed: this.plan.postcopyAllowed },
      steps: this.policy.steps,
      postcopy: this.policy.inPostcopy,
      ...(failure ? { failure } : {}),
    };
  }
}

/** A post-copy stream that sends nothing for this long, with pages left, is taken as a broken link. */
const POSTCOPY_STALL_MS = 3000;

/** How long the source may take to call a stream completed once the destination has loaded it. */
const SOURCE_COMPLETION_WAIT_MS = 3000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
