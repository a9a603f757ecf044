/** begin, on the destination: can this host take the VM's disks? Every problem, in words a user can act on. */
import type { VmSpec } from '../qemu/spec.ts';
import { mib } from '../storage/errors.ts';
import type { StorageCatalog } from '../storage/registry.ts';
import { volumeOf } from '../storage/types.ts';
import { ReplicatedDriver } from '../storage/replicated.ts';
import type { DiskNeed } from './sides.ts';
import { FirmwareMissingError, hasUefi } from '../qemu/firmware.ts';

export async function checkIncomingStorage(spec: VmSpec, storage: StorageCatalog | undefined, needs: DiskNeed[]): Promise<string[]> {
  const problems = checkFirmware(spec, storage?.host);
  const disks = spec.disks ?? [];
  if (spec.cdrom?.medium && storage) problems.push(...(await checkCdrom(spec, storage)));
  if (!disks.length) return problems;
  if (!storage) return [...problems, `the destination has no storage configured for the disks of '${spec.name}'`];
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

/** A UEFI VM needs OVMF on the destination too (its code is read from each host's own file). */
function checkFirmware(spec: VmSpec, host = 'this host'): string[] {
  if (spec.boot.kind !== 'firmware' || spec.boot.firmware !== 'uefi' || hasUefi()) return [];
  return [new FirmwareMissingError(host).message];
}

/** An ISO stays where it is: the destination must see the same one, so only a shared pool will do. */
async function checkCdrom(spec: VmSpec, storage: StorageCatalog): Promise<string[]> {
  const cd = spec.cdrom!.medium!;
  try {
    const driver = storage.get(cd.pool);
    if (!driver.shared)
      return [
        `the CD-ROM holds image '${cd.image}' from pool '${cd.pool}', which each host keeps for itself: the destination has no copy of it. ` +
          `Eject it (ferry vm cdrom ${spec.name} eject), or import the ISO into a shared pool and insert that one (ferry vm cdrom ${spec.name} insert ISO)`,
      ];
    if (!(await driver.exists({ pool: cd.pool, name: cd.volume, format: 'raw', sizeBytes: cd.sizeBytes })))
      return [`image '${cd.image}' (the CD-ROM) is not visible in pool '${cd.pool}' on host '${storage.host}'; is the pool really shared?`];
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}
