/** What hosts of different QEMU versions have in common: the machine type a new VM is pinned to. */
import type { HostRecord } from './model.ts';

/**
 * The newest versioned q35 machine type that every host's QEMU provides, so that a VM created now
 * can move to any host of the cluster (DESIGN.md, compatibility between hosts). Hosts whose record
 * does not say (an agent from before QEMU builds were recorded) are left out of the choice.
 */
export function newestCommonMachineType(hosts: HostRecord[]): string | undefined {
  const known = hosts.filter((h) => h.qemu?.machineTypes.length);
  if (!known.length) return undefined;
  const [first, ...rest] = known;
  // Each list is newest first: the first of the first host's that all others have too.
  return first!.qemu!.machineTypes.find((m) => rest.every((h) => h.qemu!.machineTypes.includes(m)));
}
