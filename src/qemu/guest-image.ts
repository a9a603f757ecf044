/** ferry's own guest image (guest/build.sh): where it is, and the boot spec for it. */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { run } from '../util/exec.ts';
import { PROJECT_ROOT } from '../util/project.ts';
import type { KernelBoot } from './spec.ts';

export { PROJECT_ROOT };
const OUT = path.join(PROJECT_ROOT, 'guest', 'out');

export interface GuestImage {
  kernel: string;
  initrd: string;
  inputsHash: string;
}

export class GuestImageMissingError extends Error {
  override name = 'GuestImageMissingError';
  constructor() {
    super(`the guest image is not built (${OUT}); build it with 'bash scripts/setup.sh' (as root: installs what it needs) or 'bash guest/build.sh'`);
  }
}

export function guestImage(): GuestImage {
  const manifest = path.join(OUT, 'manifest.json');
  if (!existsSync(manifest) || !existsSync(path.join(OUT, 'vmlinuz')) || !existsSync(path.join(OUT, 'initramfs.gz')))
    throw new GuestImageMissingError();
  const { inputsHash } = JSON.parse(readFileSync(manifest, 'utf8')) as { inputsHash: string };
  return { kernel: path.join(OUT, 'vmlinuz'), initrd: path.join(OUT, 'initramfs.gz'), inputsHash };
}

/** Builds the image if its inputs changed (cheap when up to date). */
export async function ensureGuestImage(): Promise<GuestImage> {
  await run('bash', [path.join(PROJECT_ROOT, 'guest', 'build.sh')], { timeoutMs: 300_000 });
  return guestImage();
}

export interface GuestConfig {
  /** eth0 address with prefix, e.g. 10.77.0.10/24. */
  ip?: string;
  gateway?: string;
  /** Addresses with prefix of eth1, eth2… (undefined: that NIC stays unconfigured). */
  moreIps?: Array<string | undefined>;
  /** MiB that memcheck fills (0: no memcheck). */
  memcheckMiB?: number;
  /** MiB/s that memcheck rewrites. */
  dirtyMiBps?: number;
  /**
   * Start diskcheck on the guest's first disk (/dev/vda): it rewrites `ratePerSec`
   * 4 KiB blocks per second (0: idle) over the first `mib` MiB (default: the whole disk).
   */
  diskcheck?: { ratePerSec: number; mib?: number };
}

export function guestBoot(image: GuestImage, config: GuestConfig = {}): KernelBoot {
  const words = ['console=ttyS0', 'quiet', 'panic=-1'];
  if (config.ip) words.push(`ferry.ip=${config.ip}`);
  if (config.gateway) words.push(`ferry.gw=${config.gateway}`);
  // The NICs after the first (named networks): eth1, eth2, eth3.
  (config.moreIps ?? []).forEach((address, i) => {
    if (address) words.push(`ferry.ip${i + 1}=${address}`);
  });
  words.push(`ferry.memcheck=${config.memcheckMiB ?? 32}`);
  words.push(`ferry.dirty=${config.dirtyMiBps ?? 0}`);
  if (config.diskcheck) {
    const { ratePerSec, mib } = config.diskcheck;
    if (!Number.isInteger(ratePerSec) || ratePerSec < 0) throw new RangeError(`diskcheck.ratePerSec must be a whole number >= 0, not ${ratePerSec}`);
    if (mib !== undefined && (!Number.isInteger(mib) || mib < 1)) throw new RangeError(`diskcheck.mib must be a whole number >= 1, not ${mib}`);
    words.push(`ferry.diskcheck=${ratePerSec}`);
    if (mib !== undefined) words.push(`ferry.diskcheck.mib=${mib}`);
  }
  return { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, cmdline: words.join(' ') };
}
