/**
 * Real VMs through the `ferry` command in a 3-host lab: images imported (checked by their bytes and
 * checksum), VMs booted through SeaBIOS and UEFI from a disk made from an image (an overlay on the
 * shared pool, a copy on the local one) or from an ISO in the CD-ROM drive, configured by a
 * cloud-init seed, and live-migrated with all of it. The image is ferry's own guest packed by
 * GRUB (guest/out/ferry-guest.iso): it takes its address and hostname from the seed, as cloud-init
 * would, and its gamesrv answers the probe — what a user checks.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { imageInfo } from '../../src/storage/qemu-img.ts';
import { PROJECT_ROOT } from '../../src/qemu/guest-image.ts';
import { run } from '../../src/util/exec.ts';
import { agentLogs, useLab } from '../helpers/lab.ts';
import { killAgent, startAgent } from '../../src/lab/lab.ts';
import { ferry, ferryInteractive } from '../helpers/cli.ts';
import { rfbHandshake } from '../helpers/rfb.ts';

const ISO = path.join(PROJECT_ROOT, 'guest', 'out', 'ferry-guest.iso');
/** guest/installer/build.sh: the Debian 12 installer's kernel and initrd as an ISO, console on the serial line. */
const INSTALLER = path.join(PROJECT_ROOT, 'guest', 'out', 'debian-installer.iso');

