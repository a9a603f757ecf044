/**
 * The firmware a VM boots through. SeaBIOS is QEMU's own (always there); UEFI is Debian's OVMF, in
 * its 4 MiB build: the code is read-only and the same on every host, the variable store is the VM's
 * (a volume among its disks, made from OVMF's template), so it moves with the VM.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

/**
 * Where Debian's ovmf package puts its files. FERRY_OVMF_DIR moves it: the lab's hosts share one
 * file system, so a test makes one of them a host without OVMF that way.
 */
function ovmfDir(): string {
  return process.env['FERRY_OVMF_DIR'] ?? '/usr/share/OVMF';
}

export function ovmfCode(): string {
  return path.join(ovmfDir(), 'OVMF_CODE_4M.fd');
}

/** The empty variable store every UEFI VM starts from. */
export function ovmfVarsTemplate(): string {
  return path.join(ovmfDir(), 'OVMF_VARS_4M.fd');
}

export class FirmwareMissingError extends Error {
  override name = 'FirmwareMissingError';
  constructor(host: string) {
    super(`UEFI needs OVMF (${ovmfCode()}), which host '${host}' does not have; install it there with 'apt-get install ovmf', or use --firmware bios`);
  }
}

/** Whether this host can boot UEFI VMs. */
export function hasUefi(): boolean {
  return existsSync(ovmfCode()) && existsSync(ovmfVarsTemplate());
}

export function requireUefi(host: string): void {
  if (!hasUefi()) throw new FirmwareMissingError(host);
}
