/**
 * The firmware a VM boots through. SeaBIOS is QEMU's own (always there); UEFI is Debian's OVMF, in
 * its 4 MiB build: the code is read-only and the same on every host, the variable store is the VM's
 * (a volume among its disks, made from OVMF's template), so it moves with the VM.
 */
import { existsSync } from 'node:fs';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
/** The empty variable store every UEFI VM starts from. */
export const OVMF_VARS_TEMPLATE = '/usr/share/OVMF/OVMF_VARS_4M.fd';

export class FirmwareMissingError extends Error {
  override name = 'FirmwareMissingError';
  constructor(host: string) {
    super(`UEFI needs OVMF (${OVMF_CODE}), which host '${host}' does not have; install it there with 'apt-get install ovmf', or use --firmware bios`);
  }
}

/** Whether this host can boot UEFI VMs. */
export function hasUefi(): boolean {
  return existsSync(OVMF_CODE) && existsSync(OVMF_VARS_TEMPLATE);
}

export function requireUefi(host: string): void {
  if (!hasUefi()) throw new FirmwareMissingError(host);
}
