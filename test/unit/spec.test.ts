import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildQemuArgv } from '../../src/qemu/argv.ts';
import { InvalidVmSpecError } from '../../src/qemu/errors.ts';
import { macFor, makeVmSpec, migrationIncompatibilities, type VmSpecInput } from '../../src/qemu/spec.ts';

const boot = { kind: 'kernel' as const, kernel: '/img/vmlinuz', initrd: '/img/initrd.gz', cmdline: 'console=ttyS0' };
const input = (over: Partial<VmSpecInput> = {}): VmSpecInput => ({ name: 'web1', uuid: '0b0e8f5e-2c54-4f27-9d0e-6f1f0f6a1b2c', boot, ...over });

describe('VM spec', () => {
  it('fills defaults', () => {
    const spec = makeVmSpec(input());
    assert.equal(spec.memoryMiB, 256);
    assert.equal(spec.vcpus, 1);
    assert.equal(spec.cpuModel, 'qemu64');
    assert.equal(spec.accel, 'auto');
  });

  const bad: [string, Partial<VmSpecInput>, RegExp][] = [
    ['name', { name: 'Web 1' }, /name 'Web 1' must start with a letter/],
    ['memoryMiB', { memoryMiB: 10 }, /memoryMiB 10 must be a whole number of MiB between 64/],
    ['vcpus', { vcpus: 0 }, /vcpus 0/],
    ['cpuModel', { cpuModel: 'host' }, /'host' cannot be live-migrated/],
    ['accel', { accel: 'xen' as never }, /accel 'xen' must be kvm, tcg or auto/],
    ['mac', { nics: [{ mac: '01:00:00:00:00:01', model: 'virtio-net-pci', backend: { kind: 'user' } }] }, /multicast/],
    ['mac format', { nics: [{ mac: '52-54-00-00-00-01', model: 'virtio-net-pci', backend: { kind: 'user' } }] }, /not a lowercase MAC/],
    ['kernel path', { boot: { ...boot, kernel: '/a,b' } }, /commas/],
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
  const runtime = { accel: 'tcg' as const, qmpSocket: '/run/x/qmp.sock', serialLog: '/run/x/serial.log', taps: ['ft0'], incoming: false };

  it('puts QMP on a private unix socket and the serial console in a log', () => {
    const argv = buildQemuArgv(spec, runtime).join(' ');
    assert.match(argv, /-chardev socket,id=qmp,path=\/run\/x\/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control/);
    assert.match(argv, /-chardev file,id=serial0,path=\/run\/x\/serial.log/);
    assert.match(argv, /-accel tcg -cpu qemu64 -m 256M -smp 1/);
    assert.match(argv, /-netdev tap,id=net0,ifname=ft0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01/);
    assert.doesNotMatch(argv, /-incoming/);
  });

  it('starts a migration destination paused and deferred', () => {
    const argv = buildQemuArgv(spec, { ...runtime, incoming: true });
    assert.deepEqual(argv.slice(-3), ['-S', '-incoming', 'defer']);
  });

  it('refuses a bridge NIC without a tap', () => {
    assert.throws(() => buildQemuArgv(spec, { ...runtime, taps: [] }), /no tap device given for NIC 0/);
  });
});
