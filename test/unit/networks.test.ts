import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inSubnet, parseCidr, parseNetwork } from '../../src/agent/networks.ts';
import { guestBoot } from '../../src/qemu/guest-image.ts';
import { buildQemuArgv } from '../../src/qemu/argv.ts';
import { makeVmSpec, migrationIncompatibilities, type NicSpec } from '../../src/qemu/spec.ts';

describe('named networks', () => {
  it('takes a network with bridge, VLAN and subnet, and refuses what would reach a command line or a path', () => {
    const n = parseNetwork({ name: 'back', bridge: 'br1', vlan: 20, subnet: '10.78.0.0/24' }, 'admin');
    assert.deepEqual({ name: n.name, bridge: n.bridge, vlan: n.vlan, subnet: n.subnet, by: n.createdBy }, { name: 'back', bridge: 'br1', vlan: 20, subnet: '10.78.0.0/24', by: 'admin' });
    assert.throws(() => parseNetwork({ name: '../x', bridge: 'br1' }, 'admin'), /is not a network name/);
    assert.throws(() => parseNetwork({ name: 'x', bridge: 'br1,script=/tmp/x' }, 'admin'), /not a network interface name/);
    assert.throws(() => parseNetwork({ name: 'x', bridge: 'a-bridge-name-too-long' }, 'admin'), /not a network interface name/);
    assert.throws(() => parseNetwork({ name: 'x', bridge: 'br1', vlan: 0 }, 'admin'), /VLAN id from 1 to 4094/);
    assert.throws(() => parseNetwork({ name: 'x', bridge: 'br1', vlan: 4095 }, 'admin'), /VLAN id from 1 to 4094/);
    assert.throws(() => parseNetwork({ name: 'x', bridge: 'br1', subnet: '10.0.0.0' }, 'admin'), /not an IPv4 network/);
  });

  it('knows which addresses are host addresses of a subnet', () => {
    assert.deepEqual(parseCidr('10.78.0.77/24'), { address: (10 * 256 ** 3) + (78 * 256 ** 2) + 77, base: (10 * 256 ** 3) + (78 * 256 ** 2), prefixLength: 24 });
    assert.equal(parseCidr('10.78.0.300/24'), undefined);
    assert.equal(inSubnet('10.78.0.11/24', '10.78.0.0/24'), true);
    assert.equal(inSubnet('10.78.1.11/24', '10.78.0.0/24'), false, 'another network');
    assert.equal(inSubnet('10.78.0.0/24', '10.78.0.0/24'), false, 'the network address');
    assert.equal(inSubnet('10.78.0.255/24', '10.78.0.0/24'), false, 'the broadcast address');
    assert.equal(inSubnet('10.78.0.11/16', '10.78.0.0/24'), false, 'another prefix length');
  });

  it('gives each NIC its tap in order, and a NIC on another network cannot migrate to a spec without it', () => {
    const nics: NicSpec[] = [
      { mac: '52:54:00:00:00:10', model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: 'br0' } },
      { mac: '52:54:00:00:00:11', model: 'virtio-net-pci', backend: { kind: 'network', network: 'back' }, address: '10.78.0.11/24' },
    ];
    const spec = makeVmSpec({ name: 'n1', memoryMiB: 128, nics, boot: guestBoot({ kernel: '/k', initrd: '/i', inputsHash: 'x' }, { ip: '10.80.0.100/24', moreIps: ['10.78.0.11/24'] }) });
    const argv = buildQemuArgv(spec, { accel: 'tcg', qmpSocket: '/run/q', serialLog: '/run/s.log', serialSocket: '/run/s.sock', taps: ['ft0', 'ft1'], incoming: false, disks: [] }).join(' ');
    assert.match(argv, /-netdev tap,id=net0,ifname=ft0,.* -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:10,id=nic0 -netdev tap,id=net1,ifname=ft1,/);
    assert.match(spec.boot.kind === 'kernel' ? spec.boot.cmdline : '', /ferry\.ip=10\.80\.0\.100\/24 .*ferry\.ip1=10\.78\.0\.11\/24/);
    const elsewhere = makeVmSpec({ ...spec, nics: [nics[0]!, { ...nics[1]!, backend: { kind: 'network', network: 'front' } }] });
    assert.match(migrationIncompatibilities(spec, elsewhere).join('\n'), /NICs: .*on network back.*on network front/);
    assert.throws(() => makeVmSpec({ ...spec, nics: [...nics, ...[2, 3, 4].map((i) => ({ ...nics[1]!, mac: `52:54:00:00:00:1${i}` }))] }), /a VM has at most 4/);
    assert.throws(() => makeVmSpec({ ...spec, nics: [nics[0]!, { ...nics[1]!, address: '10.78.0.11 ip=1' }] }), /not an IPv4 address with a prefix/);
  });
});
