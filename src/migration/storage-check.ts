/** begin, on the destination: can this host take the VM's disks? Every problem, in words a user can act on. */
import type { VmSpec } from '../qemu/spec.ts';
import { mib } from '../storage/errors.ts';
import type { StorageCatalog } from '../storage/registry.ts';
import { volumeOf } from '../storage/types.ts';
import { ReplicatedDriver } from '../storage/replicated.ts';
import type { DiskNeed } from './sides.ts';

export async function checkIncomingStorage(spec: VmSpec, storage: StorageCatalog | undefined, needs: DiskNeed[]): Promise<string[]> {
  const disks = spec.disks ?? [];
  if (!disks.length) return [];
  if (!storage) return [`the destination has no storage configured for the disks of '${spec.name}'`];
  const problems: string[] = [];
  // Room is checked per pool: two disks copied into one pool need the sum.
  const neededPerPool = new Map<string, number>();
  for (const disk of disks) {
    try {
      const driver = storage.get(disk.pool);
      const status = await driver.status();
      if (driver instanceof ReplicatedDriver) {
        // Only the other replica host can take the VM; nothing is copied.
        await driver.prepareIncomingCheck(volumeOf(disk));
        continue;
      }
      if (driver.shared) {
        if (!(await driver.exists(volumeOf(disk))))
          problems.push(`volume '${disk.volume}' is not visible in pool '${disk.pool}' on host '${storage.host}'; is the pool really shared?`);
        continue;
      }
      if (await driver.exists(volumeOf(disk))) {
        problems.push(
          `host '${storage.host}' already has a file for volume '${disk.volume}' of pool '${disk.pool}' (left from an interrupted migration?); ` +
            `the VM's disk is on its current host, so that file is stale: remove it on '${storage.host}' and try again`,
        );
        continue;
      }
      const need = driver.roomForCopy(needs.find((n) => n.id === disk.id)?.allocatedBytes ?? disk.sizeBytes) + (neededPerPool.get(disk.pool) ?? 0);
      neededPerPool.set(disk.pool, need);
      if (status.freeBytes !== undefined && status.freeBytes < need)
        problems.push(`pool '${disk.pool}' on host '${storage.host}' has ${mib(status.freeBytes)} free, but the copy of the disks needs ${mib(need)}`);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return problems;
}
