/**
 * End to end through the `ferry` command in a 3-host lab (network namespaces
 * with real agents under mutual TLS, real QEMU guests under TCG), once with the
 * SQLite store and once with a 3-member etcd cluster.
 */
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AgentClient } from '../../src/agent/client.ts';
import { createCa, issueCertificate, loadIdentity } from '../../src/cluster/pki.ts';
import { KEYS } from '../../src/cluster/model.ts';
import { STORE_PASSWORD_FILE, STORE_ROOT_PASSWORD_FILE, STORE_USER_FILE } from '../../src/cluster/store/etcd-auth.ts';
import { injectFault, killAgent, qemuPidsOf, readLab, startAgent, type LabRecord } from '../../src/lab/lab.ts';
import { Probe } from '../../src/lab/probe.ts';
import { run } from '../../src/util/exec.ts';
import { ferry, type CliResult } from '../helpers/cli.ts';
import { assertLabGone } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** QEMU processes running the named guest, on any host of this machine. */
const qemuCount = async (vm: string): Promise<number> => (await qemuPidsOf(vm)).length;

for (const store of ['sqlite', 'etcd'] as const) {
  describe(`cluster end to end (${store} store)`, () => {
    let dir: string;
    let env: Record<string, string>;
    let lab: LabRecord;
    let probe: Probe;
    let ip: string;
    let boot: string;
    let tick = 0;
    const cli = (...args: string[]) => ferry(env, ...args, '--json');

    before(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), `ferry-lab-${store}-`));
      env = { FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fy${process.pid % 10000}${store[0]}`, FERRY_LAB_HOST_MEMORY: '768' };
      const up = await cli('lab', 'up', '--hosts', '3', '--store', store);
      assert.equal(up.code, 0, up.stderr);
      lab = (await readLab(dir))!;
      probe = await Probe.start(lab.clientNetns);
    });

    after(async () => {
      await probe?.close();
      const down = await ferry(env, 'lab', 'down');
      assert.equal(down.code, 0, down.stderr);
      await assertLabGone(dir, env['FERRY_LAB_PREFIX']!);
      await rm(dir, { recursive: true, force: true });
    });

    /** g1's owner now, and a host to move it to. */
    async function nextHop(): Promise<{ from: string; to: string }> {
      const from = (await cli('vm', 'show', 'g1')).json.owner as string;
      return { from, to: from === 'h2' ? 'h3' : 'h2' };
    }

    /** Waits until the lab agent of `host` has died at an injected fault. */
    async function crashed(host: string): Promise<void> {
      const pid = lab.hosts.find((h) => h.name === host)!.pid!;
      const alive = () => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      };
      for (let i = 0; i < 600 && alive(); i++) await sleep(100);
      assert.equal(alive(), false, `the agent of ${host} did not crash at the fault point`);
    }

    /** What a user checks after each step: same server, tick grew, memory intact, one QEMU, the store agrees. */
    async function assertHealthyOn(host: string) {
      const now = await probe.gamesrv(ip);
      assert.equal(now.boot, boot, 'gamesrv restarted: the guest was rebooted or lost');
      assert.ok(now.tick > tick, `tick went from ${tick} to ${now.tick}`);
      tick = now.tick;
      const verdict = await probe.memcheckVerify(ip);
      assert.equal(verdict.mismatches, 0, `memcheck found ${verdict.mismatches} bad pages`);
      assert.equal(await qemuCount('g1'), 1, 'exactly one QEMU must run the guest');
      const show = await cli('vm', 'show', 'g1');
      assert.equal(show.json.owner, host, `the store says ${show.json.owner}, expected ${host}`);
      const health = await new AgentClient(
        { name: host, url: '', socket: path.join(dir, 'hosts', host, 'agent.sock') },
        await loadIdentity(path.join(dir, 'admin')),
      ).call<{ vms: { name: string; status: string }[] }>('GET', '/v1/health');
      assert.deepEqual(health.vms.filter((v) => v.name === 'g1').map((v) => v.status), ['running'], `${host} must run g1`);
    }

    it('lists three hosts', async () => {
      const nodes = await cli('node', 'list');
      assert.equal(nodes.code, 0, nodes.stderr);
      assert.deepEqual(nodes.json.hosts.map((h: { name: string }) => h.name).sort(), ['h1', 'h2', 'h3']);
      assert.deepEqual(nodes.json.down, []);
      const table = await ferry(env, 'node', 'list');
      assert.match(table.stdout, /certificate/);
      assert.match(table.stdout, /h1 .* expires in 179 d +up/);
      for (const h of nodes.json.hosts as { name: string; qemu?: { version: string; machineTypes: string[] } }[]) {
        assert.match(h.qemu?.version ?? '', /^\d+\.\d+\.\d+$/, `${h.name} records its QEMU version`);
        assert.match(h.qemu?.machineTypes[0] ?? '', /^pc-q35-\d+\.\d+$/, `${h.name} records its machine types`);
        const days = (Date.parse((h as { certificateExpires?: string }).certificateExpires ?? '') - Date.now()) / 86_400_000;
        assert.ok(days > 179 && days <= 180, `${h.name}'s certificate expires in ${days} days, not 180`);
      }
    });

    it('creates a VM that answers', async () => {
      const created = await cli('vm', 'create', 'g1', '--memory', '256', '--memcheck', '32', '--dirty', '2', '--host', 'h1');
      assert.equal(created.code, 0, created.stderr);
      // Pinned to the newest machine type every host has (here all run the same QEMU).
      const hosts = (await cli('node', 'list')).json.hosts as { qemu: { machineTypes: string[] } }[];
      assert.equal(created.json.spec.machine, hosts[0]!.qemu.machineTypes[0]);
      ip = created.json.ip;
      const first = await probe.gamesrv(ip);
      boot = first.boot;
      tick = first.tick;
      await sleep(100);
      await assertHealthyOn('h1');
    });

    it('migrates around the ring with the guest answering and its memory verified', async () => {
      for (const [from, to] of [['h1', 'h2'], ['h2', 'h3'], ['h3', 'h1']] as const) {
        const result = await cli('vm', 'migrate', 'g1', '--to', to);
        assert.equal(result.code, 0, result.stderr + result.stdout);
        assert.equal(result.json.status, 'completed');
        assert.equal(result.json.attempts, 1, `one attempt, none rolled back: ${JSON.stringify(result.json.earlierAttempts)}`);
        assert.equal(result.json.totalMsAllAttempts, result.json.totalMs);
        assert.equal(result.json.from, from);
        assert.ok(result.json.totalMs > 0 && result.json.bytes > 32 * 2 ** 20);
        assert.equal(typeof result.json.downtimeMs, 'number');
        assert.equal(result.json.policy, 'balanced');
        assert.equal(typeof result.json.blackoutMs, 'number', 'the lab probe must measure the blackout');
        assert.ok(result.json.blackoutMs >= result.json.downtimeMs, 'the client cannot see less than QEMU paused');
        const kept = (await cli('job', 'show', result.json.job)).json.result.clientBlackout;
        assert.equal(kept?.ms, Math.round(result.json.blackoutMs), 'the blackout the CLI measured is kept in the record (the UI and the metrics show it)');
        assert.equal(kept?.packetsSent, result.json.packetsSent);
        await assertHealthyOn(to);
      }
    });

    it('predicts a migration without moving anything, within 2x of what then happens, judged on migrations it did not learn from (median of 3)', async (t) => {
      const before = (await cli('vm', 'show', 'g1')).json;
      // By default the dry run learns from the ring's migrations, and says so.
      const learned = await cli('vm', 'migrate', 'g1', '--to', 'h2', '--dry-run');
      assert.equal(learned.code, 0, learned.stderr);
      assert.deepEqual(learned.json.predictions.map((p: { policy: string }) => p.policy), ['minimal-downtime', 'balanced', 'must-finish']);
      assert.ok(learned.json.history.migrations >= 3 && learned.json.history.vms.includes('g1'), JSON.stringify(learned.json.history));
      assert.equal(learned.json.basis.setupMs.basis, 'learned');
      assert.ok(learned.json.inputs.nonZeroBytes > 32 * 2 ** 20, 'memcheck alone fills 32 MiB');
      assert.equal(learned.json.basis.nonZeroBytes.basis, 'measured');
      // Judged: only other VMs' migrations may teach it, and none has migrated, so what it cannot measure is labelled assumed.
      const first = await cli('vm', 'migrate', 'g1', '--to', 'h2', '--dry-run', '--history', 'other-vms');
      assert.equal(first.code, 0, first.stderr);
      assert.deepEqual(first.json.history, { choice: 'other-vms', migrations: 0, vms: [] });
      assert.deepEqual(first.json.basis.setupMs, { basis: 'assumed', why: 'no past migration to learn from (history: other-vms)' });
      assert.equal(first.json.basis.linkBytesPerSec.basis, 'measured');
      assert.ok(first.json.inputs.linkBytesPerSec > 0);
      const human = await ferry(env, 'vm', 'migrate', 'g1', '--to', 'h2', '--dry-run', '--history', 'none');
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, /setup ~500 ms \[ASSUMED\]/);
      assert.match(human.stdout, /learned from 0 past migrations \(history: none\)/);
      const after = (await cli('vm', 'show', 'g1')).json;
      assert.equal(after.owner, before.owner, 'a dry run moves nothing');
      assert.equal(after.token, before.token, 'a dry run changes nothing');

      // The machine is shared: a moment of load between the dry run and the migration can
      // slow one of them alone. Three predictions and migrations, h1 -> h2 -> h1 -> h2, and
      // the median of their ratios is what must lie within 2x.
      const ratios: number[] = [];
      const hops: [string, string][] = [['h1', 'h2'], ['h2', 'h1'], ['h1', 'h2']];
      for (const [i, [from, to]] of hops.entries()) {
        const dry = i === 0 ? first : await cli('vm', 'migrate', 'g1', '--to', to, '--dry-run', '--history', 'other-vms');
        assert.equal(dry.code, 0, dry.stderr);
        assert.equal(dry.json.from, from);
        assert.equal(dry.json.history.migrations, 0, 'g1 is judged on migrations the prediction did not learn from');
        const predicted = dry.json.predictions.find((p: { policy: string }) => p.policy === 'balanced');
        assert.equal(predicted.converges, true);
        const real = await cli('vm', 'migrate', 'g1', '--to', to);
        assert.equal(real.code, 0, real.stderr + JSON.stringify(real.json ?? {}));
        await assertHealthyOn(to);
        t.diagnostic(`${from} -> ${to}, balanced: predicted ${predicted.totalMs} ms, took ${real.json.totalMs} ms`);
        ratios.push(real.json.totalMs / predicted.totalMs);
      }
      assert.equal((await cli('vm', 'migrate', 'g1', '--to', 'h1')).code, 0);
      await assertHealthyOn('h1');
      const median = [...ratios].sort((a, b) => a - b)[1]!;
      assert.ok(median <= 2 && median >= 0.5, `took/predicted ratios ${ratios.map((r) => r.toFixed(2)).join(', ')}: median ${median.toFixed(2)}, outside 0.5..2`);
    });

    it('refuses what a user can get wrong, with a message, a non-zero exit and nothing changed', async () => {
      const cases: [string[], RegExp][] = [
        [['vm', 'migrate', 'nope', '--to', 'h2'], /no VM named 'nope'/],
        [['vm', 'migrate', 'g1', '--to', 'h9'], /unknown host 'h9'; hosts: h1, h2, h3/],
        [['vm', 'migrate', 'g1', '--to', 'h1'], /already runs on h1/],
        [['vm', 'migrate', 'g1'], /needs --to HOST/],
        [['vm', 'create', 'g1'], /already exists/],
        [['vm', 'migrate', 'g1', '--to', 'h2', '--policy', 'fastest'], /--policy fastest: choose one of minimal-downtime, balanced, must-finish/],
        [['vm', 'migrate', 'g1', '--to', 'h2', '--allow-postcopy'], /--allow-postcopy goes with --policy must-finish/],
      ];
      for (const [args, message] of cases) {
        const r: CliResult = await cli(...args);
        assert.notEqual(r.code, 0, `${args.join(' ')} must fail`);
        assert.match(r.stderr, message);
      }
      // A destination without room: h3 offers 768 MiB, a 600 MiB VM leaves 168 for g1's 256.
      const big = await cli('vm', 'create', 'big', '--memory', '600', '--memcheck', '0', '--host', 'h3');
      assert.equal(big.code, 0, big.stderr);
      const full = await cli('vm', 'migrate', 'g1', '--to', 'h3');
      assert.notEqual(full.code, 0);
      assert.match(full.stderr, /host 'h3' has 168 MiB free for guests, 'g1' needs 256 MiB/);
      // A VM that is not running is not live-migrated; 'vm start' brings it back, on its host.
      assert.equal((await cli('vm', 'stop', 'big', '--force')).code, 0);
      assert.equal(await qemuCount('big'), 0, 'a stopped VM has no QEMU');
      const stopped = await cli('vm', 'migrate', 'big', '--to', 'h2');
      assert.notEqual(stopped.code, 0);
      assert.match(stopped.stderr, /'big' is not running; start it with 'ferry vm start big'/);
      const started = await cli('vm', 'start', 'big');
      assert.equal(started.code, 0, started.stderr);
      const bigIp = (await cli('vm', 'show', 'big')).json.ip as string;
      assert.match((await probe.gamesrv(bigIp, 60_000)).boot, /\S/, 'the started VM answers');
      assert.equal(await qemuCount('big'), 1);
      assert.equal((await cli('vm', 'show', 'big')).json.owner, 'h3');
      assert.equal((await cli('vm', 'destroy', 'big')).code, 0);
      await assertHealthyOn('h1');
    });

    it('--timeout: a migration that cannot finish in time rolls back, the guest running on where it was', async () => {
      // 2 MiB/s cannot carry the guest's ~40 MiB of non-zero memory in 3 s.
      const result = await cli('vm', 'migrate', 'g1', '--to', 'h2', '--bandwidth', '2', '--timeout', '3');
      assert.notEqual(result.code, 0);
      assert.equal(result.json.status, 'failed');
      assert.match(result.json.error, /the RAM copy did not finish within 3 s/);
      assert.equal(result.json.attempts, 1, 'a timeout is not tried again');
      await assertHealthyOn('h1');
      assert.equal((await cli('job', 'show', result.json.job)).json.state, 'failed');
    });

    it('probe: the game client and the memory verdict, through the CLI', async () => {
      const played = await cli('probe', 'g1', '--seconds', '1');
      assert.equal(played.code, 0, played.stderr);
      assert.equal(played.json.vm, 'g1');
      assert.ok(played.json.sent >= 150 && played.json.lost <= played.json.sent / 10, JSON.stringify(played.json));
      const verified = await cli('probe', 'g1', '--verify');
      assert.equal(verified.code, 0, verified.stderr);
      assert.equal(verified.json.mismatches, 0);
      assert.ok(verified.json.pages >= (32 * 2 ** 20) / 4096, `memcheck verified ${verified.json.pages} pages`);
    });

    it('refuses requests without a client certificate or with one from another CA', async () => {
      const socketPath = path.join(dir, 'hosts', 'h1', 'agent.sock');
      const ca = await readFile(path.join(dir, 'cluster', 'ca-cert.pem'), 'utf8');
      const attempt = (extra: https.RequestOptions) =>
        new Promise<string>((resolve) => {
          const req = https.request({ socketPath, path: '/v1/cluster/vms', method: 'GET', ca, servername: 'h1', ...extra }, (res) => resolve(`HTTP ${res.statusCode}`));
          req.on('error', (err) => resolve(`refused: ${err.message}`));
          req.end();
        });
      assert.match(await attempt({}), /^refused:/);
      const otherCa = await mkdtemp(path.join(os.tmpdir(), 'ferry-otherca-'));
      try {
        await createCa(otherCa, 'intruder');
        await issueCertificate(otherCa, path.join(otherCa, 'admin'), { name: 'admin', role: 'admin' });
        const intruder = await loadIdentity(path.join(otherCa, 'admin'));
        assert.match(await attempt({ cert: intruder.cert, key: intruder.key }), /^refused:/);
      } finally {
        await rm(otherCa, { recursive: true, force: true });
      }
      const admin = await loadIdentity(path.join(dir, 'admin'));
      assert.equal(await attempt({ cert: admin.cert, key: admin.key }), 'HTTP 200');
      if (store === 'etcd') {
        // The store answers only clients with a certificate of the cluster CA, too.
        const etcdctl = (...extra: string[]) =>
          run('ip', ['netns', 'exec', lab.storeNetns!, 'etcdctl', '--endpoints=https://10.80.0.5:2379', `--cacert=${path.join(dir, 'cluster', 'ca-cert.pem')}`, '--command-timeout=2s', ...extra, 'get', '--prefix', '--keys-only', '/ferry/hosts/']);
        await assert.rejects(etcdctl());
        const tlsAdmin = [`--cert=${path.join(dir, 'admin', 'cert.pem')}`, `--key=${path.join(dir, 'admin', 'key.pem')}`];
        // RBAC: a certificate alone is no etcd user; root (its password on the CA's machine) reads everything.
        await assert.rejects(etcdctl(...tlsAdmin), /permission denied|user name/);
        const rootPassword = (await readFile(path.join(dir, 'cluster', STORE_ROOT_PASSWORD_FILE), 'utf8')).trim();
        const keys = await etcdctl(...tlsAdmin, `--user=root:${rootPassword}`);
        assert.match(keys, /\/ferry\/hosts\/h1/);
      }
    });

    if (store === 'etcd')
      it("etcd's RBAC: a host writes its own records and the shared ones, never another host's", async () => {
        // etcdctl in the store's namespace, as host h3 (its user and the password in its bundle, its certificate).
        const h3Dir = path.join(dir, 'hosts', 'h3', 'cert');
        const password = (await readFile(path.join(h3Dir, STORE_PASSWORD_FILE), 'utf8')).trim();
        const user = (await readFile(path.join(h3Dir, STORE_USER_FILE), 'utf8')).trim();
        assert.match(user, /^host-h3-[0-9a-f]{6}$/, 'one etcd user per bundle, with the host role');
        const etcdctl = (certDir: string, user: string | undefined, ...command: string[]) =>
          run('ip', [
            'netns', 'exec', lab.storeNetns!, 'etcdctl', '--endpoints=https://10.80.0.5:2379', `--cacert=${path.join(dir, 'cluster', 'ca-cert.pem')}`, '--command-timeout=2s',
            `--cert=${path.join(certDir, 'cert.pem')}`, `--key=${path.join(certDir, 'key.pem')}`, ...(user ? [`--user=${user}`] : []), ...command,
          ]);
        const asH3 = (...command: string[]) => etcdctl(h3Dir, `${user}:${password}`, ...command);
        assert.match(await asH3('get', '--keys-only', '/ferry/hosts/h1'), /\/ferry\/hosts\/h1/, 'h3 reads the cluster');
        await assert.rejects(asH3('del', '/ferry/hosts/h1'), /permission denied/, "h3 cannot delete h1's lease record");
        await assert.rejects(asH3('put', KEYS.replicaEndpoint('r', 'v1', 'h1'), '{"host":"h1"}'), /permission denied/, "nor publish a replica endpoint in h1's name");
        const own = KEYS.replicaEndpoint('r', 'v1', 'h3');
        await asH3('put', own, '{}');
        await asH3('del', own);
        await asH3('put', '/ferry/jobs/rbac-probe', '{}'); // a shared record: any host's agent writes jobs
        await asH3('del', '/ferry/jobs/rbac-probe');
        await assert.rejects(etcdctl(h3Dir, `${user}:wrong`, 'get', '/ferry/hosts/h1'), /authentication failed|invalid user ID or password/);
        // A store member's certificate (CN etcd1) is no user either.
        await assert.rejects(etcdctl(path.join(dir, 'etcd', 'tls1'), undefined, 'get', '/ferry/hosts/h1'), /permission denied|user name not found|user name is empty/);
        assert.match(await asH3('get', '--keys-only', '/ferry/hosts/h1'), /\/ferry\/hosts\/h1/, "h1's record is untouched");
        await assertHealthyOn((await cli('vm', 'show', 'g1')).json.owner);
      });

    it('refuses a command carrying a stale fencing token', async () => {
      const before = (await cli('vm', 'show', 'g1')).json;
      assert.equal((await cli('vm', 'migrate', 'g1', '--to', 'h2')).code, 0);
      const agent = new AgentClient({ name: 'h2', url: '', socket: path.join(dir, 'hosts', 'h2', 'agent.sock') }, await loadIdentity(path.join(dir, 'admin')));
      await assert.rejects(agent.call('POST', '/v1/vms/g1/stop', { token: before.token, force: true }), /stale fencing token for 'g1'/);
      await assertHealthyOn('h2');
    });

    it('a compare-and-swap really lost in the store at the switchover (another writer changed the record) rolls back; the guest runs on where it was', async () => {
      const { from, to } = await nextHop();
      await injectFault(lab, from, 'before-ownership-swap', 'touch-vm-record', 'g1');
      const result = await cli('vm', 'migrate', 'g1', '--to', to);
      assert.notEqual(result.code, 0, 'the migration must fail');
      assert.equal(result.json.status, 'failed');
      assert.match(result.json.error, /the switchover was refused \(ownership not granted to the destination\)/);
      await assertHealthyOn(from);
    });

    it('the source agent crashes right after the ownership swap: the destination runs the guest, the restarted agent removes its stale copy and closes the job', async () => {
      const { from, to } = await nextHop();
      await injectFault(lab, from, 'after-ownership-swap', 'crash', 'g1');
      const migration = cli('vm', 'migrate', 'g1', '--to', to);
      await crashed(from);
      assert.equal((await cli('vm', 'show', 'g1')).json.owner, to, 'the crash came after the swap');
      await sleep(1000);
      await startAgent(lab, from);
      const result = await migration;
      assert.equal(result.code, 0, result.stderr + JSON.stringify(result.json ?? {}));
      assert.equal(result.json.status, 'completed');
      const job = (await cli('job', 'show', result.json.job)).json;
      assert.match(job.log.join('\n'), new RegExp(`agent of ${from} restarted during the migration; ownership had moved: g1 runs on ${to}`));
      await assertHealthyOn(to);
    });

    it('the destination agent crashes after the switchover, before finish: the failure says the guest moved, the source is never resumed, the restarted agent runs the guest on', async () => {
      const { from, to } = await nextHop();
      await injectFault(lab, to, 'before-incoming-finish', 'crash', 'g1');
      const migration = cli('vm', 'migrate', 'g1', '--to', to);
      await crashed(to);
      await sleep(500);
      await startAgent(lab, to);
      const result = await migration;
      assert.notEqual(result.code, 0, 'finish was not confirmed: not reported as a clean success');
      assert.match(result.json.error, /switched over: the destination owns it and the source is retired, but the destination failed afterwards/);
      await assertHealthyOn(to);
    });

    for (const victim of ['source', 'destination'] as const) {
      it(`recovers when the ${victim} agent is killed mid-migration`, async () => {
        const { from, to } = await nextHop();
        const killed = victim === 'source' ? from : to;
        // Slow enough (8 MiB/s) to be caught in the middle.
        const migration = cli('vm', 'migrate', 'g1', '--to', to, '--bandwidth', '8');
        const deadline = Date.now() + 30_000;
        for (;;) {
          const jobs = (await cli('job', 'list')).json as { kind: string; state: string; id: string }[];
          const running = jobs.find((j) => j.kind === 'migrate' && j.state === 'running');
          if (running) {
            const job = (await cli('job', 'show', running.id)).json;
            if (job.progress?.ram?.transferredBytes > 4 * 2 ** 20) break;
          }
          assert.ok(Date.now() < deadline, 'the migration never got going');
          await sleep(100);
        }
        await killAgent(lab, killed);
        await sleep(victim === 'destination' ? 3000 : 500); // the source notices a silent destination
        await startAgent(lab, killed);
        const result = await migration;
        assert.notEqual(result.code, 0, 'the interrupted migration must be reported as failed');
        assert.equal(result.json?.status ?? 'failed', 'failed');
        await sleep(500);
        await assertHealthyOn(from);
        const jobs = (await cli('job', 'list')).json as { kind: string; state: string }[];
        assert.equal(jobs.filter((j) => j.state === 'running').length, 0, 'no job may stay running');
      });
    }

    if (store === 'etcd')
      it('ferry node remove also removes the host\'s etcd user: its password opens the store no more', async () => {
        const owner = (await cli('vm', 'show', 'g1')).json.owner as string;
        if (owner === 'h3') assert.equal((await cli('vm', 'migrate', 'g1', '--to', 'h1')).code, 0);
        const certDir = path.join(dir, 'hosts', 'h3', 'cert');
        const password = (await readFile(path.join(certDir, STORE_PASSWORD_FILE), 'utf8')).trim();
        const user = (await readFile(path.join(certDir, STORE_USER_FILE), 'utf8')).trim();
        const asH3 = () =>
          run('ip', [
            'netns', 'exec', lab.storeNetns!, 'etcdctl', '--endpoints=https://10.80.0.5:2379', `--cacert=${path.join(dir, 'cluster', 'ca-cert.pem')}`, '--command-timeout=2s',
            `--cert=${path.join(certDir, 'cert.pem')}`, `--key=${path.join(certDir, 'key.pem')}`, `--user=${user}:${password}`, 'get', '--keys-only', '/ferry/hosts/h1',
          ]);
        await asH3();
        const removed = await cli('node', 'remove', 'h3', '--reason', 'rbac test');
        assert.equal(removed.code, 0, removed.stderr);
        assert.match(removed.json.storeUser, new RegExp(`its etcd users \\(${user}\\) and role host-h3 are removed`));
        await assert.rejects(asH3(), /authentication failed|invalid user ID or password|user name not found/);
        const deadline = Date.now() + 15_000;
        while (((await cli('node', 'list')).json.hosts as { name: string }[]).some((h) => h.name === 'h3')) {
          assert.ok(Date.now() < deadline, 'h3 left the host list');
          await sleep(500);
        }
        await assertHealthyOn((await cli('vm', 'show', 'g1')).json.owner);
      });
  });
}
