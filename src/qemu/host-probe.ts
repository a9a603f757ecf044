/**
 * What this host's QEMU can do: version, which accelerators really work,
 * migration capabilities, CPU models and their unavailable features.
 *
 * "Really work" matters: on some hosts /dev/kvm exists but Linux guests hang
 * right after the kernel decompressor. So KVM is judged by booting ferry's
 * guest image under it with a watchdog on the ready line. The verdict is
 * cached per (QEMU version, host kernel, guest image).
 */
import { constants } from 'node:fs';
import { access, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { guestBoot, guestImage } from './guest-image.ts';
import { VmInstance } from './instance.ts';
import { QEMU_BINARY, QemuProcess } from './process.ts';
import { makeVmSpec, type Accel, type AccelChoice } from './spec.ts';
import { run } from '../util/exec.ts';
import { queryCpuCatalog, withIsaLevels, type CpuCatalog } from './cpu-models.ts';
import { compareQemuVersions, parseQemuVersion, tcgDirtyTrackingSound, type QemuVersion } from './version.ts';

export interface AccelVerdict {
  usable: boolean;
  reason: string;
}

export interface HostProbe {
  qemuVersion: string;
  /** Whether this QEMU's TCG dirty tracking is sound for migration (QEMU >= 9.0; see version.ts). */
  tcgDirtyTrackingFixed: boolean;
  /** Versioned machine types (pc-q35-X.Y), newest first: what a VM created here may be pinned to. */
  machineTypes: string[];
  hostKernel: string;
  accelerators: Record<Accel, AccelVerdict>;
  migrationCapabilities: string[];
  /** CPU models and features under the accelerator this host's VMs use (KVM where it works, else TCG). */
  cpu: CpuCatalog;
  probedAt: string;
}

const KVM_BOOT_TIMEOUT_MS = 15_000;

export function defaultCacheDir(): string {
  return process.env['FERRY_CACHE'] ?? path.join(os.homedir(), '.cache', 'ferry');
}

export async function qemuVersion(): Promise<string> {
  const out = await run(QEMU_BINARY, ['--version']);
  const m = /version (\d+\.\d+\.\d+)/.exec(out);
  if (!m?.[1]) throw new Error(`cannot read the QEMU version from '${out.split('\n')[0]}'`);
  return m[1];
}

/** A QEMU binary: its version and the versioned q35 machine types it provides, newest first. */
export interface QemuBuild {
  version: QemuVersion;
  machineTypes: string[];
}

let build: Promise<QemuBuild> | undefined;

/** The installed QEMU binary (read once per process; cheap: no guest is started). */
export function localQemuBuild(): Promise<QemuBuild> {
  build ??= (async () => {
    const [version, help] = await Promise.all([qemuVersion(), run(QEMU_BINARY, ['-machine', 'help'])]);
    return { version: parseQemuVersion(version), machineTypes: versionedQ35(help) };
  })();
  build.catch(() => (build = undefined));
  return build;
}

/** pc-q35-X.Y names in `-machine help` output, newest first. */
export function versionedQ35(machineHelp: string): string[] {
  const names = [...machineHelp.matchAll(/^(pc-q35-(\d+)\.(\d+))\s/gm)].map((m) => ({ name: m[1]!, v: { major: Number(m[2]), minor: Number(m[3]), micro: 0 } }));
  return names.sort((a, b) => compareQemuVersions(b.v, a.v)).map((n) => n.name);
}

/** Probes the host, using the cached verdict when QEMU, the host kernel and the guest image are unchanged. */
export async function probeHost(options: { cacheDir?: string; refresh?: boolean; runDir?: string } = {}): Promise<HostProbe> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const version = await qemuVersion();
  const image = guestImage();
  // The leading number: the probe's own format (a cached probe of an older ferry lacks fields).
  const key = `4|${version}|${os.release()}|${image.inputsHash}`;
  const cacheFile = path.join(cacheDir, 'host-probe.json');
  if (!options.refresh) {
    try {
      const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as { key: string; probe: HostProbe };
      if (cached.key === key) return { ...cached.probe, cpu: withIsaLevels(cached.probe.cpu) };
    } catch {
      /* no cache yet */
    }
  }
  const runDir = options.runDir ?? path.join(cacheDir, 'probe-run');
  const kvm = await judgeKvm(runDir);
  const { migrationCapabilities, cpu } = await queryQemu(runDir, kvm.usable ? 'kvm' : 'tcg');
  const qemu = await localQemuBuild();
  const probe: HostProbe = {
    qemuVersion: version,
    tcgDirtyTrackingFixed: tcgDirtyTrackingSound(qemu.version),
    machineTypes: qemu.machineTypes,
    hostKernel: os.release(),
    accelerators: { tcg: { usable: true, reason: 'software emulation is always available' }, kvm },
    migrationCapabilities,
    cpu,
    probedAt: new Date().toISOString(),
  };
  await mkdir(cacheDir, { recursive: true });
  // Written whole then renamed: agents of a lab on one machine read it while another writes it.
  const partial = `${cacheFile}.${process.pid}`;
  await writeFile(partial, JSON.stringify({ key, probe }, null, 2));
  await rename(partial, cacheFile);
  return { ...probe, cpu: withIsaLevels(probe.cpu) };
}

