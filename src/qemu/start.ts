/**
 * Starting a VM the way a user expects: the accelerator chosen for this host
 * (auto = KVM only where a guest really boots under it), and a boot watchdog
 * on the guest's ready line, so a guest that hangs is reported, never left
 * silently hung (ferry's own guest; a VM booted through firmware is up once QEMU runs it).
 */
import { GuestBootTimeoutError } from './errors.ts';
import { probeHost, resolveAccel, type HostProbe } from './host-probe.ts';
import { VmInstance, type NetworkAttacher } from './instance.ts';
import type { DiskAttachment } from './argv.ts';
import type { VmSpec } from './spec.ts';

export interface StartVmOptions {
  runDir: string;
  network?: NetworkAttacher;
  /** The host probe; taken from the cache (or made) when the spec says accel=auto and none is given. */
  probe?: HostProbe;
  bootTimeoutMs?: number;
  onWarning?: (message: string) => void;
  /** How each of spec.disks is opened on this host. */
  disks?: DiskAttachment[];
}

export async function startVm(spec: VmSpec, options: StartVmOptions): Promise<VmInstance> {
  const warn = options.onWarning ?? ((m: string) => process.emitWarning(m));
  const bootTimeoutMs = options.bootTimeoutMs ?? 60_000;
  const probe = spec.accel === 'tcg' ? undefined : (options.probe ?? (await probeHost({ runDir: options.runDir })));
  const { accel, warning } = probe ? resolveAccel(spec.accel, probe) : { accel: 'tcg' as const, warning: undefined };
  if (warning) warn(warning);

  const host = { runDir: options.runDir, ...(options.network ? { network: options.network } : {}), ...(options.disks ? { disks: options.disks } : {}) };
  const vm = await VmInstance.launch({ spec, accel, ...host });
  // An OS of the user's own says nothing ferry can wait for: it runs once QEMU runs it.
  if (spec.boot.kind === 'firmware') return vm;
  try {
    await vm.waitUntilReady(bootTimeoutMs);
    return vm;
  } catch (err) {
    await vm.destroy();
    if (err instanceof GuestBootTimeoutError && accel === 'kvm' && spec.accel === 'auto') {
      // The probe said KVM works, yet this guest hung: fall back rather than leave it hung.
      warn(`guest '${spec.name}' did not boot under KVM within ${bootTimeoutMs / 1000} s; starting it again under TCG`);
      const retry = await VmInstance.launch({ spec, accel: 'tcg', ...host });
      try {
        await retry.waitUntilReady(bootTimeoutMs);
        return retry;
      } catch (retryErr) {
        await retry.destroy();
        throw retryErr;
      }
    }
    throw err;
  }
}
