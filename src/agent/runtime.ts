/**
 * The VMs running on this host. Each QEMU this agent starts is written down
 * (instances/<vm>.<role>.json, with its pid and directory) before the agent
 * relies on it, so that an agent restarted after a crash finds and adopts its
 * QEMUs instead of losing them.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { NetworkAttacher } from '../qemu/instance.ts';
import { releaseHostResources, VmInstance } from '../qemu/instance.ts';
import type { Accel, VmSpec } from '../qemu/spec.ts';
import { startVm } from '../qemu/start.ts';
import { guestShutdown } from '../qemu/guest-agent.ts';
import type { DiskAttachment } from '../qemu/argv.ts';
import { writeJson } from './config.ts';
import { NotFoundError, RefusedError } from './errors.ts';

export type InstanceRole = 'running' | 'incoming';

export interface InstanceState {
  vm: string;
  role: InstanceRole;
  migrationId?: string;
  pid: number;
  dir: string;
  accel: Accel;
  taps: string[];
  spec: VmSpec;
}

export interface LocalVmInfo {
  name: string;
  pid: number;
  accel: Accel;
  status: string;
  memoryMiB: number;
}

/** How much of a serial log `vm console --log` shows. */
const CONSOLE_LOG_TAIL_BYTES = 256 * 1024;

export class LocalRuntime {
  private readonly running = new Map<string, VmInstance>();

  constructor(
    private readonly stateDir: string,
    readonly runDir: string,
    readonly network: NetworkAttacher,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  private stateFile(vm: string, role: InstanceRole): string {
    return path.join(this.stateDir, 'instances', `${vm}.${role}.json`);
  }

  async record(instance: VmInstance, role: InstanceRole, migrationId?: string): Promise<void> {
    const state: InstanceState = {
      vm: instance.spec.name,
      role,
      ...(migrationId ? { migrationId } : {}),
      pid: instance.process.pid,
      dir: instance.dir,
      accel: instance.accel,
      taps: [...instance.tapDevices],
      spec: instance.spec,
    };
    await writeJson(this.stateFile(instance.spec.name, role), state);
  }

  async forget(vm: string, role: InstanceRole): Promise<void> {
    await rm(this.stateFile(vm, role), { force: true });
  }

  /** An instance whose QEMU died while no agent watched: its taps and directory released, its record removed. */
  async forgetDead(state: InstanceState): Promise<void> {
    await releaseHostResources(state.dir, state.taps, this.network);
    await this.forget(state.vm, state.role);
  }

  /** Instances an earlier run of this agent wrote down. */
  async recorded(): Promise<InstanceState[]> {
    const dir = path.join(this.stateDir, 'instances');
    const files = await readdir(dir).catch(() => [] as string[]);
    const states: InstanceState[] = [];
    for (const f of files.filter((f) => f.endsWith('.json'))) {
      try {
        states.push(JSON.parse(await readFile(path.join(dir, f), 'utf8')) as InstanceState);
      } catch {
        /* a half-written file: the QEMU it names was never relied on */
      }
    }
    return states;
  }

  async adopt(state: InstanceState): Promise<VmInstance | undefined> {
    try {
      process.kill(state.pid, 0);
    } catch {
      return undefined;
    }
    try {
      return await VmInstance.adopt({ spec: state.spec, accel: state.accel, dir: state.dir, pid: state.pid, taps: state.taps, network: this.network });
    } catch {
      return undefined;
    }
  }

  /** Registers an instance as this host's running copy of its VM. */
  async adoptRunning(instance: VmInstance): Promise<void> {
    this.running.set(instance.spec.name, instance);
    await this.record(instance, 'running');
    this.watchExit(instance);
  }

  get(name: string): VmInstance | undefined {
    return this.running.get(name);
  }

  /** The taps of every QEMU this runtime holds. */
  tapsInUse(): Set<string> {
    return new Set([...this.running.values()].flatMap((i) => i.tapDevices));
  }

  require(name: string): VmInstance {
    const vm = this.running.get(name);
    if (!vm) throw new NotFoundError(`VM '${name}' is not running on this host`);
    return vm;
  }

  /** Removes a VM from this host's list without stopping it (it moved away; its QEMU is being retired). */
  release(name: string): void {
    this.running.delete(name);
  }

  async start(spec: VmSpec, disks?: DiskAttachment[]): Promise<VmInstance> {
    if (this.running.has(spec.name)) throw new RefusedError(`VM '${spec.name}' is already running on this host`);
    const instance = await startVm(spec, { runDir: this.runDir, network: this.network, onWarning: (w) => this.log(`warning: ${w}`), ...(disks ? { disks } : {}) });
    await this.adoptRunning(instance);
    return instance;
  }

  async stop(name: string, force = false): Promise<string> {
    const instance = this.require(name);
    this.running.delete(name);
    // The guest agent first where there is one: it shuts down guests that ignore the ACPI button.
    const viaAgent = !force && instance.spec.guestAgent ? await guestShutdown(instance.guestAgentSocket) : false;
    const outcome = force ? (await instance.destroy(), 'killed') : await instance.stop({ powerdownTimeoutMs: 30_000 });
    await this.forget(name, 'running');
    return viaAgent && outcome === 'powered-off' ? 'powered off through the guest agent' : outcome;
  }

  /** The QEMU pid of each VM running here (no QMP round trip: for the watchdog's pets). */
  pids(): Map<string, number> {
    return new Map([...this.running].map(([name, vm]) => [name, vm.process.pid]));
  }

  async list(): Promise<LocalVmInfo[]> {
    const out: LocalVmInfo[] = [];
    for (const [name, vm] of this.running) {
      const status = await vm.qmp
        .execute<{ status: string }>('query-status', undefined, 2000)
        .then((s) => s.status)
        .catch(() => 'unresponsive');
      out.push({ name, pid: vm.process.pid, accel: vm.accel, status, memoryMiB: vm.spec.memoryMiB });
    }
    return out;
  }

  async consoleLog(name: string): Promise<string> {
    const vm = this.require(name);
    // The last 256 KiB: a real OS's console (and a full-screen installer) writes far more than a reader needs.
    const log = await readFile(path.join(vm.dir, 'serial.log')).catch(() => Buffer.alloc(0));
    return log.subarray(Math.max(0, log.length - CONSOLE_LOG_TAIL_BYTES)).toString('utf8');
  }

  /** Told when a VM's QEMU exits on its own (a crash, a kill, the guest powering off). */
  onUnexpectedExit: ((name: string) => Promise<void>) | undefined;

  async shutdownAll(): Promise<void> {
    for (const vm of this.running.values()) vm.qmp.close();
  }

  private watchExit(instance: VmInstance): void {
    void instance.process.exited.then(async (exit) => {
      if (exit.expected || this.running.get(instance.spec.name) !== instance) return;
      this.running.delete(instance.spec.name);
      this.log(`VM '${instance.spec.name}' exited unexpectedly (code ${exit.code}, signal ${exit.signal})`);
      await instance.release();
      await this.forget(instance.spec.name, 'running');
      await this.onUnexpectedExit?.(instance.spec.name);
    });
  }
}
