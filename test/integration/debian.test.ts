/**
 * A real Debian 12 VM, end to end, in a 3-host lab: the image setup builds from the mirror
 * (guest/debian/build.sh: systemd, cloud-init, qemu-guest-agent, sshd, the OpenArena server) is
 * imported, booted through UEFI, configured by cloud-init (hostname, address, SSH key), and
 * live-migrated while a Quake 3 client in the lab's client namespace queries its game server —
 * what the seed's demo promises: the players keep their server.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { CLIENT_QUERY_ADDRESSES } from '../../src/lab/lab.ts';
import type { Quake3Reply } from '../../src/lab/quake3.ts';
import { PROJECT_ROOT } from '../../src/qemu/guest-image.ts';
import { run } from '../../src/util/exec.ts';
import { agentLogs, useLab } from '../helpers/lab.ts';

const IMAGE = path.join(PROJECT_ROOT, 'guest', 'out', 'debian', 'debian-12-openarena.qcow2');

describe('a real Debian guest with a Quake 3 server (3-host lab)', () => {
  const suite = useLab('deb', []);
  const cli = suite.cli;
  let ip = '';

  async function until<T>(what: string, timeoutMs: number, attempt: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const value = await attempt();
        if (value !== undefined) return value;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) {
        const console = ((await cli('vm', 'console', 'deb1')).json?.log ?? '').slice(-2000);
        assert.fail(`${what} within ${timeoutMs / 1000} s${last ? ` (last: ${last})` : ''}\nconsole:\n${console}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  const status = async (): Promise<Extract<Quake3Reply, { kind: 'status' }>> => {
    const reply = await suite.probe.quake3(ip, 'getstatus', 3000);
    assert.equal(reply.kind, 'status');
    return reply as Extract<Quake3Reply, { kind: 'status' }>;
  };

  it('boots through UEFI from an imported Debian image; cloud-init sets hostname, address and SSH key; the guest agent reports them', async (t) => {
    assert.ok(existsSync(IMAGE), `the Debian guest image is not built (${IMAGE}); 'bash scripts/setup.sh' builds it`);
    const key = path.join(suite.dir, 'id_ed25519');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const started = Date.now();
    const imported = await cli('image', 'import', 'debian', IMAGE, '--pool', 'shared');
    assert.equal(imported.code, 0, imported.stderr);
    t.diagnostic(`import of ${(imported.json.fileBytes / 2 ** 20).toFixed(0)} MiB: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const created = await cli('vm', 'create', 'deb1', '--image', 'debian', '--pool', 'shared', '--firmware', 'uefi', '--memory', '512', '--ssh-key', `${key}.pub`, '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    ip = created.json.ip;
    const booted = Date.now();
    const guest = await until('the guest agent did not report the address cloud-init gave', 240_000, async () => {
      const shown = (await cli('vm', 'show', 'deb1')).json;
      const eth0 = shown.guest?.interfaces?.find((i: { name: string }) => i.name === 'eth0');
      return eth0?.addresses.includes(`${ip}/24`) ? shown.guest : undefined;
    });
    t.diagnostic(`boot to guest agent with address: ${((Date.now() - booted) / 1000).toFixed(0)} s`);
    assert.match(guest.os.name, /Debian GNU\/Linux 12/);
    const hostname = await until('SSH did not let the key in', 120_000, async () =>
      (await run('ip', ['netns', 'exec', suite.lab.clientNetns, 'ssh', '-i', key, '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', `debian@${ip}`, 'hostname'], { timeoutMs: 20_000 })).trim(),
    );
    assert.equal(hostname, 'deb1', 'cloud-init set the hostname from the seed');
  });

  it('the OpenArena server keeps its game while the VM migrates: a Quake 3 client sees a short silence, the same match and the same players', async (t) => {
    assert.ok(ip, 'the VM of the first test is needed');
    const before = await until('the OpenArena server did not answer getstatus with its two bots', 180_000, async () => {
      const s = await status();
      return s.players.length >= 2 ? s : undefined;
    });
    assert.equal(before.vars['sv_hostname'], 'ferry OpenArena');
    assert.equal(before.vars['mapname'], 'oa_dm1');
    // A mark only this server process holds (set now, in no config file): a restarted server would not have it.
    const mark = String(Date.now() % 1_000_000);
    const set = await suite.probe.quake3(ip, `rcon ferry-lab sets ferry_mark ${mark}`);
    assert.equal(set.kind, 'print');
    assert.doesNotMatch((set as { text: string }).text, /rconpassword|Bad rcon/i, 'rcon took the command');
    await until('the mark did not show in getstatus', 10_000, async () => ((await status()).vars['ferry_mark'] === mark ? true : undefined));

    await suite.probe.startQuake3Stream(ip, CLIENT_QUERY_ADDRESSES, 8);
    for (const [from, to] of [['h1', 'h2'], ['h2', 'h3']] as const) {
      await suite.probe.window();
      const result = await cli('vm', 'migrate', 'deb1', '--to', to);
      if (result.code !== 0) assert.fail(`${result.stderr}${result.stdout}\n${await agentLogs(suite, [from, to])}`);
      await new Promise((r) => setTimeout(r, 1500)); // the client's next answers after the switchover
      const window = await suite.probe.window();
      assert.equal(result.json.attempts, 1);
      assert.ok(window.received > 0, 'the game server answered during the hop');
      const after = await status();
      assert.equal(after.vars['ferry_mark'], mark, 'the same server process: it kept what it was told at run time');
      assert.equal(after.vars['mapname'], 'oa_dm1');
      assert.equal(after.vars['g_timestamp'], before.vars['g_timestamp'], 'the same match: it started when it did before the move');
      assert.deepEqual(after.players.map((p) => p.name).sort(), before.players.map((p) => p.name).sort(), 'the same players are on the server');
      t.diagnostic(
        `deb1 ${from} -> ${to}: total ${result.json.totalMs} ms, QEMU downtime ${result.json.downtimeMs} ms; Quake 3 client (8 queries/s): ` +
          `longest silence ${window.maxGapMs} ms, ${window.lost} of ${window.sent} unanswered; match since ${after.vars['g_timestamp']}; ` +
          `scores ${before.players.map((p) => `${p.name} ${p.score}`).join(', ')} -> ${after.players.map((p) => `${p.name} ${p.score}`).join(', ')}`,
      );
    }
    await suite.probe.stopStream();
  });

  it('freezes and thaws the guest\'s filesystems through the guest agent (for a consistent snapshot)', async () => {
    const frozen = await cli('vm', 'fsfreeze', 'deb1', 'freeze');
    assert.equal(frozen.code, 0, frozen.stderr);
    assert.ok(Number(frozen.json.result) >= 1, `qemu-ga froze ${frozen.json.result} filesystems`);
    assert.equal((await cli('vm', 'fsfreeze', 'deb1', 'status')).json.result, 'frozen');
    const thawed = await cli('vm', 'fsfreeze', 'deb1', 'thaw');
    assert.equal(thawed.code, 0, thawed.stderr);
    assert.equal((await cli('vm', 'fsfreeze', 'deb1', 'status')).json.result, 'thawed');
  });

  it('stops through the guest agent', async () => {
    const stopped = await cli('vm', 'stop', 'deb1');
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.equal(stopped.json.outcome, 'powered off through the guest agent');
  });
});
