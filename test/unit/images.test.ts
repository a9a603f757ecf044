/** Image inspection (by bytes, with qemu-img) and cloud-init seeds (made with mtools, read back with mtools). */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildSeedImage, seedFiles, validateCloudInit, type CloudInitConfig } from '../../src/qemu/cloud-init.ts';
import { InvalidVmSpecError } from '../../src/qemu/errors.ts';
import { inspectImageFile, NotAnImageError } from '../../src/storage/image-file.ts';
import { run } from '../../src/util/exec.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-images-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('image inspection', () => {
  it('tells an ISO, a raw disk with a partition table and qcow2/vmdk apart by their bytes, whatever their names', async () => {
    const iso = path.join(dir, 'looks-like.qcow2');
    await run('xorriso', ['-as', 'mkisofs', '-quiet', '-o', iso, path.join(process.cwd(), 'guest', 'rootfs')]);
    assert.deepEqual(await inspectImageFile(iso, 'iso'), { kind: 'iso', format: 'raw', virtualBytes: (await inspectImageFile(iso, 'iso')).virtualBytes });
    const raw = path.join(dir, 'disk.iso');
    await run('truncate', ['-s', '8M', raw]);
    await run('sfdisk', ['-q', raw], { input: 'label: gpt\nstart=1MiB, size=4MiB\n' });
    assert.equal((await inspectImageFile(raw, 'raw')).kind, 'disk');
    const vmdk = path.join(dir, 'disk.raw');
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', vmdk, '16M']);
    assert.deepEqual(await inspectImageFile(vmdk, 'vmdk'), { kind: 'disk', format: 'vmdk', virtualBytes: 16 * 2 ** 20 });
  });

  it('refuses a file with no partition table and no ISO descriptor, and an overlay', async () => {
    const text = path.join(dir, 'notes.img');
    await writeFile(text, 'hello\n'.repeat(10_000));
    await assert.rejects(inspectImageFile(text, "'notes.img'"), (err: unknown) => err instanceof NotAnImageError && /'notes.img' is not a disk image or ISO: it has no partition table/.test(err.message));
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await assert.rejects(inspectImageFile(top, "'top.qcow2'"), /is an overlay on .*base\.qcow2'; flatten it first/);
  });

  it('refuses an image that would read another file of the host: a qcow2 data file, a VMDK extent', async () => {
    const secret = path.join(dir, 'key.pem');
    await writeFile(secret, 'PRIVATE KEY\n'.repeat(100_000));
    const qcow2 = path.join(dir, 'external.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${secret},data_file_raw=on`, qcow2, '1M']);
    await assert.rejects(inspectImageFile(qcow2, "'external.qcow2'"), /refers to data outside itself \(data file .*key\.pem\)/);
    const vmdk = path.join(dir, 'descriptor.vmdk');
    await writeFile(vmdk, `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "${secret}" 0\n`);
    await assert.rejects(inspectImageFile(vmdk, "'descriptor.vmdk'"), /refers to data outside itself \(extent .*key\.pem\)/);
  });
});

describe('cloud-init NoCloud seed', () => {
  const config: CloudInitConfig = {
    instanceId: '0b0e8f5e-2c54-4f27-9d0e-6f1f0f6a1b2c',
    hostname: 'web1',
    sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@laptop'],
    mac: '52:54:0b:0e:8f:00',
    network: { kind: 'static', address: '10.80.0.20', prefixLength: 24, gateway: '10.80.0.1' },
  };

  it('says hostname, keys and a static address matched by MAC, in files cloud-init reads (JSON is YAML)', () => {
    const files = seedFiles(config);
    assert.deepEqual(JSON.parse(files['meta-data']), { 'instance-id': config.instanceId, 'local-hostname': 'web1', 'public-keys': config.sshKeys });
    assert.deepEqual(JSON.parse(files['network-config']).ethernets.eth0, {
      match: { macaddress: '52:54:0b:0e:8f:00' }, 'set-name': 'eth0', dhcp4: false, addresses: ['10.80.0.20/24'], routes: [{ to: '0.0.0.0/0', via: '10.80.0.1' }],
    });
    assert.match(files['user-data'], /^#cloud-config\n/);
    assert.deepEqual(JSON.parse(seedFiles({ ...config, network: { kind: 'dhcp' } })['network-config']).ethernets.eth0.dhcp4, true);
  });

  it("lists a VM's other NICs after eth0, each matched by its MAC, static or DHCP", () => {
    const more = seedFiles({
      ...config,
      moreNics: [
        { mac: '52:54:0b:0e:8f:01', network: { kind: 'static', address: '10.78.0.11', prefixLength: 24 } },
        { mac: '52:54:0b:0e:8f:02', network: { kind: 'dhcp' } },
      ],
    });
    const ethernets = JSON.parse(more['network-config']).ethernets;
    assert.deepEqual(Object.keys(ethernets), ['eth0', 'eth1', 'eth2']);
    assert.deepEqual(ethernets.eth1, { match: { macaddress: '52:54:0b:0e:8f:01' }, 'set-name': 'eth1', dhcp4: false, addresses: ['10.78.0.11/24'] });
    assert.deepEqual(ethernets.eth2, { match: { macaddress: '52:54:0b:0e:8f:02' }, 'set-name': 'eth2', dhcp4: true });
    assert.deepEqual(ethernets.eth0.addresses, ['10.80.0.20/24'], 'eth0 keeps the VM address');
  });

  it('refuses what cloud-init would not take, saying what is wrong', () => {
    assert.throws(() => validateCloudInit({ ...config, sshKeys: ['-----BEGIN OPENSSH PRIVATE KEY-----'] }), (e: unknown) => e instanceof InvalidVmSpecError && /is not an OpenSSH public key/.test(e.message));
    assert.throws(() => validateCloudInit({ ...config, userData: 'packages: [nginx]\n' }), /must start with '#cloud-config'/);
    assert.throws(() => validateCloudInit({ ...config, hostname: 'Web_1' }), /'Web_1' is not a host name/);
  });

  it('is a FAT disk labelled CIDATA holding the three files', async () => {
    const seed = path.join(dir, 'seed.img');
    await buildSeedImage(config, seed);
    const id = await run('blkid', ['-o', 'export', seed]);
    assert.match(id, /^LABEL=CIDATA$/m);
    assert.match(id, /^TYPE=vfat$/m);
    assert.deepEqual(JSON.parse(await run('mtype', ['-i', seed, '::meta-data']))['local-hostname'], 'web1');
    const listing = await run('mdir', ['-b', '-i', seed, '::']);
    for (const file of ['meta-data', 'user-data', 'network-config']) assert.match(listing, new RegExp(`::/${file}$`, 'm'));
  });
});
