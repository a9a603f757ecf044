/**
 * Prometheus metrics of one agent (`GET /metrics` on its REST API, with a token): the migrations it
 * ran as the source (by outcome and policy; total time, QEMU downtime and bytes), its VMs by state,
 * its lease (age, renewal latency), the store's latency, its jobs by kind and state, and the drains'
 * VMs by state. Counters and histograms count from the agent's start, as Prometheus expects.
 */
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Job } from '../cluster/model.ts';
import { MoveRecords } from '../cluster/moves/records.ts';
import type { MigrationRecord } from '../migration/types.ts';
import type { AgentContext } from '../agent/context.ts';

/** What the agent tells the metrics as it goes. */
export interface LeaseTimes {
  /** performance.now() of the last renewal. */
  renewedAt?: number;
  /** How long the last renewal took, ms. */
  renewMs?: number;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly lease: LeaseTimes = {};
  private readonly migrations: Counter<'outcome' | 'policy'>;
  private readonly migrationSeconds: Histogram<'outcome'>;
  private readonly downtimeSeconds: Histogram;
  private readonly migrationBytes: Counter<'kind'>;
  private readonly blackoutSeconds: Histogram;

  constructor(private readonly ctx: AgentContext) {
    const registers = [this.registry];
    this.migrations = new Counter({ name: 'ferry_migrations_total', help: 'Live migrations this host ran as the source, by outcome and policy', labelNames: ['outcome', 'policy'], registers });
    this.migrationSeconds = new Histogram({
      name: 'ferry_migration_duration_seconds',
      help: 'Total time of each migration this host ran as the source, all its attempts',
      labelNames: ['outcome'],
      buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300],
      registers,
    });
    this.downtimeSeconds = new Histogram({
      name: 'ferry_migration_downtime_seconds',
      help: "QEMU's downtime (the guest paused) of each completed migration",
      buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2],
      registers,
    });
    this.blackoutSeconds = new Histogram({
      name: 'ferry_migration_blackout_seconds',
      help: "The longest gap a probing client saw in each migration this host ran (reported by 'ferry vm migrate' when it probes)",
      buckets: [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5],
      registers,
    });
    this.migrationBytes = new Counter({ name: 'ferry_migration_bytes_total', help: "Bytes the migrations sent in their last attempt (a record keeps no earlier attempt's): RAM over the stream, disks by their mirrors", labelNames: ['kind'], registers });
    const state = ctx.state;
    const me = ctx.node.name;
    new Gauge({
      name: 'ferry_vms',
      help: "VMs this host owns, by the state the store records (desired) and whether its QEMU runs here",
      labelNames: ['desired', 'running'],
      registers,
      async collect() {
        this.reset();
        for (const vm of (await state.vms()).filter((v) => v.owner === me)) this.inc({ desired: vm.desired, running: String(Boolean(ctx.runtime.get(vm.spec.name))) });
      },
    });
    const lease = this.lease;
    new Gauge({
      name: 'ferry_lease_age_seconds',
      help: "Seconds since this host's lease was last renewed",
      registers,
      collect() {
        if (lease.renewedAt !== undefined) this.set((performance.now() - lease.renewedAt) / 1000);
      },
    });
    new Gauge({
      name: 'ferry_lease_renew_seconds',
      help: "How long the last renewal of this host's lease took",
      registers,
      collect() {
        if (lease.renewMs !== undefined) this.set(lease.renewMs / 1000);
      },
    });
    new Gauge({
      name: 'ferry_store_latency_seconds',
      help: 'How long one read of the store revision took, measured at this scrape',
      registers,
      async collect() {
        const t0 = performance.now();
        await state.store.revision();
        this.set((performance.now() - t0) / 1000);
      },
    });
    new Gauge({
      name: 'ferry_jobs',
      help: 'Jobs this host ran or runs (create, start, stop, migrate, and the HA manager\'s recover, handover), by kind and state',
      labelNames: ['kind', 'state'],
      registers,
      async collect() {
        this.reset();
        for (const job of (await state.jobs()).filter((j) => j.host === me)) this.inc({ kind: job.kind, state: job.state });
      },
    });
    new Gauge({
      name: 'ferry_move_items',
      help: "VMs of this host's drains and returns that have not ended, by kind and state",
      labelNames: ['kind', 'state'],
      registers,
      async collect() {
        this.reset();
        for (const job of await new MoveRecords(state.store).jobs())
          if (job.host === me && (job.state === 'running' || job.state === 'cancelling')) for (const item of job.items) this.inc({ kind: job.kind, state: item.progress.state });
      },
    });
  }

  /** A client's blackout of a migration this host ran, as reported after it. */
  blackoutMeasured(ms: number): void {
    this.blackoutSeconds.observe(ms / 1000);
  }

  /** A migration this host ran as the source has ended (its job's final record). */
  migrationEnded(job: Job): void {
    const record = job.result as MigrationRecord | undefined;
    const outcome = job.state === 'succeeded' ? 'completed' : record?.outcome === 'rolled-back' ? 'rolled-back' : 'failed';
    this.migrations.inc({ outcome, policy: record?.params?.policy ?? 'unknown' });
    if (!record) return;
    this.migrationSeconds.observe({ outcome }, record.totalMsAllAttempts / 1000); // every attempt's time: what the user waited
    if (outcome === 'completed' && record.downtimeMs !== null) this.downtimeSeconds.observe(record.downtimeMs / 1000);
    this.migrationBytes.inc({ kind: 'ram' }, record.bytes);
    if (record.diskBytes) this.migrationBytes.inc({ kind: 'disk' }, record.diskBytes);
  }
}
