/** From a pool's configuration to the driver that serves it on this host. */
import { LocalDirDriver } from './local.ts';
import { SharedDirDriver } from './shared-dir.ts';
import { NfsDriver } from './nfs.ts';
import { IscsiDriver } from './iscsi.ts';
import { RbdDriver } from './rbd.ts';
import { ReplicatedDriver } from './replicated.ts';
import { StorageError } from './errors.ts';
import type { StorageDriver, StoragePoolConfig } from './types.ts';
import type { DiskAttachment } from '../qemu/argv.ts';
import type { IsoMedium, VmSpec } from '../qemu/spec.ts';
import { CDROM_ID } from '../qemu/argv.ts';
import { volumeOf } from './types.ts';

export function driverFor(config: StoragePoolConfig, host: string): StorageDriver {
  switch (config.type) {
    case 'shared-dir':
      return new SharedDirDriver(config, host);
    case 'local':
      return new LocalDirDriver(config, host);
    case 'nfs':
      return new NfsDriver(config, host);
    case 'iscsi':
      return new IscsiDriver(config, host);
    case 'rbd':
      return new RbdDriver(config, host);
    case 'replicated':
      return new ReplicatedDriver(config, host);
  }
}

/** The pools one host knows, by name. */
export class StorageCatalog {
  private readonly drivers = new Map<string, StorageDriver>();

  constructor(pools: StoragePoolConfig[], readonly host: string) {
    // '%h' in a path stands for the host's name: one configuration, a directory per host (local pools in the lab).
    for (const pool of pools) this.drivers.set(pool.name, driverFor(pool.type === 'shared-dir' || pool.type === 'local' || pool.type === 'replicated' ? { ...pool, path: pool.path.replaceAll('%h', host) } : pool, host));
  }

  get(pool: string): StorageDriver {
    const driver = this.drivers.get(pool);
    if (!driver) throw new StorageError(`storage pool '${pool}' is not configured (known: ${[...this.drivers.keys()].join(', ') || 'none'}); add it with 'ferry storage add'`);
    return driver;
  }

  pools(): StorageDriver[] {
    return [...this.drivers.values()];
  }

  /** How QEMU opens each disk of a VM on this host, in spec order, then its CD-ROM (id CDROM_ID). */
  attach(spec: VmSpec): DiskAttachment[] {
    const disks = spec.disks.map((disk) => ({ id: disk.id, blockdev: this.get(disk.pool).blockdev(volumeOf(disk)), serial: disk.volume }));
    const cd = spec.cdrom?.medium;
    if (!cd) return disks;
    return [...disks, { id: CDROM_ID, blockdev: this.isoBlockdev(cd), serial: cd.volume }];
  }

  /** How QEMU opens an ISO on this host (the CD-ROM's medium). */
  isoBlockdev(medium: IsoMedium): Record<string, unknown> {
    return this.get(medium.pool).blockdev({ pool: medium.pool, name: medium.volume, format: 'raw', sizeBytes: medium.sizeBytes });
  }
}
