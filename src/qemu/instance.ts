/**
 * One running QEMU for one VM on this host: the spec, the host-side runtime
 * (private directory with the QMP socket and serial log, taps) and the
 * supervised process. Used for a normal start and for a migration destination.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { CDROM_DEVICE, CDROM_ID, buildQemuArgv, cdromBlockdev, type DiskAttachment, type TlsCredentials } from './argv.ts';
import { CpuModelRefusedError, GuestBootTimeoutError, QemuStartError } from './errors.ts';
import { refusedFeatures } from './cpu-models.ts';
import { QemuProcess, type ShutdownOutcome } from './process.ts';
import { usesTap, type Accel, type IsoMedium, type NicSpec, type VmSpec } from './spec.ts';

/** Gives each bridge NIC a host device. Implemented by net/ (taps on a bridge). */
export interface NetworkAttacher {
  readonly netns: string | undefined;
  attach(nic: NicSpec): Promise<string>;
  detach(device: string): Promise<void>;
}

/** What the guest prints on its serial console when its programs are up (guest/rootfs/init). */
export const GUEST_READY = /FERRY-GUEST-READY/;

export interface LaunchOptions {
  spec: VmSpec;
  accel: Accel;
  /** Parent directory; each instance gets a private (0700) subdirectory for its QMP socket and serial log. */
  runDir: string;
  network?: NetworkAttacher;
  /** Start paused as a migration destination (`-S -incoming defer`). */
  incoming?: boolean;
  tls?: TlsCredentials;
  /** How each of spec.disks is opened here (storage/attach.ts). */
  disks?: DiskAttachment[];
}

export class VmInstance {
  private constructor(
    private currentSpec: VmSpec,
    readonly accel: Accel,
    readonly dir: string,
    readonly process: QemuProcess,
    private readonly taps: string[],
    private readonly network: NetworkAttacher | undefined,
  ) {}

  get qmp() {
    return this.process.qmp;
  }

  /** The spec this QEMU runs: as started, with its CD-ROM's medium as changed since. */
  get spec(): VmSpec {
    return this.currentSpec;
  }

  /**
   * Takes the CD-ROM's medium out (force: a guest's tray lock does not hold it, as `eject -f`) and,
   * when `insert` is given, puts that ISO in. The tray is closed again either way.
   */
  async changeCdrom(insert: { medium: IsoMedium; blockdev: Record<string, unknown> } | undefined): Promise<void> {
    if (!this.currentSpec.cdrom) throw new Error(`'${this.currentSpec.name}' has no CD-ROM drive`);
    const id = CDROM_DEVICE;
    await this.qmp.execute('blockdev-open-tray', { id, force: true });
    try {
      if (this.currentSpec.cdrom.medium) {
        await this.qmp.execute('blockdev-remove-medium', { id });
        await this.qmp.execute('blockdev-del', { 'node-name': CDROM_ID });
      }
      this.currentSpec = { ...this.currentSpec, cdrom: {} };
      if (insert) {
        await this.qmp.execute('blockdev-add', cdromBlockdev(insert.blockdev));
        try {
          await this.qmp.execute('blockdev-insert-medium', { id, 'node-name': CDROM_ID });
        } catch (err) {
          await this.qmp.execute('blockdev-del', { 'node-name': CDROM_ID }).catch(() => undefined);
          throw err;
        }
        this.currentSpec = { ...this.currentSpec, cdrom: { medium: insert.medium } };
      }
    } finally {
      // The spec says what is in the drive now, whatever failed; the tray is closed again either way.
      await this.qmp.execute('blockdev-close-tray', { id }).catch(() => undefined);
    }
  }

