import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildQemuArgv } from '../../src/qemu/argv.ts';
import { InvalidVmSpecError } from '../../src/qemu/errors.ts';
import { CDROM_ID } from '../../src/qemu/argv.ts';
import { ovmfCode } from '../../src/qemu/firmware.ts';
import { UEFI_VARS_BYTES, macFor, makeVmSpec, migrationIncompatibilities, type DiskSpec, type VmSpecInput } from '../../src/qemu/spec.ts';

const boot = { kind: 'kernel' as const, kernel: '/img/vmlinuz', initrd: '/img/initrd.gz', cmdline: 'console=ttyS0' };
const input = (over: Partial<VmSpecInput> = {}): VmSpecInput => ({ name: 'web1', uuid: '0b0e8f5e-2c54-4f27-9d0e-6f1f0f6a1b2c', boot, ...over });
const disk = (id: string): DiskSpec => ({ id, pool: 'shared', volume: `web1-${id}`, format: 'qcow2', sizeBytes: 2 ** 30 });
const vars = (id: string): DiskSpec => ({ id, pool: 'shared', volume: 'web1-vars', format: 'raw', sizeBytes: UEFI_VARS_BYTES, bus: 'pflash' });
const cdrom = { medium: { image: 'debian-netinst', pool: 'shared', volume: 'image-debian-netinst', sizeBytes: 2048 * 1000 } };

