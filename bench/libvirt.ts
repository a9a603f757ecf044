/**
 * libvirt as a peer baseline for the benchmark: two libvirt "hosts" on this
 * machine, each a `libvirtd` in its own network + mount + UTS namespace, so
 * that libvirt sees two hosts (own hostname, own host UUID, own /etc/libvirt,
 * /var/lib/libvirt, /run/libvirt, /var/cache/libvirt, /var/log/libvirt and
 * /etc/hosts) and migrates between them the way it would between machines.
 *
 * Network: each host namespace has a bridge (br0) that libvirt's
 * `<interface type='bridge'>` uses, with a veth as its uplink into the bridge
 * of the benchmark's namespace (where the probe runs). A guest keeps its MAC
 * and IP on both hosts, so the same probe measures the blackout of a libvirt
 * migration and of a ferry one.
 *
 * Migration is what a libvirt user types: `virsh migrate --live` with default
 * flags (client-driven, not peer-to-peer; libvirt's own bandwidth and QEMU's
 * 300 ms downtime limit), optionally `--copy-storage-all` for a local disk. The
 * figures come from `virsh domjobinfo --completed --keep-completed` on the
 * source (the VM stays defined there), or the destination, which gets the RAM
 * figures in the migration cookie but not the disk mirror's.
 *
 * virsh talks to each daemon over its unix socket (visible outside the mount
 * namespace through the bind-mounted /run/libvirt); the migration stream goes
 * over TCP from one host namespace to the other, to the destination's hostname
 * (each namespace's /etc/hosts names both hosts).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBridge, createNetns, deleteNetns, ip } from '../src/net/netns.ts';
import { run } from '../src/util/exec.ts';

const QEMU_DRIVER = '/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so';
const QEMU_BINARY = '/usr/bin/qemu-system-x86_64';
export const SETUP_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'setup-libvirt.sh');

/** The directories libvirtd keeps per host; each is bind-mounted from the host's own directory. */
const MOUNTS = ['/etc/libvirt', '/var/lib/libvirt', '/run/libvirt', '/var/cache/libvirt', '/var/log/libvirt'] as const;
/** Where a guest's disk lives on a libvirt host (the same path on both, each its own file). */
const IMAGES = '/var/lib/libvirt/images';

export type LibvirtHostName = 'h1' | 'h2';
export const LIBVIRT_HOSTS: readonly LibvirtHostName[] = ['h1', 'h2'];

/** undefined when libvirt can be used here, else why not (one line). */
export async function libvirtAvailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'libvirt baseline needs root (namespaces, bind mounts)';
  for (const [file, what] of [
    ['/usr/sbin/libvirtd', 'libvirtd (Debian package libvirt-daemon)'],
    [QEMU_DRIVER, "libvirt's QEMU driver (libvirt-daemon-driver-qemu)"],
    ['/usr/bin/virsh', 'virsh (libvirt-clients)'],
    [QEMU_BINARY, 'qemu-system-x86_64 (qemu-system-x86)'],
  ] as const) {
    if (!existsSync(file)) return `${what} is not installed`;
  }
  for (const db of ['passwd', 'group']) {
    try {
      await run('getent', [db, 'libvirt-qemu']);
    } catch {
      return `the ${db === 'passwd' ? 'user' : 'group'} libvirt-qemu is missing (libvirt's QEMU driver needs it to exist)`;
    }
  }
  for (const tool of ['unshare', 'mount', 'hostname']) {
    try {
      await run('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed`;
    }
  }
  try {
    const version = (await run('/usr/sbin/libvirtd', ['--version'])).trim();
    const major = /libvirtd \(libvirt\) (\d+)/.exec(version)?.[1];
    if (!major) return `libvirtd --version said: ${version}`;
    // The baseline drives the same QEMU as ferry (>= 9, from bookworm-backports on Debian 12): libvirt from the same suite.
    if (Number(major) < 11) return `libvirt ${major} is too old for the same-QEMU baseline (libvirt 11 drives QEMU 10)`;
  } catch (err) {
    return `libvirtd does not run: ${(err as Error).message}`;
  }
  return undefined;
}

/**
 * Installs libvirt (bench/setup-libvirt.sh) when it is missing; returns
 * undefined when libvirt is usable afterwards, else the reason.
 */
