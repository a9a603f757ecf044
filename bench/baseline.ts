/**
 * The baseline a hand-written script gets: QEMU's defaults (max-bandwidth
 * 128 MiB/s, downtime-limit 300 ms, no events), `migrate`, poll query-migrate
 * every 100 ms, then `cont` the destination and quit the source. No ferry
 * policy, no ownership step, no announce.
 */
import path from 'node:path';
import type { NetworkAttacher } from '../src/qemu/instance.ts';
import type { DiskAttachment } from '../src/qemu/argv.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { toSummary, type QemuMigrationInfo } from '../src/migration/qmp-migration.ts';

/** Capabilities ferry's policies may turn on, all off in a fresh QEMU. */
const FERRY_CAPABILITIES = ['xbzrle', 'auto-converge', 'postcopy-ram', 'multifd', 'postcopy-preempt', 'pause-before-switchover', 'return-path'];

export interface BaselineResult {
  vm: VmInstance;
  totalMs: number;
  downtimeMs: number | null;
  bytes: number;
}

export async function migrateWithQemuDefaults(source: VmInstance, runDir: string, network: NetworkAttacher): Promise<BaselineResult> {
  const started = Date.now();
  const destination = await VmInstance.launch({ spec: source.spec, accel: source.accel, runDir, network, incoming: true });
  // The source may be a QEMU that ferry migrated before: back to a fresh QEMU's capabilities, as a script would find them.
  await source.qmp.execute('migrate-set-capabilities', { capabilities: FERRY_CAPABILITIES.map((capability) => ({ capability, state: false })) });
  const uri = `unix:${path.join(destination.dir, 'migrate.sock')}`;
  await destination.qmp.execute('migrate-incoming', { uri });
  await source.qmp.execute('migrate', { uri });
  let info: QemuMigrationInfo;
  for (;;) {
    info = await source.qmp.execute<QemuMigrationInfo>('query-migrate');
    if (info.status === 'completed') break;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`baseline migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await destination.qmp.execute('cont');
  const summary = toSummary(info);
  await source.stop({ powerdownTimeoutMs: 0 });
  return { vm: destination, totalMs: Date.now() - started, downtimeMs: summary.downtimeMs, bytes: summary.bytes };
}

/**
 * The storage baseline a hand-written script gets, the way QEMU's docs and
 * libvirt's first NBD migration did it: the destination exports its empty
 * image over NBD, the source mirrors into it with QEMU's defaults (background
 * copy, no speed limit), polls every 100 ms until the mirror is ready, then
 * migrates RAM with QEMU's defaults (128 MiB/s, 300 ms downtime limit); at
 * pre-switchover it completes the mirror, then resumes the destination.
 * (QEMU's older `migrate -b` cannot be used: it does not find -blockdev disks.)
 */
export async function migrateWithMirrorDefaults(
  source: VmInstance,
  runDir: string,
  network: NetworkAttacher,
  disks: { destination: DiskAttachment[]; prepare(): Promise<void>; releaseSource(): Promise<void> },
): Promise<BaselineResult & { diskBytes: number }> {
  const started = Date.now();
  const poll = () => new Promise((r) => setTimeout(r, 100));
  await disks.prepare();
  const destination = await VmInstance.launch({ spec: source.spec, accel: source.accel, runDir, network, incoming: true, disks: disks.destination });
  const nbd = path.join(destination.dir, 'nbd.sock');
  await destination.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbd } } });
  for (const d of disks.destination) await destination.qmp.execute('block-export-add', { type: 'nbd', id: `e-${d.id}`, 'node-name': d.id, writable: true });
  for (const d of disks.destination) {
    await source.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': `t-${d.id}`, server: { type: 'unix', path: nbd }, export: d.id });
    await source.qmp.execute('blockdev-mirror', { 'job-id': `m-${d.id}`, device: d.id, target: `t-${d.id}`, sync: 'full' });
  }
  let diskBytes = 0;
  for (;;) {
    const jobs = await source.qmp.execute<{ ready: boolean; offset: number }[]>('query-block-jobs');
    if (jobs.every((j) => j.ready)) break;
    await poll();
  }
  const uri = `unix:${path.join(destination.dir, 'migrate.sock')}`;
  await destination.qmp.execute('migrate-incoming', { uri });
  await source.qmp.execute('migrate-set-capabilities', {
    capabilities: FERRY_CAPABILITIES.map((capability) => ({ capability, state: capability === 'pause-before-switchover' })),
  });
  await source.qmp.execute('migrate', { uri });
  let info: QemuMigrationInfo;
  for (;;) {
    info = await source.qmp.execute<QemuMigrationInfo>('query-migrate');
    if (info.status === 'pre-switchover') {
      for (const j of await source.qmp.execute<{ device: string; offset: number }[]>('query-block-jobs')) diskBytes += j.offset;
      for (const d of disks.destination) await source.qmp.execute('block-job-cancel', { device: `m-${d.id}` });
      while ((await source.qmp.execute<unknown[]>('query-block-jobs')).length) await poll();
      await source.qmp.execute('migrate-continue', { state: 'pre-switchover' });
    }
    if (info.status === 'completed') break;
    if (info.status === 'failed' || info.status === 'cancelled') {
      const said = destination.process.stderrTail(5);
      await destination.destroy();
      await source.qmp.execute('cont').catch(() => undefined);
      throw new Error(`mirror baseline migration ${info.status}: ${info['error-desc'] ?? ''}; destination QEMU said: ${said}`);
    }
    await poll();
  }
  await destination.qmp.execute('nbd-server-stop');
  await destination.qmp.execute('cont');
  const summary = toSummary(info);
  await source.stop({ powerdownTimeoutMs: 0 });
  await disks.releaseSource();
  return { vm: destination, totalMs: Date.now() - started, downtimeMs: summary.downtimeMs, bytes: summary.bytes, diskBytes };
}