async function judgeKvm(runDir: string): Promise<AccelVerdict> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { usable: false, reason: '/dev/kvm is missing or not accessible' };
  }
  const spec = makeVmSpec({ name: 'kvm-probe', memoryMiB: 128, accel: 'kvm', boot: guestBoot(guestImage(), { memcheckMiB: 0 }) });
  let vm: VmInstance | undefined;
  const started = Date.now();
  try {
    vm = await VmInstance.launch({ spec, accel: 'kvm', runDir });
    await vm.waitUntilReady(KVM_BOOT_TIMEOUT_MS);
    return { usable: true, reason: `a Linux guest booted under KVM in ${Date.now() - started} ms` };
  } catch (err) {
    return {
      usable: false,
      reason: vm?.process.isRunning
        ? `/dev/kvm exists but a Linux guest did not reach its ready line within ${KVM_BOOT_TIMEOUT_MS / 1000} s under KVM (it hangs on this host)`
        : `QEMU could not start a guest under KVM: ${(err as Error).message.split('\n').slice(-1)[0]}`,
    };
  } finally {
    await vm?.destroy();
  }
}

async function queryQemu(runDir: string, accel: Accel): Promise<Pick<HostProbe, 'migrationCapabilities' | 'cpu'>> {
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const qmpSocket = path.join(runDir, `query-${process.pid}.sock`);
  const proc = await QemuProcess.start({
    argv: ['-machine', 'none', '-accel', accel, '-nodefaults', '-display', 'none', '-S', '-chardev', `socket,id=qmp,path=${qmpSocket},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control'],
    qmpSocket,
    serialLog: '/dev/null',
  });
  try {
    const caps = await proc.qmp.execute<{ capability: string }[]>('query-migrate-capabilities');
    return { migrationCapabilities: caps.map((c) => c.capability), cpu: await queryCpuCatalog(proc.qmp, accel) };
  } finally {
    await proc.kill();
  }
}

/** The accelerator a VM will really use, with a warning when 'auto' had to fall back. */
export function resolveAccel(choice: AccelChoice, probe: HostProbe): { accel: Accel; warning?: string } {
  if (choice === 'tcg') return { accel: 'tcg' };
  if (choice === 'kvm') {
    if (!probe.accelerators.kvm.usable) return { accel: 'kvm', warning: `accel=kvm was asked for, but ${probe.accelerators.kvm.reason}; consider accel=tcg` };
    return { accel: 'kvm' };
  }
  if (probe.accelerators.kvm.usable) return { accel: 'kvm' };
  return { accel: 'tcg', warning: `accel=auto uses TCG (software emulation, slower): ${probe.accelerators.kvm.reason}` };
}