export async function ensureLibvirt(): Promise<string | undefined> {
  const missing = await libvirtAvailable();
  if (missing === undefined) return undefined;
  if (!/is not installed|is missing|is too old/.test(missing)) return missing;
  process.stderr.write(`libvirt baseline: ${missing}; installing it (bench/setup-libvirt.sh) ...\n`);
  try {
    await run('bash', [SETUP_SCRIPT], { timeoutMs: 600_000 });
  } catch (err) {
    const said = (err as Error).message.split('\n').filter(Boolean).slice(-1)[0] ?? '';
    return `${missing}, and bench/setup-libvirt.sh failed: ${said}`;
  }
  return libvirtAvailable();
}

export interface LibvirtVm {
  name: string;
  uuid: string;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  cmdline: string;
  mac: string;
  /** A local virtio-blk disk: a qcow2 image on the host the VM runs on, created empty by define(). */
  disk?: { sizeBytes: number };
}

export interface LibvirtMigration {
  /** Wall time of `virsh migrate` (connects, destination QEMU start, copy, switchover, confirm). */
  totalMs: number;
  /** libvirt's 'Total downtime': from the source's CPUs stopping to QEMU's migration completing, as libvirt saw them (it replaces QEMU's own figure). */
  downtimeMs: number | null;
  /** libvirt's 'Time elapsed' of the job. */
  elapsedMs: number | null;
  /** RAM bytes sent ('Memory processed'); null: libvirt did not report it. */
  bytes: number | null;
  /** Disk bytes copied ('File processed'), with copyStorageAll; null: libvirt did not report it. */
  diskBytes?: number | null;
  /** domjobinfo's raw statistics, for the JSON report. */
  raw: Record<string, string>;
}

interface Host {
  name: LibvirtHostName;
  /** Its network namespace. */
  netns: string;
  /** Its own directory; the MOUNTS and /etc/hosts come from here. */
  dir: string;
  /** Its address on the shared bridge (the migration stream goes there). */
  address: string;
  hostname: string;
  pid?: number;
}

export interface LibvirtPairOptions {
  /** A directory for the hosts' state (removed by stop()). */
  dir: string;
  /** The namespace whose bridge the hosts join (the benchmark's, where the probe runs). */
  bridgeNetns: string;
  bridge?: string;
  /** Address (with prefix) of each host on that bridge, e.g. ['10.79.0.2/24', '10.79.0.3/24']. */
  addresses: [string, string];
  /** Prefix of the host namespaces' names (unique per run). */
  prefix?: string;
}

export class LibvirtPair {
  private readonly vms = new Map<string, { vm: LibvirtVm; host: LibvirtHostName | undefined }>();

  private constructor(
    private readonly options: LibvirtPairOptions,
    private readonly hosts: Record<LibvirtHostName, Host>,
  ) {}

  static async start(options: LibvirtPairOptions): Promise<LibvirtPair> {
    const prefix = options.prefix ?? `ferry-lv-${process.pid}`;
    const hosts = Object.fromEntries(
      LIBVIRT_HOSTS.map((name, i) => [
        name,
        { name, netns: `${prefix}-${name}`, dir: path.join(options.dir, name), address: options.addresses[i]!, hostname: `${prefix}-${name}` },
      ]),
    ) as Record<LibvirtHostName, Host>;
    const pair = new LibvirtPair(options, hosts);
    try {
      for (const host of LIBVIRT_HOSTS) await pair.startHost(hosts[host]);
    } catch (err) {
      await pair.stop().catch(() => undefined);
      throw err;
    }
    return pair;
  }

  /** The connection URI of a host's daemon (its unix socket, reachable from this namespace). */
  uri(host: LibvirtHostName): string {
    return `qemu+unix:///system?socket=${path.join(this.hosts[host].dir, 'run', 'libvirt-sock')}`;
  }

  /** A file of the VM's disk as this namespace sees it. */
  diskFile(vm: LibvirtVm, host: LibvirtHostName): string {
    return path.join(this.hosts[host].dir, 'lib', 'images', `${vm.name}.qcow2`);
  }

  virsh(host: LibvirtHostName, args: string[], timeoutMs = 60_000): Promise<string> {
    return run('virsh', ['-q', '-c', this.uri(host), ...args], { timeoutMs });
  }

