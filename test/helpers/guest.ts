/** Shared fixtures for tests that boot real guests under TCG. */
import { mkdtemp, open, readdir, readlink, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { HostNetwork } from '../../src/lab/host-network.ts';
import { ip } from '../../src/net/netns.ts';
import { Probe } from '../../src/lab/probe.ts';
import { ensureGuestImage, guestBoot } from '../../src/qemu/guest-image.ts';
import { localQemuBuild } from '../../src/qemu/host-probe.ts';
import { VmInstance } from '../../src/qemu/instance.ts';
import { macFor, makeVmSpec, type DiskSpec, type VmSpec } from '../../src/qemu/spec.ts';
import type { StorageCatalog } from '../../src/storage/registry.ts';
import { LocalDestination, LocalSource } from '../../src/migration/local.ts';
import { migrate, type MigrateOptions } from '../../src/migration/engine.ts';
import type { MigrationRecord } from '../../src/migration/types.ts';

export interface Lab {
  net: HostNetwork;
  probe: Probe;
  runDir: string;
  close(): Promise<void>;
}

/** A namespace with a bridge and a probe inside it; unique per test process. */
export async function openLab(tag: string): Promise<Lab> {
  await ensureGuestImage();
  const netns = `ferry-t-${tag}-${process.pid}`;
  const net = await HostNetwork.create(netns);
  const runDir = await mkdtemp(path.join(os.tmpdir(), `ferry-${tag}-`));
  const probe = await Probe.start(netns);
  return {
    net,
    probe,
    runDir,
    async close() {
      await probe.close().catch(() => undefined);
      await net.destroy().catch(() => undefined);
      await rm(runDir, { recursive: true, force: true });
    },
  };
}

export interface GuestOptions {
  memoryMiB?: number;
  memcheckMiB?: number;
  dirtyMiBps?: number;
  ipIndex?: number;
  disks?: DiskSpec[];
  /** diskcheck on the first disk, writing this many 4 KiB blocks per second. */
  diskcheck?: { ratePerSec: number; mib?: number };
}

export async function guestSpec(lab: Lab, name: string, options: GuestOptions = {}): Promise<VmSpec> {
  const image = await ensureGuestImage();
  const uuid = crypto.randomUUID();
  return makeVmSpec({
    name,
    uuid,
    // As the agents create VMs: the newest versioned machine type this QEMU has.
    machine: (await localQemuBuild()).machineTypes[0]!,
    memoryMiB: options.memoryMiB ?? 256,
    accel: 'tcg',
    boot: guestBoot(image, {
      ip: `${lab.net.guestIp(options.ipIndex ?? 10)}/24`,
      memcheckMiB: options.memcheckMiB ?? 32,
      dirtyMiBps: options.dirtyMiBps ?? 0,
      ...(options.diskcheck ? { diskcheck: options.diskcheck } : {}),
    }),
    ...(options.disks ? { disks: options.disks } : {}),
    nics: [{ mac: macFor(uuid, 0), model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: lab.net.bridge } }],
  });
}

export async function bootGuest(lab: Lab, spec: VmSpec, storage?: StorageCatalog): Promise<VmInstance> {
  const disks = storage ? storage.attach(spec) : undefined;
  const vm = await VmInstance.launch({ spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, ...(disks ? { disks } : {}) });
  try {
    await vm.waitUntilReady(60_000);
  } catch (err) {
    await vm.destroy();
    throw err;
  }
  return vm;
}

/** Migrates a running instance to a new local QEMU; returns the new instance with the record. */
export async function migrateLocally(
  lab: Lab,
  vm: VmInstance,
  extra: Omit<MigrateOptions, 'source' | 'destination'> & { destinationSpec?: VmSpec } = {},
): Promise<{ vm: VmInstance; record: MigrationRecord; destination: LocalDestination }> {
  // One attempt: on QEMU >= 9 nothing is retried, so a lost page shows as a failed check or a bad memcheck.
  const destination = new LocalDestination({ spec: extra.destinationSpec ?? vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher });
  const record = await migrate({ ...extra, source: new LocalSource(vm), destination });
  return { vm: destination.instance, record, destination };
}

/**
 * Overwrites 4 KiB of a guest's RAM at `offset` with 0xA5, through the memfd QEMU keeps it in
 * (qemu/argv.ts): a deliberate change that no migration made, for negative controls.
 */
export async function corruptGuestRam(instance: VmInstance, offset: number): Promise<void> {
  const dir = `/proc/${instance.process.pid}/fd`;
  for (const fd of await readdir(dir)) {
    const target = await readlink(path.join(dir, fd)).catch(() => '');
    if (!target.startsWith('/memfd:memory-backend-memfd')) continue;
    const file = await open(path.join(dir, fd), 'r+');
    try {
      await file.write(Buffer.alloc(4096, 0xa5), 0, 4096, offset);
    } finally {
      await file.close();
    }
    return;
  }
  throw new Error(`QEMU ${instance.process.pid} has no guest RAM memfd`);
}

/** Tap devices ferry made in the lab's namespace (names start with "ft"). */
export async function tapsIn(lab: Lab): Promise<string[]> {
  const out = await ip(lab.net.netns, '-br', 'link');
  return out
    .split('\n')
    .map((l) => l.split(/\s+/)[0]!.split('@')[0]!)
    .filter((n) => n.startsWith('ft'));
}
