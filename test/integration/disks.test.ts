/**
 * Live migration of VMs with disks, with real QEMU and real image files: three
 * "hosts" on this machine, each with its own storage catalog (a `local` pool
 * in a directory per host, a `shared` pool in one directory all see). The
 * guest's diskcheck writes checksummed, sequence-numbered blocks the whole
 * time; after every hop it reads its disk back against the table of writes it
 * saw complete (which migrates with its RAM): no lost write, no torn block,
 * no block from the past.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { migrate } from '../../src/migration/engine.ts';
import { retryOnLostPages } from '../../src/migration/retry.ts';
import { MigrationRefusedError, MigrationRolledBackError } from '../../src/migration/errors.ts';
import { LocalDestination, LocalSource } from '../../src/migration/local.ts';
import type { MigrationProgress, MigrationRecord } from '../../src/migration/types.ts';
import type { VmInstance } from '../../src/qemu/instance.ts';
import type { DiskSpec } from '../../src/qemu/spec.ts';
import { StorageCatalog } from '../../src/storage/registry.ts';
import { certificateIdentity, createCa, issueCertificate } from '../../src/cluster/pki.ts';
import { run } from '../../src/util/exec.ts';
import { bootGuest, guestSpec, openLab, type Lab } from '../helpers/guest.ts';

const HOSTS = ['h1', 'h2', 'h3'] as const;
type Host = (typeof HOSTS)[number];
const DISK_BYTES = 64 * 2 ** 20;

describe('disks: live migration with shared-dir and local storage', () => {
  let lab: Lab;
  let poolDir: string;
  const storage = {} as Record<Host, StorageCatalog>;

  before(async () => {
    lab = await openLab('disk');
    poolDir = await mkdtemp(path.join(os.tmpdir(), 'ferry-pools-'));
    await mkdir(path.join(poolDir, 'shared'));
    for (const h of HOSTS) {
      await mkdir(path.join(poolDir, h));
      storage[h] = new StorageCatalog(
        [
          { name: 'shared', type: 'shared-dir', path: path.join(poolDir, 'shared') },
          { name: 'local', type: 'local', path: path.join(poolDir, '%h') },
        ],
        h,
      );
    }
  });

  after(async () => {
    await lab?.close();
    await rm(poolDir, { recursive: true, force: true });
  });

  function localImage(host: Host, volume: string): string {
    return path.join(poolDir, host, `${volume}.qcow2`);
  }

  /** A running guest with one 64 MiB disk in `pool` and diskcheck writing 40 blocks/s over it. */
  class DiskGuest {
    vm!: VmInstance;
    host: Host = 'h1';
    boot = '';
    constructor(
      readonly name: string,
      readonly pool: 'shared' | 'local',
      readonly ipIndex: number,
    ) {}

    get ip(): string {
      return lab.net.guestIp(this.ipIndex);
    }

    get disk(): DiskSpec {
      return { id: 'disk0', pool: this.pool, volume: `${this.name}-disk0`, format: 'qcow2', sizeBytes: DISK_BYTES };
    }

    async start(): Promise<void> {
      await storage.h1.get(this.pool).create({ pool: this.pool, name: this.disk.volume, format: 'qcow2', sizeBytes: DISK_BYTES });
      const spec = await guestSpec(lab, this.name, { memoryMiB: 192, memcheckMiB: 16, ipIndex: this.ipIndex, disks: [this.disk], diskcheck: { ratePerSec: 40 } });
      this.vm = await bootGuest(lab, spec, storage.h1);
      this.boot = (await lab.probe.gamesrv(this.ip)).boot;
    }

    async migrateTo(to: Host, extra: { params?: Parameters<typeof migrate>[0]['params']; signal?: AbortSignal; onProgress?: (p: MigrationProgress, d: LocalDestination) => void } = {}): Promise<MigrationRecord> {
      // As the agents do: a migration a memory check stopped would be tried again (none runs by default on QEMU >= 9).
      let destination!: LocalDestination;
      let source!: LocalSource;
      const record = await retryOnLostPages(
        () => {
          destination = new LocalDestination({ spec: this.vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, storage: storage[to] });
          source = new LocalSource(this.vm, { storage: storage[this.host] });
          return migrate({
            source,
            destination,
            ...(extra.params ? { params: extra.params } : {}),
            ...(extra.signal ? { signal: extra.signal } : {}),
            ...(extra.onProgress ? { onProgress: (p) => extra.onProgress!(p, destination) } : {}),
          });
        },
        extra.signal ? { signal: extra.signal } : {},
      );
      assert.equal(record.attempts, 1, `one attempt, none rolled back: ${JSON.stringify(record.earlierAttempts)}`);
      await source.released; // the stale copy goes after the migration completed
      this.vm = destination.instance;
      this.host = to;
      return record;
    }

    /** What a user checks: the same guest answers, diskcheck kept writing without errors, and the disk verifies. */
    async assertHealthy(writesBefore: number): Promise<void> {
      const reply = await lab.probe.gamesrv(this.ip);
      assert.equal(reply.boot, this.boot, 'the guest rebooted: it was not migrated live');
      const stats = await lab.probe.diskcheckStats(this.ip);
      assert.equal(stats.errors, 0, `the guest saw ${stats.errors} failed disk writes`);
      assert.ok(stats.writes > writesBefore, `diskcheck stopped writing (${writesBefore} -> ${stats.writes} writes)`);
      const verdict = await lab.probe.diskcheckVerify(this.ip);
      assert.equal(verdict.blocks, DISK_BYTES / 4096);
      assert.deepEqual(
        { lost: verdict.lost, torn: verdict.torn, foreign: verdict.foreign },
        { lost: 0, torn: 0, foreign: 0 },
        `the disk does not verify (first bad block ${verdict.firstBadBlock})`,
      );
      const { status } = await this.vm.qmp.execute<{ status: string }>('query-status');
      assert.equal(status, 'running');
    }

    /** No mirror job or NBD client node left on the running QEMU. */
    async assertNoMirrorLeft(): Promise<void> {
      assert.deepEqual(await this.vm.qmp.execute('query-block-jobs'), []);
      const nodes = await this.vm.qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes');
      assert.deepEqual(nodes.map((n) => n['node-name']).filter((n) => n.startsWith('ferry-mirror')), []);
    }
  }

  it('shared-dir: migrates around the 3 hosts while diskcheck writes; only RAM moves and the disk verifies after every hop', async (t) => {
    const guest = new DiskGuest('dshared', 'shared', 20);
    await guest.start();
    try {
      for (const to of ['h2', 'h3', 'h1'] as const) {
        const before = (await lab.probe.diskcheckStats(guest.ip)).writes;
        const record = await guest.migrateTo(to);
        assert.equal(record.outcome, 'completed');
        assert.deepEqual(record.disks, [{ id: 'disk0', mode: 'shared' }]);
        assert.equal(record.diskBytes, 0, 'a shared disk must not be copied');
        await guest.assertHealthy(before);
        t.diagnostic(`-> ${to}: total ${record.totalMs} ms, downtime ${record.downtimeMs} ms`);
      }
      assert.ok(existsSync(path.join(poolDir, 'shared', 'dshared-disk0.qcow2')));
    } finally {
      await guest.vm.destroy();
    }
  });

  describe('local storage', () => {
    const guest = new DiskGuest('dlocal', 'local', 21);
    before(async () => {
      await guest.start();
    });
    after(async () => {
      await guest.vm?.destroy();
    });

    it('migrates around the 3 hosts while diskcheck writes; the disk is copied and verifies after every hop; the source copy goes', async (t) => {
      for (const to of ['h2', 'h3', 'h1'] as const) {
        const from = guest.host;
        const before = (await lab.probe.diskcheckStats(guest.ip)).writes;
        const record = await guest.migrateTo(to);
        assert.equal(record.outcome, 'completed');
        assert.deepEqual(record.disks, [{ id: 'disk0', mode: 'copy' }]);
        assert.ok(record.diskBytes >= DISK_BYTES, `the mirror reported ${record.diskBytes} bytes for a ${DISK_BYTES}-byte disk`);
        await guest.assertHealthy(before);
        await guest.assertNoMirrorLeft();
        assert.ok(existsSync(localImage(to, 'dlocal-disk0')), `the volume is not on ${to}`);
        assert.equal(existsSync(localImage(from, 'dlocal-disk0')), false, `the stale copy on ${from} was not removed`);
        t.diagnostic(`${from} -> ${to}: total ${record.totalMs} ms, downtime ${record.downtimeMs} ms, disk ${(record.diskBytes / 2 ** 20).toFixed(0)} MiB`);
      }
    });

    /** Fills 48 MiB so the mirror has data to move, then migrates at 4 MiB/s and interrupts once 8 MiB are across. */
    async function interruptedMirror(interrupt: (destination: LocalDestination, abort: AbortController) => void): Promise<MigrationRolledBackError> {
      await lab.probe.diskcheckFill(guest.ip, 48);
      const before = (await lab.probe.diskcheckStats(guest.ip)).writes;
      const controller = new AbortController();
      let fired = false;
      const to: Host = guest.host === 'h1' ? 'h2' : 'h1';
      const source = guest.vm;
      const error = await guest
        .migrateTo(to, {
          params: { maxBandwidth: 4 * 2 ** 20 },
          signal: controller.signal,
          onProgress: (p, destination) => {
            if (!fired && p.disk && p.disk.copiedBytes > 8 * 2 ** 20 && !p.disk.ready) {
              fired = true;
              interrupt(destination, controller);
            }
          },
        })
        .then(
          () => assert.fail('the migration should have been rolled back'),
          (err: unknown) => err,
        );
      assert.ok(fired, 'the mirror finished before it could be interrupted');
      assert.ok(error instanceof MigrationRolledBackError, `expected a rollback, got ${String(error)}`);
      assert.equal(error.record.failure?.phase, 'perform');
      assert.equal(guest.vm, source, 'the guest must still be the source QEMU');
      await guest.assertHealthy(before);
      await guest.assertNoMirrorLeft();
      assert.ok(existsSync(localImage(guest.host, 'dlocal-disk0')), 'the source volume must be untouched');
      assert.deepEqual((await readdir(path.join(poolDir, to))).filter((f) => !f.startsWith('.')), [], `the half-copied volume on ${to} was not removed`);
      return error;
    }

    it('destination QEMU killed mid-mirror: rolled back, the guest keeps running on the source, its disk verifies, no volume left at the destination', async (t) => {
      const error = await interruptedMirror((destination) => process.kill(destination.instance.process.pid, 'SIGKILL'));
      t.diagnostic(error.record.failure!.reason);
    });

    it('cancelled mid-mirror: rolled back the same way', async (t) => {
      const error = await interruptedMirror((_, controller) => controller.abort());
      assert.match(error.record.failure!.reason, /cancel/i);
      t.diagnostic(error.record.failure!.reason);
    });

    it('the NBD export a destination opens for the copy admits only the source host\'s certificate, not another host of the same CA', async (t) => {
      const pki = await mkdtemp(path.join(os.tmpdir(), 'ferry-nbd-authz-'));
      const from = guest.host;
      const to: Host = from === 'h1' ? 'h2' : 'h1';
      const other = HOSTS.find((h) => h !== from && h !== to)!;
      try {
        await createCa(path.join(pki, 'ca'), 'nbd-authz-test');
        for (const h of HOSTS) await issueCertificate(path.join(pki, 'ca'), path.join(pki, h), { name: h, role: 'host', addresses: ['127.0.0.1'] });
        const destination = new LocalDestination({
          spec: guest.vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, storage: storage[to],
          listenAddress: '127.0.0.1', tls: { dir: path.join(pki, to), peer: certificateIdentity(from) },
        });
        const needs = await new LocalSource(guest.vm, { storage: storage[from] }).diskNeeds();
        const prepared = await destination.prepare({ events: true }, needs);
        try {
          const server = prepared.nbd?.server;
          assert.ok(server?.type === 'inet', `the export listens on TCP: ${JSON.stringify(server)}`);
          // The destination QEMU listens inside the lab's network namespace.
          const open = (as: string) =>
            run('ip', [
              'netns', 'exec', lab.net.netns, 'qemu-img', 'info', '--output=json',
              '--object', `tls-creds-x509,id=tls0,dir=${path.join(pki, as)},endpoint=client`,
              '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${server.port},export=disk0,tls-creds=tls0,tls-hostname=127.0.0.1`,
            ]);
          const refused = await open(other).then(
            () => 'opened',
            (err: Error) => err.message,
          );
          assert.doesNotMatch(refused, /Connection refused|opened/, `host ${other}'s certificate must be refused by the export meant for ${from}, not miss it`);
          assert.match(refused, /TLS/, 'refused in the TLS handshake');
          t.diagnostic(`${other} refused: ${refused.split('\n').pop()}`);
          const info = JSON.parse(await open(from)) as { 'virtual-size': number };
          assert.equal(info['virtual-size'], DISK_BYTES, 'the source host gets in');
        } finally {
          await destination.abort();
        }
        assert.deepEqual((await readdir(path.join(poolDir, to))).filter((f) => !f.startsWith('.')), [], `the volume prepared on ${to} was not removed`);
        await guest.assertHealthy(0);
      } finally {
        await rm(pki, { recursive: true, force: true });
      }
    });

    it('refused in begin when the destination cannot reach the pool, naming host and pool; nothing changes', async () => {
      const unreachable = new StorageCatalog([{ name: 'local', type: 'local', path: path.join(poolDir, 'missing-%h') }], 'h9');
      const destination = new LocalDestination({ spec: guest.vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher, storage: unreachable });
      const source = guest.vm;
      await assert.rejects(migrate({ source: new LocalSource(guest.vm, { storage: storage[guest.host] }), destination }), (err: unknown) => {
        assert.ok(err instanceof MigrationRefusedError, String(err));
        assert.match(err.message, /host 'h9' cannot reach storage pool 'local'/);
        return true;
      });
      assert.equal(guest.vm, source);
      const { status } = await guest.vm.qmp.execute<{ status: string }>('query-status');
      assert.equal(status, 'running');
    });

    it('control: the disk check does catch a lost write and a torn block (so the checks above can fail)', async () => {
      await lab.probe.diskcheckRate(guest.ip, 0);
      await lab.probe.diskcheckDamage(guest.ip, 'rewind', 5);
      await lab.probe.diskcheckDamage(guest.ip, 'corrupt', 9);
      const verdict = await lab.probe.diskcheckVerify(guest.ip);
      assert.equal(verdict.lost, 1);
      assert.equal(verdict.torn, 1);
    });
  });
});
