/**
 * A VM spec: what a guest *is* (memory, CPUs, devices), independent of the host
 * it runs on. Host-side details (QMP socket path, tap device names, accelerator
 * actually used) belong to the runtime, not the spec, so that the same spec can
 * be started on a migration destination.
 */
import { PASSTHROUGH_MODELS, PLAIN_MODEL } from './cpu-models.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import { parseCidr } from '../util/net.ts';
import { randomUUID } from 'node:crypto';
import { InvalidVmSpecError } from './errors.ts';

export type Accel = 'kvm' | 'tcg';
export type AccelChoice = Accel | 'auto';

/** How a NIC reaches the network. */
export type NicBackend =
  /** A tap device that the host attaches to this bridge (lab hosts, real hosts). */
  | { kind: 'bridge'; bridge: string }
  /**
   * A named network of the cluster (`ferry network add`): each host maps the name to its own bridge
   * (and VLAN) when it attaches the tap, so the spec is the same on every host.
   */
  | { kind: 'network'; network: string }
  /** QEMU's user-mode network: no root needed, not reachable from outside, not for migration tests. */
  | { kind: 'user' };

/** Whether the host gives this NIC a tap device (bridge and named-network NICs; not QEMU's user network). */
export function usesTap(nic: NicSpec): boolean {
  return nic.backend.kind !== 'user';
}

export interface NicSpec {
  /** Locally administered unicast MAC, kept across migration so the guest keeps its identity on the LAN. */
  mac: string;
  model: 'virtio-net-pci';
  backend: NicBackend;
  /** The IPv4 address with prefix ferry configured in the guest on this NIC (named networks), for conflicts and display. */
  address?: string;
}

/** NICs per VM (the test guest configures eth0..eth3 from its command line). */
export const MAX_NICS = 4;

/** Image formats ferry creates volumes in. */
export type VolumeFormat = 'qcow2' | 'raw';

/**
 * A virtio-blk disk backed by a volume of a storage pool. The spec names the
 * pool and volume; where its bytes are on a host is the storage driver's business.
 */
export interface DiskSpec {
  /** Device and QEMU node name inside this VM: disk0, disk1, ... */
  id: string;
  /**
   * How the guest sees it: a virtio-blk disk (the default), or the UEFI variable store (the second
   * flash chip of OVMF, raw and exactly the size of Debian's OVMF_VARS_4M.fd). Both migrate alike.
   */
  bus?: 'virtio' | 'pflash';
  /** A boot disk made from an image: the image's name (an overlay on shared-dir pools keeps it in use). */
  image?: string;
  pool: string;
  volume: string;
  format: VolumeFormat;
  sizeBytes: number;
  /** Where the volume is inside its pool, for pools that say (an iSCSI LUN number). */
  location?: string;
  /** Replicated pools: the two hosts that keep a replica; the VM runs on one of them. */
  replicas?: string[];
}