  private async startHost(host: Host): Promise<void> {
    const bridge = this.options.bridge ?? 'br0';
    for (const m of MOUNTS) await mkdir(path.join(host.dir, mountDir(m)), { recursive: true, mode: 0o700 });
    await mkdir(path.join(host.dir, 'lib', 'images'), { recursive: true });
    await mkdir(path.join(host.dir, 'log', 'qemu'), { recursive: true });
    const others = LIBVIRT_HOSTS.map((h) => this.hosts[h]);
    await writeFile(
      path.join(host.dir, 'hosts'),
      ['127.0.0.1 localhost', ...others.map((h) => `${h.address.split('/')[0]} ${h.hostname}`), ''].join('\n'),
    );
    const etc = path.join(host.dir, 'etc');
    await writeFile(
      path.join(etc, 'libvirtd.conf'),
      [
        // libvirt refuses to migrate to a host with its own host UUID or hostname.
        `host_uuid = "${randomUUID()}"`,
        // virsh reaches each daemon over its unix socket; only QEMU's migration stream crosses the bridge.
        'listen_tls = 0',
        'listen_tcp = 0',
        'unix_sock_rw_perms = "0700"',
        'auth_unix_rw = "none"',
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
        '',
      ].join('\n'),
    );
    await writeFile(
      path.join(etc, 'qemu.conf'),
      [
        // root: with /dev/kvm root-only, the default unprivileged user makes libvirt re-probe QEMU at every start.
        'user = "root"',
        'group = "root"',
        // Debian's default (libvirt-qemu) does not exist without libvirt-daemon-system.
        'swtpm_user = "root"',
        'swtpm_group = "root"',
        'dynamic_ownership = 0',
        'remember_owner = 0',
        'security_driver = "none"',
        // No per-domain mount namespace: the guest kernel and images are plain paths.
        'namespaces = [ ]',
        'cgroup_controllers = [ ]',
        // QEMU's stdout/stderr to a file, without virtlogd.
        'stdio_handler = "file"',
        '',
      ].join('\n'),
    );
    await writeFile(path.join(etc, 'libvirt.conf'), '');

    await createNetns(host.netns);
    const uplink = `lv${process.pid % 100000}${host.name}`; // ≤ 15 characters, unique per run
    await ip(this.options.bridgeNetns, 'link', 'add', uplink, 'type', 'veth', 'peer', 'name', 'up0', 'netns', host.netns);
    await ip(this.options.bridgeNetns, 'link', 'set', uplink, 'master', bridge, 'up');
    await createBridge(host.netns, 'br0', host.address);
    await ip(host.netns, 'link', 'set', 'up0', 'master', 'br0', 'up');

    const binds = [...MOUNTS.map((m) => [path.join(host.dir, mountDir(m)), m]), [path.join(host.dir, 'hosts'), '/etc/hosts']];
    const script = [
      'set -e',
      ...binds.map(([from, to]) => `mkdir -p ${to === '/etc/hosts' ? '/etc' : to} && mount --bind ${from} ${to}`),
      `hostname ${host.hostname}`,
      'exec /usr/sbin/libvirtd -d -p /run/libvirt/libvirtd.pid',
    ].join('\n');
    // libvirtd -d returns once the daemon is up; the daemon stays in the namespaces.
    const said = await spawnAndWait('ip', ['netns', 'exec', host.netns, 'unshare', '--mount', '--uts', '--propagation', 'private', 'sh', '-c', script], 60_000);
    if (said.code !== 0) throw new Error(`libvirtd on ${host.name} did not start (exit ${said.code}): ${said.output.trim() || (await this.logTail(host))}`);
    host.pid = Number((await readFile(path.join(host.dir, 'run', 'libvirtd.pid'), 'utf8')).trim());
    // The first connection waits for the drivers (QEMU capabilities probe).
    try {
      const hostname = (await this.virsh(host.name, ['hostname'], 120_000)).trim();
      if (hostname !== host.hostname) throw new Error(`libvirtd on ${host.name} calls itself '${hostname}'`);
    } catch (err) {
      throw new Error(`libvirtd on ${host.name} does not answer: ${(err as Error).message}; log: ${await this.logTail(host)}`);
    }
  }

  private async logTail(host: Host): Promise<string> {
    const text = await readFile(path.join(host.dir, 'log', 'libvirtd.log'), 'utf8').catch(() => '');
    return text.trim().split('\n').slice(-3).join(' | ') || '(no log)';
  }

  /** Defines the VM on both hosts (same UUID); creates its empty disk on h1. */
  async define(vm: LibvirtVm): Promise<void> {
    if (vm.disk) await run('qemu-img', ['create', '-q', '-f', 'qcow2', this.diskFile(vm, 'h1'), String(vm.disk.sizeBytes)]);
    const xml = domainXml(vm);
    for (const host of LIBVIRT_HOSTS) {
      const file = path.join(this.hosts[host].dir, `${vm.name}.xml`);
      await writeFile(file, xml);
      await this.virsh(host, ['define', file]);
    }
    this.vms.set(vm.name, { vm, host: undefined });
  }