describe('images, firmware and cloud-init (3-host lab)', () => {
  const suite = useLab('img', []);
  const cli = suite.cli;
  const images = (host: string) => path.join(suite.dir, 'hosts', host, 'images');
  const shared = () => path.join(suite.dir, 'shared-images');
  let qcow2 = '';
  let vmdk = '';

  /** The guest answers at its address (from the seed) within a boot's time. */
  async function guestAnswers(vm: string, timeoutMs = 90_000): Promise<{ tick: number; boot: string; ip: string }> {
    const ip = (await cli('vm', 'show', vm)).json.ip as string;
    assert.ok(ip, `${vm} has no address`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return { ...(await suite.probe.gamesrv(ip, 1000)), ip };
      } catch (err) {
        if (Date.now() > deadline) {
          const console = ((await cli('vm', 'console', vm)).json?.log ?? '').slice(-1500);
          assert.fail(`${vm} did not answer at ${ip} within ${timeoutMs / 1000} s: ${(err as Error).message}\nconsole:\n${console}`);
        }
      }
    }
  }

  async function migrate(vm: string, to: string) {
    const result = await cli('vm', 'migrate', vm, '--to', to);
    if (result.code !== 0) assert.fail(`${result.stderr}${result.stdout}\n${await agentLogs(suite, ['h1', 'h2', 'h3'])}`);
    assert.equal(result.json.status, 'completed');
    assert.equal(result.json.attempts, 1);
    return result.json;
  }

  it('imports an ISO and disk images; what each is comes from its bytes, and the upload is checksummed', async () => {
    qcow2 = path.join(suite.dir, 'guest.qcow2');
    vmdk = path.join(suite.dir, 'guest-disk.iso'); // a VMDK whose name says ISO: the name is not trusted
    await run('qemu-img', ['convert', '-O', 'qcow2', ISO, qcow2]);
    await run('qemu-img', ['convert', '-O', 'vmdk', ISO, vmdk]);
    const iso = await cli('image', 'import', 'fg-iso', ISO, '--pool', 'shared');
    assert.equal(iso.code, 0, iso.stderr);
    assert.equal(iso.json.kind, 'iso');
    assert.equal(iso.json.format, 'raw');
    const sha = (await run('sha256sum', [ISO])).split(' ')[0];
    assert.equal(iso.json.sha256, sha);
    const disk = await cli('image', 'import', 'fg', qcow2, '--pool', 'shared');
    assert.equal(disk.code, 0, disk.stderr);
    assert.equal(disk.json.kind, 'disk');
    const converted = await cli('image', 'import', 'fg-local', vmdk, '--pool', 'local', '--host', 'h1');
    assert.equal(converted.code, 0, converted.stderr);
    assert.deepEqual([converted.json.kind, converted.json.sourceFormat, converted.json.format, converted.json.host], ['disk', 'vmdk', 'qcow2', 'h1']);
    assert.equal((await imageInfo(path.join(images('h1'), 'image-fg-local.qcow2'))).virtualSize, converted.json.virtualBytes);
    const isoLocal = await cli('image', 'import', 'fg-iso-local', ISO, '--pool', 'local', '--host', 'h1');
    assert.equal(isoLocal.code, 0, isoLocal.stderr);
    const list = (await cli('image', 'list')).json.map((i: { name: string; kind: string; state: string }) => `${i.name}:${i.kind}:${i.state}`).sort();
    assert.deepEqual(list, ['fg-iso-local:iso:ready', 'fg-iso:iso:ready', 'fg-local:disk:ready', 'fg:disk:ready']);
  });

  it('refuses a file that is no image, a taken name, an ISO as a boot disk, with nothing left behind', async () => {
    const text = path.join(suite.dir, 'notes.qcow2');
    await writeFile(text, 'these are my notes, not a disk\n'.repeat(1000));
    const bad = await cli('image', 'import', 'notes', text, '--pool', 'shared');
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /'notes\.qcow2' is not a disk image or ISO: it has no partition table \(MBR or GPT\) and no ISO 9660 volume descriptor/);
    const taken = await cli('image', 'import', 'fg', qcow2, '--pool', 'shared');
    assert.notEqual(taken.code, 0);
    assert.match(taken.stderr, /an image named 'fg' exists already/);
    const isoAsDisk = await cli('vm', 'create', 'x1', '--image', 'fg-iso', '--pool', 'shared');
    assert.notEqual(isoAsDisk.code, 0);
    assert.match(isoAsDisk.stderr, /image 'fg-iso' is an ISO; attach it with --cdrom fg-iso/);
    const elsewhere = await cli('vm', 'create', 'x2', '--image', 'fg-local', '--pool', 'local', '--host', 'h2');
    assert.notEqual(elsewhere.code, 0);
    assert.match(elsewhere.stderr, /image 'fg-local' is kept on host 'h1'/);
    const names = (await cli('image', 'list')).json.map((i: { name: string }) => i.name).sort();
    assert.deepEqual(names, ['fg', 'fg-iso', 'fg-iso-local', 'fg-local']);
    assert.deepEqual((await cli('vm', 'list')).json, []);
    const volumes = (await cli('volume', 'list')).json.map((v: { name: string }) => v.name).sort();
    assert.deepEqual(volumes, ['image-fg', 'image-fg-iso', 'image-fg-iso-local', 'image-fg-local']);
  });

  it('UEFI from an overlay on the shared pool: cloud-init sets address and hostname; the VM migrates twice and keeps running', async (t) => {
    const created = await cli('vm', 'create', 'u1', '--image', 'fg', '--pool', 'shared', '--firmware', 'uefi', '--disk-size', '64M', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual(
      created.json.spec.disks.map((d: { id: string; volume: string; bus?: string }) => `${d.id}:${d.volume}:${d.bus ?? 'virtio'}`),
      ['disk0:u1-disk0:virtio', 'disk1:u1-seed:virtio', 'disk2:u1-vars:pflash'],
    );
    const overlay = JSON.parse(await run('qemu-img', ['info', '-U', '--output=json', path.join(shared(), 'u1-disk0.qcow2')]));
    assert.equal(overlay['backing-filename'], 'image-fg.qcow2', 'the boot disk is an overlay on the image, by a relative name');
    assert.equal(overlay['virtual-size'], 64 * 2 ** 20);
    const first = await guestAnswers('u1');
    const console = (await cli('vm', 'console', 'u1')).json.log;
    assert.match(console, /FERRY-GUEST-READY ip=\S+ seed=\/dev\/vd\w,hostname=u1/, 'the guest took its address and hostname from the seed');
    // The serial console, interactive through the agent: a command typed in is answered by the guest's shell.
    const console1 = ferryInteractive(suite.env, 'vm', 'console', 'u1', '--attach');
    await console1.waitFor(/connected|\/ #/, 10_000).catch(() => undefined);
    console1.type('echo ferry-$((6*7))\n');
    await console1.waitFor(/ferry-42/);
    const second = ferryInteractive(suite.env, 'vm', 'console', 'u1', '--attach');
    assert.notEqual(await second.exited, 0, 'QEMU serves one console client: a second is refused');
    assert.match(second.stderr, /the console of 'u1' is open already \(by admin/);
    // The VNC display (its VGA card), through the agent's websocket, on a loopback port for a viewer.
    const vnc = ferryInteractive(suite.env, 'vm', 'vnc', 'u1', '--listen', '127.0.0.1:0', '--json');
    const port = JSON.parse((await vnc.waitFor(/"port"/)).trim().split('\n')[0]!).listen.port as number;
    const viewer = net.connect(port, '127.0.0.1');
    const screen = await rfbHandshake(viewer);
    assert.match(screen.name, /u1/, 'the display is the VM\'s (QEMU names it after the guest)');
    assert.ok(screen.width >= 320 && screen.height >= 200, `a VGA screen, not ${screen.width}x${screen.height}`);
    const viewerClosed = new Promise<void>((resolve) => viewer.once('close', () => resolve()));
    const asHost = await cli('vm', 'show', 'u1');
    assert.equal(asHost.json.spec.display, 'vga');
    let last = first;
    for (const to of ['h2', 'h3']) {
      const result = await migrate('u1', to);
      assert.deepEqual(result.disks.map((d: { mode: string }) => d.mode), ['shared', 'shared', 'shared']);
      const now = await guestAnswers('u1');
      assert.equal(now.boot, first.boot, 'the guest was migrated, not rebooted');
      assert.ok(now.tick > last.tick);
      last = now;
      const memory = await suite.probe.memcheckVerify(now.ip);
      assert.deepEqual([memory.pages, memory.mismatches], [16 * 256, 0], 'the guest\'s 16 MiB memcheck area verifies after the hop');
      t.diagnostic(`u1 -> ${to}: total ${result.totalMs} ms, downtime ${result.downtimeMs} ms`);
    }
    // The viewer's connection ended when the VM left h1; connecting again reaches the display on h3.
    await viewerClosed;
    const again = net.connect(port, '127.0.0.1');
    const moved = await rfbHandshake(again);
    assert.match(moved.name, /u1/);
    again.destroy();
    assert.match(vnc.stderr, /u1 left h1 \('u1' left this host \(stopped or migrated\): connect again\)/);
    assert.match(vnc.stderr, /connected to u1 on h3/);
    assert.equal(await vnc.interrupt(), 0);
    // The console followed the VM to h3.
    for (let i = 0; i < 100 && !/u1 moved to h3; reconnecting there/.test(console1.stderr); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(console1.stderr, /u1 moved to h2; reconnecting there[\s\S]*u1 moved to h3; reconnecting there/);
    for (let i = 0; i < 100 && !/on h3; Ctrl-\] leaves/.test(console1.stderr); i++) await new Promise((r) => setTimeout(r, 100));
    console1.type('echo moved-$((7*8))\n');
    await console1.waitFor(/moved-56/);
    assert.equal(await console1.leave(), 0);
    const inUse = await cli('image', 'delete', 'fg');
    assert.notEqual(inUse.code, 0);
    assert.match(inUse.stderr, /image 'fg' is in use by VM u1/);
  });

  it('UEFI from a copy on a local pool: boot disk, seed and variable store are copied over NBD; after the move the VM also boots again there', async (t) => {
    const created = await cli('vm', 'create', 'l1', '--image', 'fg-local', '--pool', 'local', '--firmware', 'uefi', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const copy = JSON.parse(await run('qemu-img', ['info', '-U', '--output=json', path.join(images('h1'), 'l1-disk0.qcow2')]));
    assert.equal(copy['backing-filename'], undefined, 'on a local pool the boot disk is a copy');
    const first = await guestAnswers('l1');
    const result = await migrate('l1', 'h2');
    assert.deepEqual(result.disks.map((d: { mode: string }) => d.mode), ['copy', 'copy', 'copy']);
    t.diagnostic(`l1 h1 -> h2: total ${result.totalMs} ms, downtime ${result.downtimeMs} ms, disks ${(result.diskBytes / 2 ** 20).toFixed(1)} MiB`);
    const moved = await guestAnswers('l1');
    assert.equal(moved.boot, first.boot);
    const memory = await suite.probe.memcheckVerify(moved.ip);
    assert.deepEqual([memory.pages, memory.mismatches], [16 * 256, 0], 'the guest\'s memory verifies after the hop');
    // The copies are whole: OVMF boots from them on h2, and its variables are there.
    assert.equal((await cli('vm', 'stop', 'l1', '--force')).code, 0);
    const started = await cli('vm', 'start', 'l1');
    assert.equal(started.code, 0, started.stderr);
    const rebooted = await guestAnswers('l1');
    assert.notEqual(rebooted.boot, first.boot, 'a fresh boot on h2');
    const vars = await run('cmp', ['-s', path.join(images('h2'), 'l1-vars.raw'), '/usr/share/OVMF/OVMF_VARS_4M.fd']).then(() => 'template', () => 'written');
    assert.equal(vars, 'written', 'OVMF wrote its boot entries into the VM\'s own variable store');
  });

  it('an ISO in the CD-ROM drive: boots through SeaBIOS, migrates from the shared pool; from a local pool the move is refused and the VM stays', async () => {
    const created = await cli('vm', 'create', 'c1', '--cdrom', 'fg-iso', '--hostname', 'c1', '--pool', 'shared', '--host', 'h2');
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.json.spec.boot.order, 'cdrom');
    const first = await guestAnswers('c1');
    await migrate('c1', 'h3');
    assert.equal((await guestAnswers('c1')).boot, first.boot);

    const local = await cli('vm', 'create', 'c2', '--cdrom', 'fg-iso-local', '--hostname', 'c2', '--pool', 'local', '--host', 'h1');
    assert.equal(local.code, 0, local.stderr);
    const before = await guestAnswers('c2');
    const refused = await cli('vm', 'migrate', 'c2', '--to', 'h2');
    assert.notEqual(refused.code, 0);
    assert.match(`${refused.stderr}${refused.json?.error ?? ''}`, /the CD-ROM holds image 'fg-iso-local' from pool 'local', which each host keeps for itself/);
    assert.match(`${refused.stderr}${refused.json?.error ?? ''}`, /Eject it \(ferry vm cdrom c2 eject\)/);
    assert.equal((await cli('vm', 'show', 'c2')).json.owner, 'h1');
    assert.equal((await guestAnswers('c2')).boot, before.boot, 'the VM kept running where it was');

    // Ejected, the ISO no longer ties it to h1: it moves (its seed disk copied), its guest unaware.
    const ejected = await cli('vm', 'cdrom', 'c2', 'eject');
    assert.equal(ejected.code, 0, ejected.stderr);
    assert.deepEqual(ejected.json.vm.spec.cdrom, {}, 'the drive stays, empty');
    assert.match((await cli('vm', 'cdrom', 'c2', 'eject')).stderr, /the CD-ROM drive of 'c2' is empty already/);
    assert.match((await cli('vm', 'cdrom', 'c2', 'insert', 'fg')).stderr, /image 'fg' is a disk image, not an ISO/);
    await migrate('c2', 'h2');
    assert.equal((await guestAnswers('c2')).boot, before.boot, 'migrated with an empty drive, not rebooted');
    const onH2 = await run('pgrep', ['-af', 'guest=c2,']);
    assert.doesNotMatch(onH2, /"node-name":"cd0"/, "the destination's drive was started empty");
    assert.match(onH2, /ide-cd,bus=ide\.0,id=cd0-dev/);
    // A shared ISO goes in, and the destination opens it after the next move.
    const inserted = await cli('vm', 'cdrom', 'c2', 'insert', 'fg-iso');
    assert.equal(inserted.code, 0, inserted.stderr);
    assert.equal(inserted.json.vm.spec.cdrom.medium.image, 'fg-iso');
    assert.match((await cli('image', 'delete', 'fg-iso')).stderr, /in use by VM c1, VM c2/);
    await migrate('c2', 'h1'); // back: h3 is full (u1 and c1)
    assert.equal((await guestAnswers('c2')).boot, before.boot);
    const back = await run('pgrep', ['-af', 'guest=c2,']);
    assert.match(back, /image-fg-iso/, 'the destination opened the inserted ISO');
    assert.match(back, /"node-name":"cd0"/);
  });

  it('a host without OVMF: a UEFI VM is neither created there nor moved there, with what to install said; nothing changes', async () => {
    await killAgent(suite.lab, 'h3');
    await startAgent(suite.lab, 'h3', { FERRY_OVMF_DIR: path.join(suite.dir, 'no-ovmf-here') });
    try {
      const created = await cli('vm', 'create', 'x3', '--image', 'fg', '--pool', 'shared', '--firmware', 'uefi', '--host', 'h3');
      assert.notEqual(created.code, 0);
      assert.match(created.stderr, /UEFI needs OVMF \(.*no-ovmf-here\/OVMF_CODE_4M\.fd\), which host 'h3' does not have; install it there with 'apt-get install ovmf', or use --firmware bios/);
      assert.equal((await cli('vm', 'show', 'x3')).code === 0, false);
      assert.ok(!(await cli('volume', 'list')).json.some((v: { name: string }) => v.name.startsWith('x3-')), 'no volume of the refused VM stays');
      const before = await guestAnswers('l1');
      const moved = await cli('vm', 'migrate', 'l1', '--to', 'h3');
      assert.notEqual(moved.code, 0);
      assert.match(`${moved.stderr}${moved.json?.error ?? ''}`, /UEFI needs OVMF .* which host 'h3' does not have/);
      assert.equal((await cli('vm', 'show', 'l1')).json.owner, 'h2');
      assert.equal((await guestAnswers('l1')).boot, before.boot, 'the VM kept running where it was');
    } finally {
      await killAgent(suite.lab, 'h3');
      await startAgent(suite.lab, 'h3');
    }
  });

  it('the Debian installer boots from a VM\'s CD-ROM through UEFI to its first screen, on the serial console', async () => {
    const imported = await cli('image', 'import', 'd-i', INSTALLER, '--pool', 'shared');
    assert.equal(imported.code, 0, imported.stderr);
    assert.equal(imported.json.kind, 'iso');
    // 512 MiB: the installer's initrd does not even unpack in 384 (measured); in 512 it runs in its low-memory mode.
    const created = await cli('vm', 'create', 'inst1', '--cdrom', 'd-i', '--firmware', 'uefi', '--pool', 'shared', '--disk', '2G,storage=shared', '--memory', '512', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.json.ip, undefined, 'no seed, no address: the installer asks for its network itself');
    const deadline = Date.now() + 180_000;
    let log = '';
    const firstScreen = /Select a language|Choose language|\[!!\] Low memory/;
    while (!firstScreen.test(log) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2000));
      log = (await cli('vm', 'console', 'inst1')).json.log;
    }
    assert.match(log, firstScreen, `the installer's first screen did not show; console: ${log.slice(-1500)}`);
    assert.match(log, /<Tab> moves; <Space> selects; <Enter> activates buttons/, 'the installer\'s dialog (newt) runs on the serial console');
    assert.equal((await cli('vm', 'destroy', 'inst1')).code, 0);
  });

  it('imports a libvirt domain: its disk uploaded, UEFI, its MAC and uuid kept; what cannot come over is listed; it boots', async () => {
    const xml = path.join(suite.dir, 'i1.xml');
    await writeFile(
      xml,
      `<domain type='kvm'><name>i1</name><uuid>6a0d5c6e-8b3e-4f3a-9a53-2f7b1d6c1e11</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu>
        <os firmware='efi'><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os><cpu mode='host-model'/>
        <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${qcow2}'/><target dev='vda' bus='virtio'/></disk>
        <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/><model type='virtio'/></interface>
        <graphics type='vnc' port='-1'/></devices></domain>`,
    );
    const dry = await ferry(suite.env, 'vm', 'import', '--libvirt-xml', xml, '--dry-run');
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /i1: 256 MiB, 1 vCPU, qemu64, UEFI, boots from disk, uuid 6a0d5c6e-8b3e-4f3a-9a53-2f7b1d6c1e11, MAC 52:54:00:12:34:56/);
    assert.match(dry.stdout, /not carried over:\n  - CPU mode host-model[^\n]*\n  - NIC on br0[^\n]*\n  - graphics \(VNC\/SPICE\)/);
    assert.deepEqual((await cli('vm', 'list')).json.map((v: { spec: { name: string } }) => v.spec.name).sort(), ['c1', 'c2', 'l1', 'u1'], 'a dry run creates nothing');
    const imported = await ferry(suite.env, 'vm', 'import', '--libvirt-xml', xml, '--pool', 'shared', '--host', 'h3');
    assert.equal(imported.code, 0, imported.stderr);
    const vm = (await cli('vm', 'show', 'i1')).json;
    assert.deepEqual([vm.spec.uuid, vm.spec.nics[0].mac, vm.spec.boot.firmware, vm.owner], ['6a0d5c6e-8b3e-4f3a-9a53-2f7b1d6c1e11', '52:54:00:12:34:56', 'uefi', 'h3']);
    const deadline = Date.now() + 90_000;
    let log = '';
    while (!/FERRY-GUEST-READY/.test(log) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      log = (await cli('vm', 'console', 'i1')).json.log;
    }
    assert.match(log, /FERRY-GUEST-READY ip=none seed=none/, 'the imported disk boots through UEFI (without a seed it has no address, as it had none in the XML)');
  });

  it('an image is deleted with its volume once no VM and no kept overlay needs it', async () => {
    for (const vm of ['u1', 'l1', 'c1', 'c2', 'i1']) assert.equal((await cli('vm', 'destroy', vm)).code, 0);
    const kept = await cli('image', 'delete', 'fg');
    assert.notEqual(kept.code, 0, 'the destroyed VM\'s boot disk is kept, and it is an overlay on the image');
    assert.match(kept.stderr, /volume shared\/u1-disk0 \(an overlay on it\)/);
    for (const v of (await cli('volume', 'list')).json as { name: string; pool: string; image?: string }[]) {
      if (v.image) continue;
      const deleted = await cli('volume', 'delete', v.name, '--pool', v.pool);
      assert.equal(deleted.code, 0, deleted.stderr);
    }
    for (const image of ['fg', 'fg-iso', 'fg-local', 'fg-iso-local', 'i1-import-disk0', 'd-i']) {
      const deleted = await cli('image', 'delete', image);
      assert.equal(deleted.code, 0, deleted.stderr);
    }
    assert.deepEqual((await cli('image', 'list')).json, []);
    assert.deepEqual((await cli('volume', 'list')).json, []);
  });
});
