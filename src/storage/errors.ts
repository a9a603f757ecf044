/** Storage errors: each names the pool, the host or the volume at fault and what to do. */

export class StorageError extends Error {
  override name = 'StorageError';
}

export class PoolUnreachableError extends StorageError {
  override name = 'PoolUnreachableError';
  constructor(readonly pool: string, readonly host: string, detail: string) {
    super(`host '${host}' cannot reach storage pool '${pool}': ${detail}; make it reachable from that host (mount, network, credentials), or pick another pool`);
  }
}

export class NoSpaceError extends StorageError {
  override name = 'NoSpaceError';
  constructor(readonly pool: string, readonly host: string, readonly neededBytes: number, readonly freeBytes: number, what: string) {
    super(
      `storage pool '${pool}' on host '${host}' has ${mib(freeBytes)} free, but ${what} needs ${mib(neededBytes)}; ` +
        'free space there or choose another host or pool',
    );
  }
}

export class VolumeExistsError extends StorageError {
  override name = 'VolumeExistsError';
  constructor(readonly pool: string, readonly volume: string, where: string) {
    super(`volume '${volume}' already exists in pool '${pool}' (${where}); choose another name or delete it first`);
  }
}

export class VolumeNotFoundError extends StorageError {
  override name = 'VolumeNotFoundError';
  constructor(readonly pool: string, readonly volume: string, where: string) {
    super(`volume '${volume}' does not exist in pool '${pool}' (${where})`);
  }
}

export class VolumeInUseError extends StorageError {
  override name = 'VolumeInUseError';
  constructor(readonly volume: string, readonly vm: string) {
    super(`volume '${volume}' is attached to VM '${vm}'; delete the VM (or detach the volume) first`);
  }
}

export function mib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