  static async launch(options: LaunchOptions): Promise<VmInstance> {
    await mkdir(options.runDir, { recursive: true, mode: 0o700 });
    // The QMP socket lives in a 0700 directory: only this agent (its user) can reach it.
    const dir = await mkdtemp(path.join(options.runDir, `${options.spec.name}-`));
    const taps: string[] = [];
    try {
      for (const nic of options.spec.nics) {
        if (!usesTap(nic)) continue;
        if (!options.network) throw new Error(`NIC ${nic.mac} needs a tap but no host network was given`);
        taps.push(await options.network.attach(nic));
      }
      const runtime = {
        accel: options.accel,
        qmpSocket: path.join(dir, 'qmp.sock'),
        serialLog: path.join(dir, 'serial.log'),
        serialSocket: path.join(dir, 'serial.sock'),
        guestAgentSocket: path.join(dir, 'qga.sock'),
        vncSocket: path.join(dir, 'vnc.sock'),
        taps,
        incoming: options.incoming ?? false,
        ...(options.tls ? { tls: options.tls } : {}),
        ...(options.disks ? { disks: options.disks } : {}),
      };
      const process = await QemuProcess.start({
        argv: buildQemuArgv(options.spec, runtime),
        qmpSocket: runtime.qmpSocket,
        serialLog: runtime.serialLog,
        ...(options.network?.netns ? { netns: options.network.netns } : {}),
      });
      return new VmInstance(options.spec, options.accel, dir, process, taps, options.network);
    } catch (err) {
      await releaseHostResources(dir, taps, options.network);
      const refused = err instanceof QemuStartError ? refusedFeatures(err.stderr) : [];
      if (refused.length) throw new CpuModelRefusedError(options.spec.cpuModel, refused, (err as QemuStartError).stderr);
      throw err;
    }
  }

  /** Takes over a running QEMU from an earlier run of this agent (see QemuProcess.adopt). */
  static async adopt(options: { spec: VmSpec; accel: Accel; dir: string; pid: number; taps: string[]; network?: NetworkAttacher }): Promise<VmInstance> {
    const process = await QemuProcess.adopt({ pid: options.pid, qmpSocket: path.join(options.dir, 'qmp.sock'), serialLog: path.join(options.dir, 'serial.log') });
    return new VmInstance(options.spec, options.accel, options.dir, process, [...options.taps], options.network);
  }

  /** The serial console's socket (QEMU serves one client at a time; the agent relays it). */
  get serialSocket(): string {
    return path.join(this.dir, 'serial.sock');
  }

  /** The VNC display's socket (the agent relays it to viewers over a websocket). */
  get vncSocket(): string {
    return path.join(this.dir, 'vnc.sock');
  }

  /** The QEMU guest agent's channel (when spec.guestAgent). */
  get guestAgentSocket(): string {
    return path.join(this.dir, 'qga.sock');
  }

  /** Tap devices of this instance, in NIC order. */
  get tapDevices(): readonly string[] {
    return this.taps;
  }

  /** Waits for the guest's ready line; a guest that never says it is ready is an error naming the accelerator. */
  async waitUntilReady(timeoutMs: number): Promise<string> {
    try {
      return await this.process.waitForSerialLine(GUEST_READY, timeoutMs);
    } catch (err) {
      if (this.process.isRunning) throw new GuestBootTimeoutError(this.spec.name, this.accel, timeoutMs);
      throw err;
    }
  }

  /** Graceful stop (see QemuProcess.shutdown), then the host resources are released. */
  async stop(options: { powerdownTimeoutMs?: number } = {}): Promise<ShutdownOutcome> {
    const outcome = await this.process.shutdown(options);
    await this.release();
    return outcome;
  }

  /** Kills QEMU at once and releases the host resources. */
  async destroy(): Promise<void> {
    await this.process.kill();
    await this.release();
  }

  /** Releases taps and the private directory; call after the process is gone. */
  async release(): Promise<void> {
    await releaseHostResources(this.dir, this.taps.splice(0), this.network);
  }
}

/** Releases what a QEMU held on the host (its taps, its private directory); only once the process is gone. */
export async function releaseHostResources(dir: string, taps: string[], network: NetworkAttacher | undefined): Promise<void> {
  for (const tap of taps) await network?.detach(tap).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
}
