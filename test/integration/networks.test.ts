/**
 * Named networks through the `ferry` command in a 3-host lab: a network on the lab's second guest
 * segment (each host's br1), a VM with a second NIC on it (its address configured in the guest, its
 * MAC allocated by ferry), reachable from the client only on that segment, and at once again after a
 * live migration. A host that maps the network to a bridge it lacks is refused in begin, and the VM
 * keeps running where it was.
 *
 * VLANs: these machines' kernel has neither bridge VLAN filtering nor 802.1Q devices ("Operation not
 * supported"), so a tagged network is tested only for its refusal: every host reports it unusable
 * with what to enable, and a VM on it is refused with nothing made. The tagging itself (the tap an
 * untagged member of the VLAN only, net/tap.ts) is not exercised here.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { SECOND_SEGMENT, killAgent, startAgent } from '../../src/lab/lab.ts';
import { ip } from '../../src/net/netns.ts';
import { agentLogs, useLab } from '../helpers/lab.ts';

const BACK_ADDRESS = `${SECOND_SEGMENT}.11`;

describe('named networks and several NICs (3-host lab)', () => {
  const suite = useLab('net', []);
  const cli = suite.cli;
  const hostNs = (name: string) => suite.lab.hosts.find((h) => h.name === name)!.netns;

  /** Whether the guest's game server answers at the second NIC's address (from the client) within `tries` seconds. */
  async function answers(tries: number): Promise<boolean> {
    for (let i = 0; i < tries; i++) {
      const ok = await suite.probe.gamesrv(BACK_ADDRESS, 1000).then(() => true, () => false);
      if (ok) return true;
    }
    return false;
  }

  it('adds a network; bad networks are refused', async () => {
    const added = await cli('network', 'add', 'back', '--bridge', 'br1', '--subnet', `${SECOND_SEGMENT}.0/24`);
    assert.equal(added.code, 0, added.stderr);
    assert.equal(added.json.network.bridge, 'br1');
    const usable = added.json.hosts.flatMap((h: { networks: Array<{ network: string; problem: string | null }> }) => h.networks.filter((n) => n.network === 'back'));
    assert.deepEqual(usable.map((n: { problem: string | null }) => n.problem), [null, null, null], 'every lab host can place NICs on it');

    for (const [args, message] of [
      [['back', '--bridge', 'br0'], /already exists/],
      [['wide', '--bridge', 'br0', '--vlan', '5000'], /VLAN id from 1 to 4094/],
      [['evil', '--bridge', 'br0,script=/x'], /not a network interface name/],
      [['Bad_Name', '--bridge', 'br0'], /not a network name/],
      [['sub', '--bridge', 'br0', '--subnet', '10.78.0.0/33'], /not an IPv4 network/],
    ] as const) {
      const refused = await cli('network', 'add', ...args);
      assert.notEqual(refused.code, 0, `network add ${args.join(' ')} should be refused`);
      assert.match(refused.stderr, message);
    }
    const list = await cli('network', 'list');
    assert.deepEqual(list.json.networks.map((n: { name: string }) => n.name), ['back'], 'nothing of the refused networks was recorded');
  });

  it('reports a VLAN network unusable on a bridge that does not filter VLANs, and refuses VMs on it', async () => {
    const tagged = await cli('network', 'add', 'tagged', '--bridge', 'br1', '--vlan', '20');
    assert.equal(tagged.code, 0, tagged.stderr);
    const problems = tagged.json.hosts.flatMap((h: { networks: Array<{ network: string; problem: string | null }> }) => h.networks.filter((n) => n.network === 'tagged').map((n) => n.problem));
    assert.equal(problems.length, 3);
    for (const problem of problems) assert.match(problem, /bridge 'br1' in network namespace \S+ does not filter VLANs, so VLAN 20 would not be kept apart; enable it/);
    const volumesBefore = (await cli('volume', 'list')).json.length;
    const refused = await cli('vm', 'create', 'v20', '--memory', '128', '--host', 'h1', '--net', 'tagged');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /does not filter VLANs/);
    assert.equal((await cli('vm', 'show', 'v20')).code === 0, false, 'no VM record stays behind');
    assert.equal((await cli('volume', 'list')).json.length, volumesBefore);
    assert.equal((await cli('network', 'delete', 'tagged')).code, 0);
  });

  it('creates a VM with a second NIC on the network: a stable MAC, its address in the guest, reachable only on its segment', async () => {
    const outside = await cli('vm', 'create', 'n0', '--memory', '128', '--host', 'h1', '--net', 'back,ip=10.78.1.5');
    assert.notEqual(outside.code, 0);
    assert.match(outside.stderr, /not a host address of network back's subnet 10\.78\.0\.0\/24/);
    const unknown = await cli('vm', 'create', 'n0', '--memory', '128', '--host', 'h1', '--net', 'nowhere');
    assert.match(unknown.stderr, /--net nowhere: no such network/);

    const created = await cli('vm', 'create', 'n1', '--memory', '128', '--host', 'h1', '--net', `back,ip=${BACK_ADDRESS}`);
    assert.equal(created.code, 0, created.stderr);
    const nics = created.json.spec.nics as Array<{ mac: string; backend: { kind: string; network?: string }; address?: string }>;
    assert.equal(nics.length, 2);
    assert.deepEqual(nics[1]!.backend, { kind: 'network', network: 'back' });
    assert.equal(nics[1]!.address, `${BACK_ADDRESS}/24`);
    assert.match(nics[1]!.mac, /^52:54:([0-9a-f]{2}:){3}01$/, 'the MAC comes from the uuid and the NIC index');

    const taken = await cli('vm', 'create', 'n2', '--memory', '128', '--host', 'h2', '--net', `back,ip=${BACK_ADDRESS}`);
    assert.match(taken.stderr, /VM 'n1' has this address on network back/);

    // One tap on each of h1's guest bridges.
    const ports = async (bridge: string) => {
      const out = await ip(hostNs('h1'), 'link', 'show', 'master', bridge);
      return { taps: out.match(/^\d+: ft[0-9a-f]+[:@]/gm) ?? [], out };
    };
    const br1 = await ports('br1');
    assert.equal(br1.taps.length, 1, `the second NIC is on br1:\n${br1.out}`);
    const br0 = await ports('br0');
    assert.equal(br0.taps.length, 1, `the first NIC is on br0:\n${br0.out}`);

    assert.ok(await answers(60), `the guest's second NIC answers on the second segment\n${(await cli('vm', 'console', 'n1')).json?.log?.slice(-800)}`);
    const log = (await cli('vm', 'console', 'n1')).json.log as string;
    assert.match(log, new RegExp(`FERRY-GUEST-READY ip=\\S+ eth1=${BACK_ADDRESS.replace(/\./g, '\\.')}/24`));
    const primary = (await cli('vm', 'show', 'n1')).json.ip as string;
    await suite.probe.gamesrv(primary, 2000); // the first NIC, on the guest bridge, answers too

    // The same address asked from the first segment: nothing answers (the two segments are apart).
    await ip(suite.lab.clientNetns, 'link', 'set', 'c1', 'down');
    await ip(suite.lab.clientNetns, 'addr', 'add', `${SECOND_SEGMENT}.2/24`, 'dev', 'c0');
    try {
      assert.equal(await answers(3), false, 'the second NIC must not be reachable from the first segment');
    } finally {
      await ip(suite.lab.clientNetns, 'addr', 'del', `${SECOND_SEGMENT}.2/24`, 'dev', 'c0');
      await ip(suite.lab.clientNetns, 'link', 'set', 'c1', 'up');
    }
  });

  it('migrates the VM with both NICs; the second answers at once on the new host', async () => {
    const moved = await cli('vm', 'migrate', 'n1', '--to', 'h2');
    if (moved.code !== 0) assert.fail(`${moved.stderr}\n${await agentLogs(suite, ['h1', 'h2'])}`);
    assert.equal(moved.json.status, 'completed');
    const started = Date.now();
    assert.ok(await answers(5), 'the second NIC answers after the migration');
    assert.ok(Date.now() - started < 5000);
    const shown = await cli('vm', 'show', 'n1');
    assert.equal(shown.json.owner, 'h2');
  });

  it('refuses in begin a host that cannot place the NIC, and the VM runs on', async () => {
    const shown = await cli('vm', 'show', 'n1');
    assert.equal(shown.json.owner, 'h2');
    // h3 maps the network to a bridge of its own (node.json), which it lacks.
    const h3 = suite.lab.hosts.find((h) => h.name === 'h3')!;
    const node = JSON.parse(await readFile(h3.config, 'utf8'));
    await writeFile(h3.config, JSON.stringify({ ...node, networks: { back: 'br7' } }));
    await killAgent(suite.lab, 'h3');
    await startAgent(suite.lab, 'h3');
    const unmapped = await cli('vm', 'migrate', 'n1', '--to', 'h3');
    assert.notEqual(unmapped.code, 0);
    assert.match(unmapped.stderr + (unmapped.json?.error ?? ''), /NIC \S+ \(network back\) on h3: bridge 'br7' does not exist/);
    const dry = await cli('vm', 'migrate', 'n1', '--to', 'h3', '--dry-run', '--no-probe');
    assert.match(JSON.stringify(dry.json?.destinationProblems ?? dry.stderr), /bridge 'br7' does not exist/);
    assert.equal((await cli('vm', 'show', 'n1')).json.owner, 'h2');
    assert.ok(await answers(3), 'the VM still answers where it was');
  });

  it('keeps a network while a VM uses it', async () => {
    const inUse = await cli('network', 'delete', 'back');
    assert.notEqual(inUse.code, 0);
    assert.match(inUse.stderr, /used by n1/);
    assert.equal((await cli('vm', 'destroy', 'n1')).code, 0);
    const deleted = await cli('network', 'delete', 'back');
    assert.equal(deleted.code, 0, deleted.stderr);
  });
});