  async start(vm: LibvirtVm, host: LibvirtHostName): Promise<void> {
    await this.virsh(host, ['start', vm.name], 120_000);
    this.entry(vm).host = host;
  }

  /** Where the VM runs now. */
  hostOf(vm: LibvirtVm): LibvirtHostName {
    const host = this.entry(vm).host;
    if (!host) throw new Error(`libvirt VM ${vm.name} is not running`);
    return host;
  }

  /**
   * `virsh migrate --live` (default flags, + `--copy-storage-all`) from one
   * host to the other. For a disk, an empty image of the same size is created
   * on the destination first (libvirt only pre-creates images of storage
   * pools), and the source's copy is removed afterwards.
   */
  async migrate(vm: LibvirtVm, from: LibvirtHostName, to: LibvirtHostName, options: { copyStorageAll?: boolean } = {}): Promise<LibvirtMigration> {
    if (from === to) throw new Error('libvirt migration: source and destination are the same host');
    if (options.copyStorageAll && vm.disk) {
      await rm(this.diskFile(vm, to), { force: true });
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', this.diskFile(vm, to), String(vm.disk.sizeBytes)]);
    }
    const args = ['migrate', '--live', ...(options.copyStorageAll ? ['--copy-storage-all'] : []), vm.name, this.uri(to)];
    const started = performance.now();
    try {
      await this.virsh(from, args, 600_000);
    } catch (err) {
      throw new Error(`virsh migrate ${from} → ${to}: ${(err as Error).message}`);
    }
    const totalMs = Math.round(performance.now() - started);
    this.entry(vm).host = to;
    if (options.copyStorageAll && vm.disk) await rm(this.diskFile(vm, from), { force: true });
    // The source's record has the disk mirror's figures (the destination's, from the migration cookie, has RAM only).
    const jobinfo = ['domjobinfo', '--completed', '--keep-completed', '--rawstats', vm.name];
    let raw = parseRawStats(await this.virsh(from, jobinfo).catch(() => ''));
    if (raw['memory_processed'] === undefined) raw = parseRawStats(await this.virsh(to, jobinfo));
    const num = (key: string) => (raw[key] === undefined ? null : Number(raw[key]));
    const result: LibvirtMigration = {
      totalMs,
      downtimeMs: num('downtime'),
      elapsedMs: num('time_elapsed'),
      bytes: num('memory_processed'),
      raw,
    };
    if (options.copyStorageAll) result.diskBytes = num('disk_processed');
    return result;
  }

