/**
 * From the seed's stack to ferry: a libvirt domain (`virsh dumpxml`) read into what ferry can run —
 * memory, vCPUs, CPU model, firmware, disks, CD-ROM, NICs with their MACs, the guest agent channel —
 * and, as plainly, everything it cannot carry over, each with what happens instead. Nothing here
 * touches the cluster: `ferry vm import` shows this plan (and only it, with --dry-run) before it
 * uploads a disk.
 */
import { XMLParser } from 'fast-xml-parser';
import { NAME_PATTERN } from '../util/names.ts';
import { MAX_NICS } from '../qemu/spec.ts';

export interface ImportedDisk {
  /** The file the domain reads, on the machine the import runs on. */
  file: string;
  format: string;
  target: string;
}

export interface ImportedNic {
  mac?: string;
  /** The libvirt bridge or network it was on. */
  source: string;
}

/**
 * The NICs after the first on ferry networks: each on the network named like its libvirt network or
 * bridge, or whose bridge is its bridge; those without one are listed, not guessed.
 */
export function mapImportedNics(nics: ImportedNic[], networks: Array<{ name: string; bridge: string }>): { nics: Array<{ network: string; mac?: string }>; unmatched: string[] } {
  const mapped: Array<{ network: string; mac?: string }> = [];
  const unmatched: string[] = [];
  for (const nic of nics.slice(1)) {
    const network = networks.find((n) => n.name === nic.source) ?? networks.find((n) => n.bridge === nic.source);
    if (network) mapped.push({ network: network.name, ...(nic.mac ? { mac: nic.mac } : {}) });
    else unmatched.push(`NIC ${nic.mac ?? ''} on ${nic.source}: no ferry network is named ${nic.source} or uses bridge ${nic.source}; add one (ferry network add ${NAME_PATTERN.test(nic.source) ? nic.source : 'NAME'} --bridge BR) and import again`);
  }
  return { nics: mapped, unmatched };
}

export interface LibvirtImportPlan {
  name: string;
  uuid?: string;
  memoryMiB: number;
  vcpus: number;
  /** A named CPU model, where the domain had one ferry can run. */
  cpuModel?: string;
  firmware: 'bios' | 'uefi';
  boot: 'disk' | 'cdrom';
  /** In boot order: the first is the boot disk. */
  disks: ImportedDisk[];
  cdrom?: string;
  /** The domain's NICs in order: the first joins the host's guest bridge, the others a ferry network matched by name or bridge. */
  nics: ImportedNic[];
  guestAgent: boolean;
  /** Everything of the domain that does not come over, and what ferry does instead. */
  notCarried: string[];
}

export class LibvirtXmlError extends Error {
  override name = 'LibvirtXmlError';
}

type Node = Record<string, unknown>;

const UNIT_BYTES: Record<string, number> = { b: 1, bytes: 1, k: 1024, kib: 1024, kb: 1000, m: 2 ** 20, mib: 2 ** 20, mb: 1e6, g: 2 ** 30, gib: 2 ** 30, gb: 1e9, t: 2 ** 40, tib: 2 ** 40, tb: 1e12 };

