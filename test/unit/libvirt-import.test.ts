/** Reading a libvirt domain (as `virsh dumpxml` prints one written by virt-install) into ferry's terms. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LibvirtXmlError, mapImportedNics, planLibvirtImport } from '../../src/cli/libvirt-import.ts';

const DOMAIN = `<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>6a0d5c6e-8b3e-4f3a-9a53-2f7b1d6c1e11</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web01-data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='sda' bus='sata'/>
      <boot order='1'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/debian-12.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='vms/web01-logs'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:AB:CD:EF'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='spice' autoport='yes'/>
    <video><model type='qxl'/></video>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>`;

describe('libvirt domain import', () => {
  it('carries memory, vCPUs, UEFI, the disks in boot order, the CD-ROM, the MAC, the uuid and the guest agent', () => {
    const plan = planLibvirtImport(DOMAIN);
    assert.equal(plan.name, 'web01');
    assert.equal(plan.uuid, '6a0d5c6e-8b3e-4f3a-9a53-2f7b1d6c1e11');
    assert.equal(plan.memoryMiB, 2048);
    assert.equal(plan.vcpus, 2);
    assert.equal(plan.firmware, 'uefi');
    assert.equal(plan.boot, 'disk');
    assert.deepEqual(plan.disks.map((d) => `${d.target}:${d.file}:${d.format}`), ['sda:/var/lib/libvirt/images/web01.qcow2:qcow2', 'vdb:/var/lib/libvirt/images/web01-data.qcow2:qcow2']);
    assert.equal(plan.cdrom, '/var/lib/libvirt/images/debian-12.iso');
    assert.deepEqual(plan.nics, [{ mac: '52:54:00:ab:cd:ef', source: 'default' }]);
    assert.equal(plan.guestAgent, true);
    assert.equal(plan.cpuModel, undefined);
  });

  it('lists exactly what does not come over, and what happens instead', () => {
    const lines = planLibvirtImport(DOMAIN).notCarried;
    const expect = [
      /^currentMemory \(a balloon target\)/,
      /^CPU mode host-passthrough: .* the VM gets the named model qemu64/,
      /^the UEFI variables \(\/var\/lib\/libvirt\/qemu\/nvram\/web01_VARS\.fd\)/,
      /^disk sda on sata: it becomes a virtio-blk disk/,
      /^disk vdc \(type network, rbd\): only disks in files are imported/,
      /^NIC on default: it joins the host's guest bridge as a virtio-net NIC with the same MAC/,
      /^graphics \(VNC\/SPICE\)/,
      /^the video card/,
      /^the TPM/,
    ];
    assert.equal(lines.length, expect.length, lines.join('\n'));
    expect.forEach((re, i) => assert.match(lines[i]!, re));
  });

  it("puts the NICs after the first on ferry networks matched by name or bridge, and names those it cannot place", () => {
    const nics = [{ mac: '52:54:00:00:00:01', source: 'default' }, { mac: '52:54:00:00:00:02', source: 'storage' }, { mac: '52:54:00:00:00:03', source: 'br5' }, { mac: '52:54:00:00:00:04', source: 'virbr9' }];
    const mapped = mapImportedNics(nics, [{ name: 'storage', bridge: 'br1' }, { name: 'dmz', bridge: 'br5' }]);
    assert.deepEqual(mapped.nics, [{ network: 'storage', mac: '52:54:00:00:00:02' }, { network: 'dmz', mac: '52:54:00:00:00:03' }]);
    assert.equal(mapped.unmatched.length, 1);
    assert.match(mapped.unmatched[0]!, /NIC 52:54:00:00:00:04 on virbr9: no ferry network is named virbr9 or uses bridge virbr9; add one \(ferry network add virbr9 --bridge BR\)/);
  });

  it('takes a named CPU model, a BIOS i440FX machine (saying so), and boots the CD-ROM when told', () => {
    const xml = DOMAIN.replace("<os firmware='efi'>", '<os>')
      .replace(/<loader[^]*?<\/nvram>/, '')
      .replace("machine='pc-q35-7.2'", "machine='pc-i440fx-7.2'")
      .replace("<boot dev='hd'/>", "<boot dev='cdrom'/>")
      .replace(/<cpu [^>]*\/>/, "<cpu mode='custom' match='exact'><model fallback='forbid'>Haswell-noTSX</model></cpu>")
      .replace("<boot order='1'/>", '');
    const plan = planLibvirtImport(xml, 'web02');
    assert.equal(plan.name, 'web02');
    assert.equal(plan.firmware, 'bios');
    assert.equal(plan.cpuModel, 'Haswell-noTSX');
    assert.equal(plan.boot, 'cdrom');
    assert.ok(plan.notCarried.some((l) => /machine type pc-i440fx-7\.2 \(i440FX\): ferry runs q35/.test(l)));
  });

  it('boots the CD-ROM when its own <boot order> comes first, and says an empty drive is left out', () => {
    const xml = DOMAIN.replace("<readonly/>", "<readonly/><boot order='0'/>").replace(
      '</devices>',
      "<disk type='file' device='cdrom'><target dev='sdc' bus='sata'/></disk></devices>",
    );
    const plan = planLibvirtImport(xml);
    assert.equal(plan.boot, 'cdrom');
    assert.ok(plan.notCarried.some((l) => /^the empty cdrom drive sdc: ferry attaches a CD-ROM only with an ISO in it/.test(l)), plan.notCarried.join('\n'));
  });

  it('refuses what it cannot read, saying why', () => {
    assert.throws(() => planLibvirtImport('<vm/>'), (e: unknown) => e instanceof LibvirtXmlError && /no <domain> element/.test(e.message));
    assert.throws(() => planLibvirtImport(DOMAIN.replace('<name>web01</name>', '<name>Web_01</name>')), /'Web_01', which is not a ferry VM name .* give one with --name/);
    assert.throws(() => planLibvirtImport(DOMAIN.replace(/<disk type='file' device='(disk|cdrom)'>[^]*?<\/disk>/g, '')), /no disk in a file and no CD-ROM/);
  });
});