  /**
   * Runs a QMP command in the VM's QEMU through libvirt (a debugging
   * channel: libvirt marks the domain tainted, which changes nothing here).
   */
  async qmp<T>(vm: LibvirtVm, command: string, args?: Record<string, unknown>): Promise<T> {
    const out = await this.virsh(this.hostOf(vm), ['qemu-monitor-command', vm.name, JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })], 180_000);
    const reply = JSON.parse(out) as { return?: T; error?: { desc: string } };
    if (reply.error) throw new Error(`${command}: ${reply.error.desc}`);
    return reply.return as T;
  }

  /**
   * Bytes of guest RAM in 4 KiB pages that are not all zero (what a migration
   * must send), read with QMP `pmemsave` like src/qemu/ram-scan.ts does for
   * ferry's guests. The dump goes to the host's /var/lib/libvirt, which is a
   * directory of this pair's.
   */
  async nonZeroRamBytes(vm: LibvirtVm): Promise<number> {
    if (vm.memoryMiB > 2048) throw new Error('nonZeroRamBytes: guests above 2 GiB (RAM above 4 GiB) are not handled');
    const host = this.hostOf(vm);
    const name = `${vm.name}-memory.dump`;
    const outside = path.join(this.hosts[host].dir, 'lib', name);
    await this.qmp(vm, 'pmemsave', { val: 0, size: vm.memoryMiB * 2 ** 20, filename: path.posix.join('/var/lib/libvirt', name) });
    try {
      const zero = Buffer.alloc(4096);
      let pages = 0;
      let pending: Buffer = Buffer.alloc(0);
      for await (const piece of createReadStream(outside, { highWaterMark: 2 ** 20 })) {
        pending = pending.length ? Buffer.concat([pending, piece as Buffer]) : (piece as Buffer);
        let off = 0;
        for (; off + 4096 <= pending.length; off += 4096) if (!pending.subarray(off, off + 4096).equals(zero)) pages++;
        pending = pending.subarray(off);
      }
      return pages * 4096;
    } finally {
      await rm(outside, { force: true });
    }
  }

  /** Stops the VM wherever it runs, undefines it on both hosts, removes its disk images. */
  async destroy(vm: LibvirtVm): Promise<void> {
    for (const host of LIBVIRT_HOSTS) {
      const state = await this.virsh(host, ['domstate', vm.name]).catch(() => '');
      if (state.trim() !== '' && state.trim() !== 'shut off') await this.virsh(host, ['destroy', vm.name]).catch(() => undefined);
      await this.virsh(host, ['undefine', vm.name]).catch(() => undefined);
      await rm(this.diskFile(vm, host), { force: true });
    }
    this.vms.delete(vm.name);
  }

  /** Stops every domain and both daemons, removes the namespaces and the directory. */
  async stop(): Promise<void> {
    for (const host of LIBVIRT_HOSTS.map((h) => this.hosts[h])) {
      if (host.pid) {
        const names = await this.virsh(host.name, ['list', '--name']).catch(() => '');
        for (const name of names.split('\n').map((s) => s.trim()).filter(Boolean)) await this.virsh(host.name, ['destroy', name]).catch(() => undefined);
        await killAndWait(host.pid);
      }
      // QEMU processes outlive libvirtd: end any the daemon left (their pid files are in its /run/libvirt/qemu).
      const qemuRun = path.join(host.dir, 'run', 'qemu');
      const pidFiles = await readdirSafe(qemuRun);
      for (const f of pidFiles.filter((f) => f.endsWith('.pid'))) {
        const pid = Number((await readFile(path.join(qemuRun, f), 'utf8').catch(() => '')).trim());
        if (pid > 1 && (await isQemu(pid))) await killAndWait(pid);
      }
      await deleteNetns(host.netns).catch(() => undefined);
    }
    await rm(this.options.dir, { recursive: true, force: true });
  }

  private entry(vm: LibvirtVm) {
    const e = this.vms.get(vm.name);
    if (!e) throw new Error(`libvirt VM ${vm.name} is not defined`);
    return e;
  }
}

function mountDir(m: string): string {
  return { '/etc/libvirt': 'etc', '/var/lib/libvirt': 'lib', '/run/libvirt': 'run', '/var/cache/libvirt': 'cache', '/var/log/libvirt': 'log' }[m]!;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/**
 * The domain: what ferry's own QEMU command line gives the same guest (q35,
 * qemu64, TCG, one vCPU, direct kernel boot, virtio-net on a bridge,
 * virtio-blk qcow2, a serial console to a file, nothing else: no balloon, no USB).
 */
export function domainXml(vm: LibvirtVm): string {
  const e = escapeXml;
  const disk = vm.disk
    ? `
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${IMAGES}/${e(vm.name)}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>`
    : '';
  return `<domain type='qemu'>
  <name>${e(vm.name)}</name>
  <uuid>${e(vm.uuid)}</uuid>
  <memory unit='MiB'>${vm.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${e(vm.kernel)}</kernel>
    <initrd>${e(vm.initrd)}</initrd>
    <cmdline>${e(vm.cmdline)}</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>${QEMU_BINARY}</emulator>${disk}
    <interface type='bridge'>
      <mac address='${e(vm.mac)}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/${e(vm.name)}-serial.log'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** `virsh domjobinfo --rawstats` lines "name: value" ("Job type: 3" is left out). */
export function parseRawStats(text: string): Record<string, string> {
  const raw: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+):\s*(\S+)\s*$/.exec(line);
    if (m) raw[m[1]!] = m[2]!.trim();
  }
  return raw;
}

function spawnAndWait(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    // stdin/stdout/stderr to pipes that close when the command ends: the daemon detaches from them (libvirtd -d).
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c) => (output += c));
    child.stderr.on('data', (c) => (output += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

async function readdirSafe(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

async function isQemu(pid: number): Promise<boolean> {
  const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
  return comm.startsWith('qemu-system');
}

/** Ends a process this benchmark started (a daemon, so not our child: a zombie counts as gone). */
async function killAndWait(pid: number, timeoutMs = 10_000): Promise<void> {
  const alive = () => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return !/^\d+ \(.*\) Z/.test(stat);
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (alive()) process.kill(pid, 'SIGKILL');
  while (alive()) await new Promise((r) => setTimeout(r, 50));
}