export function planLibvirtImport(xml: string, rename?: string): LibvirtImportPlan {
  const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (name) => ['disk', 'interface', 'channel', 'graphics', 'hostdev', 'controller', 'video', 'sound', 'redirdev', 'filesystem', 'boot', 'serial', 'console', 'input', 'tpm', 'smartcard', 'rng', 'watchdog', 'memballoon'].includes(name) });
  let doc: Node;
  try {
    doc = parser.parse(xml) as Node;
  } catch (err) {
    throw new LibvirtXmlError(`not XML: ${(err as Error).message}`);
  }
  const domain = doc['domain'] as Node | undefined;
  if (!domain) throw new LibvirtXmlError("no <domain> element: give the output of 'virsh dumpxml NAME'");
  const notCarried: string[] = [];
  const text = (n: unknown): string => (typeof n === 'object' && n !== null ? String((n as Node)['#text'] ?? '') : String(n ?? ''));
  const attr = (n: unknown, a: string): string | undefined => (typeof n === 'object' && n !== null ? ((n as Node)[`@${a}`] as string | undefined) : undefined);

  const originalName = text(domain['name']);
  const name = rename ?? originalName;
  if (!NAME_PATTERN.test(name)) throw new LibvirtXmlError(`the domain is named '${originalName}', which is not a ferry VM name (a-z, 0-9, '-', starting with a letter); give one with --name`);
  const uuid = text(domain['uuid']).toLowerCase() || undefined;

  const memory = domain['memory'];
  const unit = (attr(memory, 'unit') ?? 'KiB').toLowerCase();
  if (!UNIT_BYTES[unit]) throw new LibvirtXmlError(`memory unit '${unit}' is not one libvirt writes`);
  const memoryMiB = Math.round((Number(text(memory)) * UNIT_BYTES[unit]!) / 2 ** 20);
  if (domain['currentMemory'] && text(domain['currentMemory']) !== text(memory)) notCarried.push('currentMemory (a balloon target): the VM gets its full memory');
  const vcpus = Number(text(domain['vcpu']) || 1);
  const current = attr(domain['vcpu'], 'current');
  if (current && Number(current) !== vcpus) notCarried.push(`vCPU hotplug (${current} of ${vcpus} online): the VM starts with all ${vcpus}`);
  if (attr(domain['vcpu'], 'cpuset')) notCarried.push(`vCPU pinning (cpuset ${attr(domain['vcpu'], 'cpuset')}): ferry does not pin vCPUs`);

  let cpuModel: string | undefined;
  const cpu = domain['cpu'] as Node | undefined;
  const mode = attr(cpu, 'mode') ?? (cpu ? 'custom' : undefined);
  if (mode === 'custom' && cpu?.['model']) cpuModel = text(cpu['model']);
  else if (mode === 'host-passthrough' || mode === 'host-model' || mode === 'maximum')
    notCarried.push(`CPU mode ${mode}: it ties a VM to one host's CPU, which ferry refuses for VMs that migrate; the VM gets the named model qemu64`);
  if (cpu?.['feature']) notCarried.push('CPU feature flags: the named model runs as QEMU defines it');
  if (cpu?.['topology']) notCarried.push('the CPU topology (sockets, cores, threads): the vCPUs are sockets of one core each');

  const os = (domain['os'] ?? {}) as Node;
  const loader = os['loader'];
  const firmware: 'bios' | 'uefi' = attr(os, 'firmware') === 'efi' || attr(loader, 'type') === 'pflash' || /OVMF|edk2|AAVMF/i.test(text(loader)) ? 'uefi' : 'bios';
  if (os['nvram']) notCarried.push(`the UEFI variables (${text(os['nvram']) || 'nvram'}): they start from OVMF's template; the guest boots by the removable-media path (\\EFI\\BOOT\\BOOTX64.EFI) or needs its boot entry again`);
  if (attr(loader, 'secure') === 'yes') notCarried.push('Secure Boot: ferry boots OVMF without it');
  const machine = attr(os['type'], 'machine') ?? '';
  if (/i440fx/.test(machine) || /^pc(-\d|$)/.test(machine)) notCarried.push(`machine type ${machine} (i440FX): ferry runs q35; the guest sees a PCIe chipset (Linux guests do not mind; Windows may ask to reactivate)`);
  const bootDevs = ((os['boot'] as Node[] | undefined) ?? []).map((b) => attr(b, 'dev'));

  const devices = (domain['devices'] ?? {}) as Node;
  const disks: ImportedDisk[] = [];
  let cdrom: string | undefined;
  let cdromOrder: number | undefined;
  const bootOrder: { disk: ImportedDisk; order: number }[] = [];
  for (const disk of (devices['disk'] as Node[] | undefined) ?? []) {
    const device = attr(disk, 'device') ?? 'disk';
    const type = attr(disk, 'type') ?? 'file';
    const target = attr(disk['target'], 'dev') ?? '?';
    const source = attr(disk['source'], 'file');
    if (!disk['source'] && (device === 'cdrom' || device === 'floppy')) {
      notCarried.push(`the empty ${device} drive ${target}: ferry attaches a CD-ROM only with an ISO in it (--cdrom)`);
      continue;
    }
    const bootElement = Array.isArray(disk['boot']) ? (disk['boot'] as Node[])[0] : disk['boot'];
    const order = attr(bootElement, 'order');
    if (type !== 'file' || !source) {
      notCarried.push(`${device} ${target} (type ${type}${attr(disk['source'], 'protocol') ? `, ${attr(disk['source'], 'protocol')}` : ''}${attr(disk['source'], 'dev') ? ` ${attr(disk['source'], 'dev')}` : ''}): only disks in files are imported; copy it into a file (qemu-img convert) or add its storage as a ferry pool`);
      continue;
    }
    if (device === 'cdrom') {
      if (cdrom) notCarried.push(`CD-ROM ${target} (${source}): ferry attaches one CD-ROM`);
      else {
        cdrom = source;
        if (order !== undefined) cdromOrder = Number(order);
      }
      continue;
    }
    if (device !== 'disk') {
      notCarried.push(`${device} ${target}: not a disk or CD-ROM`);
      continue;
    }
    const bus = attr(disk['target'], 'bus') ?? 'virtio';
    if (bus !== 'virtio') notCarried.push(`disk ${target} on ${bus}: it becomes a virtio-blk disk (the guest needs virtio drivers; Linux has them)`);
    const imported = { file: source, format: attr(disk['driver'], 'type') ?? 'raw', target };
    disks.push(imported);
    bootOrder.push({ disk: imported, order: Number(order ?? disks.length + 100) });
  }
  bootOrder.sort((a, b) => a.order - b.order);
  const orderedDisks = bootOrder.map((b) => b.disk);
  // Per-device <boot order> wins over <os><boot dev>, as in libvirt.
  const cdromFirst = cdromOrder !== undefined ? cdromOrder < (bootOrder[0]?.order ?? Infinity) : bootDevs[0] === 'cdrom';
  const boot: 'disk' | 'cdrom' = (cdromFirst || !orderedDisks.length) && cdrom ? 'cdrom' : 'disk';
  if (!orderedDisks.length && !cdrom) throw new LibvirtXmlError('the domain has no disk in a file and no CD-ROM: nothing to boot from');

  const nics: ImportedNic[] = [];
  for (const nic of (devices['interface'] as Node[] | undefined) ?? []) {
    const mac = attr(nic['mac'], 'address')?.toLowerCase();
    const model = attr(nic['model'], 'type') ?? 'default';
    const source = attr(nic['source'], 'bridge') ?? attr(nic['source'], 'network') ?? attr(nic, 'type') ?? '?';
    if (nics.length >= MAX_NICS) {
      notCarried.push(`NIC ${mac ?? ''} on ${source}: a ferry VM has at most ${MAX_NICS} NICs`);
      continue;
    }
    nics.push({ ...(mac ? { mac } : {}), source });
    if (nics.length === 1) notCarried.push(`NIC on ${source}${model !== 'virtio' ? ` (${model})` : ''}: it joins the host's guest bridge as a virtio-net NIC with the same MAC`);
    else if (model !== 'virtio') notCarried.push(`NIC ${mac ?? ''} model ${model}: it becomes a virtio-net NIC with the same MAC`);
  }
  const guestAgent = ((devices['channel'] as Node[] | undefined) ?? []).some((c) => attr(c['target'], 'name') === 'org.qemu.guest_agent.0');
  for (const [element, what] of [
    ['graphics', "graphics (VNC/SPICE): the VM gets a standard VGA card seen through ferry's VNC display (ferry vm vnc); SPICE, display passwords and listen addresses do not come over"],
    ['video', 'the video card'],
    ['sound', 'sound'],
    ['hostdev', 'host devices (PCI/USB passthrough): they cannot migrate'],
    ['redirdev', 'USB redirection'],
    ['filesystem', 'shared host directories (virtiofs/9p): they tie a VM to a host'],
    ['tpm', 'the TPM (its state would have to move with the VM)'],
    ['smartcard', 'smartcards'],
    ['watchdog', 'the watchdog device'],
  ] as const) {
    if (devices[element]) notCarried.push(what);
  }
  return { name, ...(uuid ? { uuid } : {}), memoryMiB, vcpus, ...(cpuModel ? { cpuModel } : {}), firmware, boot, disks: orderedDisks, ...(cdrom ? { cdrom } : {}), nics, guestAgent, notCarried };
}
