/**
 * The baseline a hand-written script gets: QEMU's defaults (max-bandwidth
 * 128 MiB/s, downtime-limit 300 ms, no events), `migrate`, poll query-migrate
 * every 100 ms, then `cont` the destination and quit the source. No ferry
 * policy, no ownership step, no announce.
 */
import path from 'node:path';
import type { NetworkAttacher } from '../src/qemu/instance.ts';
import { VmInstance } from '../src/qemu/instance.ts';
import { toSummary, type QemuMigrationInfo } from '../src/migration/qmp-migration.ts';

export interface BaselineResult {
  vm: VmInstance;
  totalMs: number;
  downtimeMs: number | null;
  bytes: number;
}

export async function migrateWithQemuDefaults(source: VmInstance, runDir: string, network: NetworkAttacher): Promise<BaselineResult> {
  const started = Date.now();
  const destination = await VmInstance.launch({ spec: source.spec, accel: source.accel, runDir, network, incoming: true });
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
