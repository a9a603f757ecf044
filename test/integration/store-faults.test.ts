/**
 * The store failing under the cluster, and coming back:
 * - etcd (3-host lab): with 2 of its 3 members down a migration and a create are refused, saying the
 *   store has no quorum and what to do; the running VM (under HA: its watchdog armed) keeps running
 *   past its lease's TTL; nothing was half-written; once the members are back a migration succeeds.
 * - SQLite (the store class itself, no lab): on a full filesystem and behind another process's lock,
 *   a write is refused with a typed error naming the cause, a compare-and-swap happened whole or not
 *   at all, and writes work again once the condition clears.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { StoreDiskFullError, StoreLockedError } from '../../src/cluster/store/types.ts';
import { killEtcdMember, restartEtcdMember } from '../../src/lab/lab.ts';
import { run } from '../../src/util/exec.ts';
import { PROJECT_ROOT } from '../../src/util/project.ts';
import { labQemuPids, useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('etcd with 2 of 3 members down (3-host lab)', () => {
  const suite = useLab('sfq', ['--store', 'etcd']);
  const cli = suite.cli;
  let ip: string;
  let boot: string;
  let pid: number;

  before(async () => {
    const created = await cli('vm', 'create', 'g1', '--memory', '128', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    ip = created.json.ip;
    boot = (await suite.probe.gamesrv(ip, 60_000)).boot;
    // Under HA: its host's watchdog guards its QEMU, and kills it if the agent stops petting.
    assert.equal((await cli('ha', 'add', 'g1')).code, 0);
    pid = (await labQemuPids(suite, 'g1'))[0]!;
  });

  const agentLog = (host: string) => readFile(path.join(suite.dir, 'hosts', host, 'agent.log'), 'utf8');
  async function waitForLog(host: string, pattern: RegExp, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(await agentLog(host))) {
      assert.ok(Date.now() < deadline, `${host}'s log never said ${pattern}:\n${(await agentLog(host)).slice(-2000)}`);
      await sleep(250);
    }
  }

  it('refuses a migration and a create saying the store has no quorum and what to do; the VM runs on past its lease TTL; the members back, it migrates', async (t) => {
    await killEtcdMember(suite.lab, 1);
    await killEtcdMember(suite.lab, 2);
    const killed = Date.now();
    await waitForLog('h1', /the store has no quorum: .*This host keeps its guests running/, 15_000);

    const noQuorum = /the store has no quorum: etcd needs 2 of its 3 members to agree on any change, and 1 runs, without a leader \(https:\/\/10\.80\.0\.5:2379\); not running \(connection refused\): https:\/\/10\.80\.0\.6:2379, https:\/\/10\.80\.0\.7:2379\. Nothing in the cluster can change until a majority of the etcd members runs again: start the stopped members/;
    const migrate = await cli('vm', 'migrate', 'g1', '--to', 'h2');
    assert.notEqual(migrate.code, 0);
    assert.match(migrate.stderr, noQuorum);
    const create = await cli('vm', 'create', 'g2', '--memory', '128', '--host', 'h2');
    assert.notEqual(create.code, 0);
    assert.match(create.stderr, noQuorum);
    t.diagnostic(`refused: ${migrate.stderr.trim()}`);

    // Past the self-fence deadline, the watchdog's and the lease's TTL (10 s in the lab).
    await sleep(Math.max(0, killed + 12_000 - Date.now()));
    assert.deepEqual(await labQemuPids(suite, 'g1'), [pid], 'the same QEMU runs g1, and only it');
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, 'the guest answers from the same boot');
    assert.doesNotMatch(await agentLog('h1'), /self-fencing/);

    await restartEtcdMember(suite.lab, 1);
    await restartEtcdMember(suite.lab, 2);
    await waitForLog('h1', /the store has a quorum again/, 30_000);

    // Nothing half-written: no g2 anywhere, no migration under way, no job left running.
    assert.notEqual((await cli('vm', 'show', 'g2')).code, 0, 'no record of g2');
    assert.deepEqual(await labQemuPids(suite, 'g2'), []);
    for (const h of ['h1', 'h2', 'h3']) assert.deepEqual((await readdir(path.join(suite.dir, 'hosts', h, 'images'))).filter((f) => f.includes('g2')), []);
    const shown = (await cli('vm', 'show', 'g1')).json;
    assert.equal(shown.owner, 'h1');
    const jobs = (await cli('job', 'list')).json as Array<{ kind: string; state: string }>;
    assert.deepEqual(jobs.filter((j) => j.state === 'running'), [], 'no job stuck running');
    assert.deepEqual(jobs.filter((j) => j.kind === 'migrate'), [], 'the refused migration left no job');

    const migrated = await cli('vm', 'migrate', 'g1', '--to', 'h2');
    assert.equal(migrated.code, 0, migrated.stderr);
    assert.equal((await cli('vm', 'show', 'g1')).json.owner, 'h2');
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, 'migrated live: the same boot');
    assert.equal((await labQemuPids(suite, 'g1')).length, 1);
  });
});

describe('SQLite store faults (the store class, no lab)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-sqlite-faults-'));
  });
  after(async () => {
    if ((await readFile('/proc/mounts', 'utf8')).includes(` ${dir} `)) await run('umount', [dir]);
    await rm(dir, { recursive: true, force: true });
  });

  /** What the store holds, read through a second connection (what another agent would see). */
  async function seenByAnother(file: string, keys: string[]): Promise<{ revision: number; values: Array<string | undefined> }> {
    const other = new SqliteStore(file);
    try {
      return { revision: await other.revision(), values: await Promise.all(keys.map(async (k) => (await other.get(k))?.value)) };
    } finally {
      await other.close();
    }
  }

  it('a full disk: the write is refused whole with StoreDiskFullError, nothing of it kept; with space again it goes through', async () => {
    const mount = path.join(dir, 'small');
    await run('mkdir', ['-p', mount]);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mount]);
    try {
      const file = path.join(mount, 'state.db');
      const store = new SqliteStore(file);
      try {
        const rev = await store.put('/ferry/vms/v1', 'owner h1');
        const filler = path.join(mount, 'filler');
        await run('sh', ['-c', `dd if=/dev/zero of=${filler} bs=64k 2>/dev/null; true`]);
        const before = await seenByAnother(file, ['/ferry/vms/v1', '/ferry/jobs/j1']);
        // An ownership swap that also writes a job record too big for what is left.
        const swap = () => store.txn([{ key: '/ferry/vms/v1', modRevision: rev }], [{ type: 'put', key: '/ferry/vms/v1', value: 'owner h2' }, { type: 'put', key: '/ferry/jobs/j1', value: 'x'.repeat(512 * 1024) }]);
        await assert.rejects(swap(), (err: unknown) => {
          assert.ok(err instanceof StoreDiskFullError, String(err));
          assert.match(err.message, new RegExp(`the store's database ${file} cannot grow: its filesystem is full \\(SQLITE_FULL\\); nothing of this change was written. Free space there`));
          return true;
        });
        assert.deepEqual(await seenByAnother(file, ['/ferry/vms/v1', '/ferry/jobs/j1']), before, 'nothing of the swap was kept');
        assert.equal((await store.get('/ferry/vms/v1'))?.modRevision, rev, 'reads go on');
        await rm(filler);
        const done = await swap();
        assert.equal(done.succeeded, true, 'the same swap goes through once there is room');
        assert.deepEqual((await seenByAnother(file, ['/ferry/vms/v1'])).values, ['owner h2']);
      } finally {
        await store.close();
      }
    } finally {
      await run('umount', [mount]);
    }
  });

  it('a lock held by another process past the busy timeout: StoreLockedError, nothing written; once it lets go the write goes through', async () => {
    const file = path.join(dir, 'locked.db');
    const store = new SqliteStore(file, 300);
    try {
      const rev = await store.put('/ferry/vms/v1', 'owner h1');
      // Another process takes the database's write lock and keeps it for 3 s.
      const holder = spawn(process.execPath, ['-e', `
        const db = new (require('better-sqlite3'))(${JSON.stringify(file)});
        db.exec('BEGIN EXCLUSIVE');
        console.log('locked');
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3000);
        db.exec('COMMIT');
      `], { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise((r) => holder.on('exit', r));
      await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
      const swap = () => store.txn([{ key: '/ferry/vms/v1', modRevision: rev }], [{ type: 'put', key: '/ferry/vms/v1', value: 'owner h2' }]);
      const t0 = Date.now();
      await assert.rejects(swap(), (err: unknown) => {
        assert.ok(err instanceof StoreLockedError, String(err));
        assert.match(err.message, new RegExp(`the store's database ${file} is locked: another process held it for more than 0.3 s \\(SQLITE_BUSY\\); nothing of this change was written. Find what holds it \\(fuser ${file}\\)`));
        return true;
      });
      assert.ok(Date.now() - t0 < 2500, 'refused after the busy timeout, not when the lock is let go');
      assert.equal((await store.get('/ferry/vms/v1'))?.value, 'owner h1', 'nothing written; reads go on meanwhile');
      await exited;
      assert.equal((await swap()).succeeded, true);
      assert.equal((await store.get('/ferry/vms/v1'))?.value, 'owner h2');
    } finally {
      await store.close();
    }
  });
});