describe('VM spec', () => {
  it('fills defaults', () => {
    const spec = makeVmSpec(input());
    assert.equal(spec.memoryMiB, 256);
    assert.equal(spec.vcpus, 1);
    assert.equal(spec.cpuModel, 'x86-64-v1');
    assert.equal(spec.accel, 'auto');
  });

  const bad: [string, Partial<VmSpecInput>, RegExp][] = [
    ['name', { name: 'Web 1' }, /name 'Web 1' must start with a letter/],
    ['memoryMiB', { memoryMiB: 10 }, /memoryMiB 10 must be a whole number of MiB between 64/],
    ['vcpus', { vcpus: 0 }, /vcpus 0/],
    ['cpuModel', { cpuModel: 'host' }, /'host' passes this host's own CPU through.*--cpu-passthrough/],
    ['accel', { accel: 'xen' as never }, /accel 'xen' must be kvm, tcg or auto/],
    ['mac', { nics: [{ mac: '01:00:00:00:00:01', model: 'virtio-net-pci', backend: { kind: 'user' } }] }, /multicast/],
    ['mac format', { nics: [{ mac: '52-54-00-00-00-01', model: 'virtio-net-pci', backend: { kind: 'user' } }] }, /not a lowercase MAC/],
    ['kernel path', { boot: { ...boot, kernel: '/a,b' } }, /commas/],
    ['UEFI VM without a variable store', { boot: { kind: 'firmware', firmware: 'uefi', order: 'disk' }, disks: [disk('disk0')] }, /a UEFI VM needs exactly one UEFI variable store/],
    ['variable store of the wrong size', { boot: { kind: 'firmware', firmware: 'uefi', order: 'disk' }, disks: [disk('disk0'), { ...disk('disk1'), bus: 'pflash', format: 'raw' }] }, /exactly 540672 bytes/],
    ['BIOS VM with a variable store', { boot: { kind: 'firmware', firmware: 'bios', order: 'disk' }, disks: [disk('disk0'), vars('disk1')] }, /only a UEFI VM has a variable store/],
    ['CD-ROM boot without a CD-ROM', { boot: { kind: 'firmware', firmware: 'bios', order: 'cdrom' } }, /boots from the CD-ROM but has none/],
    ['disk boot without a disk', { boot: { kind: 'firmware', firmware: 'bios', order: 'disk' } }, /boots from a disk but has none/],
    ['CD-ROM on a kernel boot', { cdrom }, /a CD-ROM needs firmware boot/],
    ['firmware name', { boot: { kind: 'firmware', firmware: 'coreboot' as never, order: 'disk' }, disks: [disk('disk0')] }, /'coreboot' must be bios or uefi/],
  ];
  for (const [what, over, message] of bad) {
    it(`refuses a bad ${what} with a message naming it`, () => {
      assert.throws(() => makeVmSpec(input(over)), (err: unknown) => err instanceof InvalidVmSpecError && message.test(err.message));
    });
  }

  it('derives stable unicast MACs from the uuid', () => {
    const mac = macFor('0b0e8f5e-2c54-4f27-9d0e-6f1f0f6a1b2c', 1);
    assert.equal(mac, '52:54:0b:0e:8f:01');
    assert.equal(macFor('0b0e8f5e-2c54-4f27-9d0e-6f1f0f6a1b2c', 1), mac);
  });

  it('lists every difference that makes two specs migration-incompatible', () => {
    const a = makeVmSpec(input());
    assert.deepEqual(migrationIncompatibilities(a, { ...a }), []);
    const problems = migrationIncompatibilities(a, { ...a, memoryMiB: 512, vcpus: 2 });
    assert.equal(problems.length, 2);
    assert.match(problems[0]!, /memory: source 256 MiB, destination 512 MiB/);
    assert.match(problems[1]!, /vcpus: source 1, destination 2/);
  });
});

describe('QEMU command line', () => {
  const spec = makeVmSpec(
    input({ nics: [{ mac: '52:54:00:00:00:01', model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: 'br0' } }] }),
  );
  const runtime = { accel: 'tcg' as const, qmpSocket: '/run/x/qmp.sock', serialLog: '/run/x/serial.log', serialSocket: '/run/x/serial.sock', taps: ['ft0'], incoming: false };

  it('puts QMP on a private unix socket and the serial console on another, logged', () => {
    const argv = buildQemuArgv(spec, runtime).join(' ');
    assert.match(argv, /-chardev socket,id=qmp,path=\/run\/x\/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control/);
    assert.match(argv, /-chardev socket,id=serial0,path=\/run\/x\/serial.sock,server=on,wait=off,logfile=\/run\/x\/serial.log,logappend=on/);
    assert.match(argv, /-kernel \/img\/vmlinuz -initrd \/img\/initrd.gz -append console=ttyS0/);
    assert.match(argv, /-accel tcg -cpu kvm64-v1,enforce -m 256M -smp 1/);
    assert.match(argv, /-netdev tap,id=net0,ifname=ft0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01/);
    assert.doesNotMatch(argv, /-incoming/);
  });

  it('starts a migration destination paused and deferred', () => {
    const argv = buildQemuArgv(spec, { ...runtime, incoming: true });
    assert.deepEqual(argv.slice(-3), ['-S', '-incoming', 'defer']);
  });

  it('boots UEFI from OVMF with the VM\'s variable store as the second flash chip, first from its disk, with the CD-ROM second', () => {
    const uefi = makeVmSpec(input({ boot: { kind: 'firmware', firmware: 'uefi', order: 'disk' }, disks: [disk('disk0'), vars('disk1')], cdrom }));
    const attach = (id: string) => ({ id, blockdev: { driver: 'qcow2', file: { driver: 'file', filename: `/img/${id}` } }, serial: id });
    const argv = buildQemuArgv(uefi, { ...runtime, taps: [], disks: [attach('disk0'), attach('disk1'), attach(CDROM_ID)] });
    const text = argv.join(' ');
    assert.match(text, /-machine type=q35,memory-backend=pc.ram,pflash0=fw-code,pflash1=disk1 /);
    assert.ok(argv.includes(JSON.stringify({ driver: 'raw', 'node-name': 'fw-code', 'read-only': true, file: { driver: 'file', filename: ovmfCode(), 'read-only': true } })));
    assert.match(text, /-device virtio-blk-pci,drive=disk0,id=disk0-dev,serial=disk0,bootindex=1/);
    assert.doesNotMatch(text, /drive=disk1/, 'the variable store is a flash chip, not a disk the guest sees');
    assert.match(text, /-device ide-cd,drive=cd0,bus=ide.0,id=cd0-dev,bootindex=2/);
    assert.doesNotMatch(text, /-kernel/);
    assert.ok(argv.some((a) => a.includes('"node-name":"cd0"') && a.includes('"read-only":true')), 'the ISO is opened read-only');
  });

  it('refuses a bridge NIC without a tap', () => {
    assert.throws(() => buildQemuArgv(spec, { ...runtime, taps: [] }), /no tap device given for NIC 0/);
  });
});