/** Direct kernel boot: how ferry's own guest image starts. */
export interface KernelBoot {
  kind: 'kernel';
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** Booting through firmware, from the VM's disks or its CD-ROM: how any real OS image starts. */
export interface FirmwareBoot {
  kind: 'firmware';
  /** SeaBIOS (QEMU's default) or UEFI (OVMF; the VM then has a variable store among its disks). */
  firmware: 'bios' | 'uefi';
  /** What the firmware tries first. */
  order: 'disk' | 'cdrom';
}

export type BootSpec = KernelBoot | FirmwareBoot;

/** An ISO image attached read-only (an installer, a live system). It is an image's volume, never the VM's. */
/** An ISO in a CD-ROM drive: an image's volume, opened read-only. */
export interface IsoMedium {
  image: string;
  pool: string;
  volume: string;
  sizeBytes: number;
}

/** The VM's CD-ROM drive (SATA): an ISO in it, or none (ejected; the drive stays, as in a real machine). */
export interface CdromSpec {
  medium?: IsoMedium;
}

/** Size of the UEFI variable store: Debian's OVMF_VARS_4M.fd, which pairs with OVMF_CODE_4M.fd. */
export const UEFI_VARS_BYTES = 540_672;

export interface VmSpec {
  name: string;
  uuid: string;
  memoryMiB: number;
  vcpus: number;
  /**
   * A named, versioned QEMU model ("Westmere-v1"), an ISA level ("x86-64-v3"), or — with
   * cpuPassthrough — "host"/"max", the host's own CPU (cluster/cpu.ts says where each can run).
   */
  cpuModel: string;
  /** The user's opt-in to "host"/"max": the VM then moves only between hosts with the same CPU features. */
  cpuPassthrough?: boolean;
  machine: string;
  accel: AccelChoice;
  boot: BootSpec;
  nics: NicSpec[];
  disks: DiskSpec[];
  cdrom?: CdromSpec;
  /** A virtio-serial channel for the QEMU guest agent (qemu-ga), where the guest runs one. */
  guestAgent?: boolean;
  /** A graphics card (standard VGA), seen through the VM's VNC display; absent: the serial line only. */
  display?: 'vga';
}

export interface VmSpecInput {
  name: string;
  uuid?: string;
  memoryMiB?: number;
  vcpus?: number;
  cpuModel?: string;
  cpuPassthrough?: boolean;
  machine?: string;
  accel?: AccelChoice;
  boot: BootSpec;
  nics?: NicSpec[];
  disks?: DiskSpec[];
  cdrom?: CdromSpec;
  guestAgent?: boolean;
  display?: 'vga';
}

const NAME = NAME_PATTERN;
const DISK_ID = /^disk[0-9]{1,2}$/;
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Fills defaults and validates; throws InvalidVmSpecError naming the field at fault. */
export function makeVmSpec(input: VmSpecInput): VmSpec {
  const spec: VmSpec = {
    name: input.name,
    uuid: input.uuid ?? randomUUID(),
    memoryMiB: input.memoryMiB ?? 256,
    vcpus: input.vcpus ?? 1,
    cpuModel: input.cpuModel ?? PLAIN_MODEL,
    ...(input.cpuPassthrough ? { cpuPassthrough: true } : {}),
    machine: input.machine ?? 'q35',
    accel: input.accel ?? 'auto',
    boot: input.boot,
    nics: input.nics ?? [],
    disks: input.disks ?? [],
    ...(input.cdrom ? { cdrom: input.cdrom } : {}),
    ...(input.guestAgent ? { guestAgent: true } : {}),
    ...(input.display ? { display: input.display } : {}),
  };
  validateVmSpec(spec);
  return spec;
}

export function validateVmSpec(spec: VmSpec): void {
  if (!NAME.test(spec.name))
    throw new InvalidVmSpecError('name', `'${spec.name}' must start with a letter and use only a-z, 0-9 and '-' (at most 63 characters)`);
  if (!UUID.test(spec.uuid)) throw new InvalidVmSpecError('uuid', `'${spec.uuid}' is not a lowercase UUID`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 64 || spec.memoryMiB > 1024 * 1024)
    throw new InvalidVmSpecError('memoryMiB', `${spec.memoryMiB} must be a whole number of MiB between 64 and 1048576`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 255)
    throw new InvalidVmSpecError('vcpus', `${spec.vcpus} must be a whole number between 1 and 255`);
  if (PASSTHROUGH_MODELS.includes(spec.cpuModel) && !spec.cpuPassthrough)
    throw new InvalidVmSpecError(
      'cpuModel',
      `'${spec.cpuModel}' passes this host's own CPU through: the VM could then move only to hosts with exactly the same CPU features; name a model every host runs (see 'ferry cluster cpu'), or opt in with --cpu-passthrough`,
    );
  if (spec.cpuPassthrough && !PASSTHROUGH_MODELS.includes(spec.cpuModel))
    throw new InvalidVmSpecError('cpuPassthrough', `--cpu-passthrough is for the models ${PASSTHROUGH_MODELS.join(' and ')}; '${spec.cpuModel}' is a named model (drop --cpu-passthrough)`);
  if (!/^[A-Za-z][A-Za-z0-9._-]{0,63}$/.test(spec.cpuModel)) throw new InvalidVmSpecError('cpuModel', `'${spec.cpuModel}' is not a CPU model name (see 'ferry cluster cpu' for the models)`);
  if (!/^[a-z0-9._-]+$/.test(spec.machine)) throw new InvalidVmSpecError('machine', `'${spec.machine}' is not a machine type name`);
  if (!['kvm', 'tcg', 'auto'].includes(spec.accel)) throw new InvalidVmSpecError('accel', `'${spec.accel}' must be kvm, tcg or auto`);
  validateBoot(spec);
  const macs = new Set<string>();
  spec.nics.forEach((nic, i) => {
    if (!MAC.test(nic.mac)) throw new InvalidVmSpecError(`nics[${i}].mac`, `'${nic.mac}' is not a lowercase MAC address like 52:54:00:12:34:56`);
    const firstOctet = parseInt(nic.mac.slice(0, 2), 16);
    if (firstOctet & 1) throw new InvalidVmSpecError(`nics[${i}].mac`, `'${nic.mac}' is a multicast address; use a unicast one (even first octet)`);
    if (macs.has(nic.mac)) throw new InvalidVmSpecError(`nics[${i}].mac`, `'${nic.mac}' is used twice`);
    macs.add(nic.mac);
    if (nic.backend.kind === 'bridge' && !/^[A-Za-z0-9_.-]{1,15}$/.test(nic.backend.bridge))
      throw new InvalidVmSpecError(`nics[${i}].backend.bridge`, `'${nic.backend.bridge}' is not a network interface name`);
    if (nic.address !== undefined && !parseCidr(nic.address))
      throw new InvalidVmSpecError(`nics[${i}].address`, `'${nic.address}' is not an IPv4 address with a prefix of 8 to 30 bits, like 10.78.20.5/24`);
    if (nic.backend.kind === 'network' && !NAME_PATTERN.test(nic.backend.network))
      throw new InvalidVmSpecError(`nics[${i}].backend.network`, `'${nic.backend.network}' is not a network name: names ${NAME_RULE}`);
  });
  if (spec.nics.length > MAX_NICS) throw new InvalidVmSpecError('nics', `${spec.nics.length} NICs: a VM has at most ${MAX_NICS}`);
  const ids = new Set<string>();
  const volumes = new Set<string>();
  (spec.disks ?? []).forEach((disk, i) => {
    if (!DISK_ID.test(disk.id)) throw new InvalidVmSpecError(`disks[${i}].id`, `'${disk.id}' must be disk0, disk1, ...`);
    if (ids.has(disk.id)) throw new InvalidVmSpecError(`disks[${i}].id`, `'${disk.id}' is used twice`);
    ids.add(disk.id);
    if (!NAME.test(disk.pool)) throw new InvalidVmSpecError(`disks[${i}].pool`, `'${disk.pool}' is not a storage pool name`);
    if (!NAME.test(disk.volume)) throw new InvalidVmSpecError(`disks[${i}].volume`, `'${disk.volume}' is not a volume name`);
    if (volumes.has(`${disk.pool}/${disk.volume}`)) throw new InvalidVmSpecError(`disks[${i}].volume`, `'${disk.pool}/${disk.volume}' is attached twice`);
    volumes.add(`${disk.pool}/${disk.volume}`);
    if (disk.format !== 'qcow2' && disk.format !== 'raw') throw new InvalidVmSpecError(`disks[${i}].format`, `'${disk.format}' must be qcow2 or raw`);
    if (disk.bus === 'pflash') {
      if (disk.format !== 'raw' || disk.sizeBytes !== UEFI_VARS_BYTES)
        throw new InvalidVmSpecError(`disks[${i}]`, `a UEFI variable store is a raw volume of exactly ${UEFI_VARS_BYTES} bytes (OVMF_VARS_4M.fd)`);
    } else if (disk.bus !== undefined && disk.bus !== 'virtio') {
      throw new InvalidVmSpecError(`disks[${i}].bus`, `'${disk.bus}' must be virtio or pflash`);
    } else if (!Number.isInteger(disk.sizeBytes) || disk.sizeBytes < 1024 * 1024 || disk.sizeBytes % 512 !== 0) {
      throw new InvalidVmSpecError(`disks[${i}].sizeBytes`, `${disk.sizeBytes} must be a whole number of 512-byte sectors, at least 1 MiB`);
    }
  });
  const flash = spec.disks.filter((d) => d.bus === 'pflash');
  const uefi = spec.boot.kind === 'firmware' && spec.boot.firmware === 'uefi';
  if (uefi && flash.length !== 1) throw new InvalidVmSpecError('disks', 'a UEFI VM needs exactly one UEFI variable store among its disks');
  if (!uefi && flash.length) throw new InvalidVmSpecError('disks', 'only a UEFI VM has a variable store (bus pflash)');
  if (spec.cdrom) {
    const medium = spec.cdrom.medium;
    if (medium && (!NAME.test(medium.pool) || !NAME.test(medium.volume) || !NAME.test(medium.image)))
      throw new InvalidVmSpecError('cdrom', `'${medium.pool}/${medium.volume}' does not name an image volume`);
    if (spec.boot.kind !== 'firmware') throw new InvalidVmSpecError('cdrom', 'a CD-ROM needs firmware boot (--boot disk or cdrom), not a kernel');
  }
  if (spec.boot.kind === 'firmware' && spec.boot.order === 'cdrom' && !spec.cdrom)
    throw new InvalidVmSpecError('boot', 'boots from the CD-ROM but has none; attach an ISO image (--cdrom IMAGE)');
  if (spec.boot.kind === 'firmware' && spec.boot.order === 'disk' && !spec.disks.some((d) => d.bus !== 'pflash'))
    throw new InvalidVmSpecError('boot', 'boots from a disk but has none; give it one made from an image (--image IMAGE)');
}

function validateBoot(spec: VmSpec): void {
  const boot = spec.boot;
  if (boot.kind === 'kernel') {
    if (!boot.kernel || !boot.initrd) throw new InvalidVmSpecError('boot', 'needs a kernel and an initrd');
    if (/[,\n]/.test(boot.kernel + boot.initrd)) throw new InvalidVmSpecError('boot', 'paths must not contain commas or newlines');
    return;
  }
  if (boot.kind !== 'firmware') throw new InvalidVmSpecError('boot.kind', `'${(boot as { kind: string }).kind}' must be kernel or firmware`);
  if (boot.firmware !== 'bios' && boot.firmware !== 'uefi') throw new InvalidVmSpecError('boot.firmware', `'${boot.firmware}' must be bios or uefi`);
  if (boot.order !== 'disk' && boot.order !== 'cdrom') throw new InvalidVmSpecError('boot.order', `'${boot.order}' must be disk or cdrom`);
}

/** A stable locally administered MAC derived from a VM's uuid and NIC index. */
export function macFor(uuid: string, index: number): string {
  const hex = uuid.replace(/-/g, '');
  const bytes = [0x52, 0x54, parseInt(hex.slice(0, 2), 16), parseInt(hex.slice(2, 4), 16), parseInt(hex.slice(4, 6), 16), index & 0xff];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Where two specs differ in ways that make a live migration between them impossible. */
export function migrationIncompatibilities(source: VmSpec, destination: VmSpec): string[] {
  const problems: string[] = [];
  const differ = (what: string, a: unknown, b: unknown, hint: string) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) problems.push(`${what}: source ${fmt(a)}, destination ${fmt(b)} — ${hint}`);
  };
  differ('memory', `${source.memoryMiB} MiB`, `${destination.memoryMiB} MiB`, "start the destination with the source's memory size");
  differ('vcpus', source.vcpus, destination.vcpus, "start the destination with the source's vCPU count");
  differ('CPU model', source.cpuModel, destination.cpuModel, 'use the same CPU model on both sides');
  differ('machine type', source.machine, destination.machine, 'use the same machine type on both sides');
  differ('uuid', source.uuid, destination.uuid, 'the destination must run the same VM');
  differ('boot', source.boot, destination.boot, 'the destination must boot the same way (the same kernel and command line, or the same firmware)');
  differ('CD-ROM', source.cdrom ?? null, destination.cdrom ?? null, 'the destination must have the same ISO attached');
  differ('display', source.display ?? 'none', destination.display ?? 'none', 'the destination must have the same graphics card');
  differ('guest agent channel', source.guestAgent ?? false, destination.guestAgent ?? false, 'the destination must have the same virtio-serial devices');
  differ(
    'NICs',
    source.nics.map(describeNic),
    destination.nics.map(describeNic),
    'the destination must have the same NICs with the same MACs',
  );
  differ(
    'disks',
    (source.disks ?? []).map((d) => `${d.id} ${d.bus ?? 'virtio'} ${d.sizeBytes} B`),
    (destination.disks ?? []).map((d) => `${d.id} ${d.bus ?? 'virtio'} ${d.sizeBytes} B`),
    'the destination must have the same disks with the same sizes',
  );
  return problems;
}

function describeNic(nic: NicSpec): string {
  const on = nic.backend.kind === 'network' ? ` on network ${nic.backend.network}` : nic.backend.kind === 'bridge' ? ` on bridge ${nic.backend.bridge}` : ' (user)';
  return `${nic.model} ${nic.mac}${on}`;
}

function fmt(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}
