import { cpuArgument, hiddenFeaturesOfThisHost } from './cpu-models.ts';
import { createHash } from 'node:crypto';
/** The QEMU command line for a VM spec on this host. */
import { usesTap, type Accel, type VmSpec } from './spec.ts';
import { ovmfCode } from './firmware.ts';

/** Where QEMU gets the TLS credentials of the migration stream (a directory with ca-cert.pem, server-/client-cert.pem, -key.pem). */
export interface TlsCredentials {
  id: string;
  dir: string;
  endpoint: 'server' | 'client';
}

/**
 * How one disk of the spec is opened on this host: the -blockdev of its format
 * node (named after the disk id), as the storage driver describes it.
 */
export interface DiskAttachment {
  id: string;
  blockdev: Record<string, unknown>;
  /** Guest-visible serial (virtio-blk allows 20 characters): the volume name. */
  serial: string;
}

/** Host-side facts of one QEMU process: not part of the VM, different on each side of a migration. */
export interface QemuRuntime {
  accel: Accel;
  qmpSocket: string;
  serialLog: string;
  /** The serial console's socket, for `ferry vm console` (through the agent); everything the guest prints also goes to serialLog. */
  serialSocket: string;
  /**
   * The VM's VNC display, on a unix socket in the VM's private directory: only this host's agent
   * reaches it, and relays it (over its authenticated API) to viewers.
   */
  vncSocket?: string;
  /** The guest agent's channel (spec.guestAgent), for this host's agent only. */
  guestAgentSocket?: string;
  /** Tap device per bridge NIC, in the order of spec.nics. */
  taps: string[];
  /** Start as a migration destination: paused, waiting for `migrate-incoming`. */
  incoming: boolean;
  tls?: TlsCredentials;
  /** One per spec.disks entry, in that order; then the CD-ROM's medium's, under CDROM_ID. */
  disks?: DiskAttachment[];
}

/** The node name of a VM's CD-ROM medium. */
export const CDROM_ID = 'cd0';
/** The id of a VM's CD-ROM drive (QMP's tray and medium commands name it). */
export const CDROM_DEVICE = `${CDROM_ID}-dev`;

/** The blockdev of an ISO in the CD-ROM drive, as given on the command line or to blockdev-add. */
export function cdromBlockdev(blockdev: Record<string, unknown>): Record<string, unknown> {
  return { ...blockdev, 'node-name': CDROM_ID, 'read-only': true };
}

/** virtio-blk keeps 20 characters of a serial: longer names are cut and given a hash, so two disks never share one. */
export function diskSerial(name: string): string {
  if (name.length <= 20) return name;
  return `${name.slice(0, 13)}-${createHash('sha1').update(name).digest('hex').slice(0, 6)}`;
}

export function buildQemuArgv(spec: VmSpec, runtime: QemuRuntime): string[] {
  const boot = spec.boot;
  const flash = spec.disks.find((d) => d.bus === 'pflash');
  const argv = [
    '-name', `guest=${spec.name},debug-threads=on`,
    '-uuid', spec.uuid,
    // Guest RAM in a memfd (the RAM block keeps its name, pc.ram, for migration): the memory check
    // reads it straight from there instead of dumping it to a file with pmemsave, in the pause.
    '-machine', `type=${spec.machine},memory-backend=pc.ram${flash ? `,pflash0=fw-code,pflash1=${flash.id}` : ''}`,
    '-object', `memory-backend-memfd,id=pc.ram,size=${spec.memoryMiB}M,share=on`,
    '-accel', runtime.accel,
    '-cpu', cpuArgument(spec, hiddenFeaturesOfThisHost()),
    '-m', `${spec.memoryMiB}M`,
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-msg', 'timestamp=on',
    '-chardev', `socket,id=qmp,path=${runtime.qmpSocket},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', `socket,id=serial0,path=${runtime.serialSocket},server=on,wait=off,logfile=${runtime.serialLog},logappend=on`,
    '-device', 'isa-serial,chardev=serial0',
  ];
  if (boot.kind === 'kernel') argv.push('-kernel', boot.kernel, '-initrd', boot.initrd, '-append', boot.cmdline);
  // OVMF's code: read-only, the same file on every host (its contents migrate with the RAM).
  if (flash) argv.push('-blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'fw-code', 'read-only': true, file: { driver: 'file', filename: ovmfCode(), 'read-only': true } }));
  const bootIndex = (first: boolean) => (boot.kind === 'firmware' ? `,bootindex=${first ? 1 : 2}` : '');
  let firstDisk = true;
  let tapIndex = 0;
  spec.nics.forEach((nic, i) => {
    if (usesTap(nic)) {
      const tap = runtime.taps[tapIndex++];
      if (!tap) throw new Error(`no tap device given for NIC ${i} (${nic.mac})`);
      argv.push('-netdev', `tap,id=net${i},ifname=${tap},script=no,downscript=no`);
    } else {
      argv.push('-netdev', `user,id=net${i}`);
    }
    argv.push('-device', `${nic.model},netdev=net${i},mac=${nic.mac},id=nic${i}`);
  });
  spec.disks.forEach((disk, i) => {
    const attachment = runtime.disks?.[i];
    if (!attachment || attachment.id !== disk.id) throw new Error(`no storage given for disk ${disk.id} (${disk.pool}/${disk.volume})`);
    argv.push('-blockdev', JSON.stringify({ ...attachment.blockdev, 'node-name': disk.id }));
    if (disk.bus === 'pflash') return; // the machine's second flash chip (above)
    argv.push('-device', `virtio-blk-pci,drive=${disk.id},id=${disk.id}-dev,serial=${diskSerial(attachment.serial)}${firstDisk ? bootIndex(boot.kind === 'firmware' && boot.order === 'disk') : ''}`);
    firstDisk = false;
  });
  if (spec.cdrom) {
    const medium = spec.cdrom.medium;
    if (medium) {
      const cdrom = runtime.disks?.find((d) => d.id === CDROM_ID);
      if (!cdrom) throw new Error(`no storage given for the CD-ROM (${medium.pool}/${medium.volume})`);
      argv.push('-blockdev', JSON.stringify({ ...cdromBlockdev(cdrom.blockdev) }));
    }
    // q35's built-in AHCI controller: the CD-ROM an installer expects (not virtio: firmware and installers know SATA).
    // An empty drive has no backend; a medium inserted later gets one (QMP blockdev-add, CDROM_ID).
    argv.push('-device', `ide-cd,${medium ? `drive=${CDROM_ID},` : ''}bus=ide.0,id=${CDROM_DEVICE}${bootIndex(boot.kind === 'firmware' && boot.order === 'cdrom')}`);
  }
  if (spec.display === 'vga') argv.push('-device', 'VGA,id=video0');
  // Every VM has a VNC display (without a graphics card it says so); QEMU accepts several viewers at once.
  if (runtime.vncSocket) argv.push('-vnc', `unix:${runtime.vncSocket}`);
  if (spec.guestAgent) {
    if (!runtime.guestAgentSocket) throw new Error('no socket given for the guest agent channel');
    argv.push('-chardev', `socket,id=qga0,path=${runtime.guestAgentSocket},server=on,wait=off`);
    argv.push('-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0');
  }
  if (runtime.tls) {
    argv.push('-object', `tls-creds-x509,id=${runtime.tls.id},dir=${runtime.tls.dir},endpoint=${runtime.tls.endpoint},verify-peer=on`);
  }
  if (runtime.incoming) argv.push('-S', '-incoming', 'defer');
  return argv;
}
