/**
 * CPU models in a 3-host lab, with real guests: the cluster's model is the best every host runs and
 * new VMs get it; h3 then comes back as an "older" host (node.json cpu.maxModel, the way an admin
 * masks a host's CPU) and is flagged, and the best common model drops to what it runs; a VM of the
 * newer model cannot be migrated, placed or drained there (the refusal names the features), one of
 * the older model moves there live. Mixed hardware cannot be had on one machine: the restriction is
 * ferry's own (what the host advertises); QEMU's `enforce` refusing a model the host really lacks is
 * tested in host.test.ts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { readJson, writeJson, type NodeConfig } from '../../src/agent/config.ts';
import { killAgent, qemuPidsOf, startAgent } from '../../src/lab/lab.ts';
import { ferry } from '../helpers/cli.ts';
import { useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface CpuView {
  hosts: Array<{ name: string; restriction?: string; lacksClusterModel?: string[] }>;
  best: { name: string; level: number } | null;
  clusterModel: { model: string } | null;
  default: { model: string };
}

describe('CPU models (3-host lab, one host made older)', () => {
  const suite = useLab('cpu');
  const cli = suite.cli;
  const boots = new Map<string, { ip: string; boot: string }>();
  let clusterModel = '';

  const create = async (name: string, host: string, ...extra: string[]) => {
    const created = await cli('vm', 'create', name, '--memory', '128', '--host', host, ...extra);
    assert.equal(created.code, 0, created.stderr);
    const ip = created.json.ip as string;
    boots.set(name, { ip, boot: (await suite.probe.gamesrv(ip)).boot });
    return created.json;
  };
  /** The guest answers from the same boot, from one QEMU; where it runs. */
  const sameGuest = async (name: string): Promise<string> => {
    const { ip, boot } = boots.get(name)!;
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, `${name} answers from the same boot`);
    assert.equal((await qemuPidsOf(name)).length, 1, `one QEMU runs ${name}`);
    return (await cli('vm', 'show', name)).json.owner as string;
  };

  it('the best model every host runs becomes the cluster model, and new VMs get it', async () => {
    const view = (await cli('cluster', 'cpu')).json as CpuView;
    assert.ok(view.best, 'some model runs everywhere');
    assert.ok(view.best.level >= 2, `a model of x86-64-v2 or better (${view.best.name})`);
    assert.equal(view.clusterModel, null);
    assert.equal(view.default.model, view.best.name, 'before one is set, new VMs get the best common model');
    const set = await cli('cluster', 'cpu', 'set', 'best');
    assert.equal(set.code, 0, set.stderr);
    clusterModel = set.json.clusterModel.model;
    assert.equal(clusterModel, view.best.name);
    const vm = await create('n1', 'h1');
    assert.equal(vm.spec.cpuModel, clusterModel);
    const job = ((await cli('job', 'list')).json as Array<{ kind: string; vm: string; log: string[] }>).find((j) => j.kind === 'create' && j.vm === 'n1');
    assert.ok(job?.log.some((l) => l.includes(`CPU model ${clusterModel}: the cluster's CPU model`)), job?.log.join('\n'));
  });

  it('a host that joins with an older CPU is flagged, with the features it lacks; the best common model drops to what it runs', async () => {
    const h3 = suite.lab.hosts.find((h) => h.name === 'h3')!;
    const node = await readJson<NodeConfig>(h3.config, 'node configuration');
    await killAgent(suite.lab, 'h3');
    await writeJson(h3.config, { ...node, cpu: { maxModel: 'Westmere-v1' } });
    await startAgent(suite.lab, 'h3');
    let flagged: string[] = [];
    for (let i = 0; i < 40 && !flagged.length; i++, await sleep(250))
      flagged = ((await cli('node', 'list')).json.hosts as Array<{ name: string; cpu?: { lacksClusterModel?: string[] } }>).find((h) => h.name === 'h3')?.cpu?.lacksClusterModel ?? [];
    assert.ok(flagged.includes('avx2') && flagged.includes('fma'), `h3 lacks the newer features: ${flagged.join(',')}`);
    const list = await ferry(suite.env, 'node', 'list'); // as a person reads it
    assert.match(list.stdout, /h3 .*LACKS \d+ of /);
    assert.match(list.stderr, new RegExp(`warning: h3 lacks .*avx2.* of the cluster's CPU model ${clusterModel}: VMs of that model are not placed there`));
    const said = new RegExp(`at most Westmere-v1.*warning: h3 lacks .*avx2.* of the cluster's CPU model ${clusterModel}`);
    let log = '';
    for (let i = 0; i < 40 && !said.test(log); i++, await sleep(250)) log = await readFile(path.join(suite.dir, 'hosts', 'h3', 'agent.log'), 'utf8');
    assert.match(log, said, 'said when it joins');
    const view = (await cli('cluster', 'cpu')).json as CpuView;
    assert.equal(view.best?.name, 'Westmere-v1', 'the best common model drops to what h3 runs');
    assert.equal(view.hosts.find((h) => h.name === 'h3')?.restriction, 'at most Westmere-v1');
  });

  it('a VM of the cluster model is not migrated, created or drained onto it (the features named); one of the older model moves there live', async () => {
    const refused = await cli('vm', 'migrate', 'n1', '--to', 'h3');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, new RegExp(`h3 cannot run its CPU model ${clusterModel}: it lacks .*avx2.*\\(hidden by its restriction: at most Westmere-v1\\)`));
    assert.equal(await sameGuest('n1'), 'h1', 'a refused migration leaves the VM where it was');

    const candidates = (await cli('vm', 'migrate', 'n1', '--dry-run')).json as { hosts: Array<{ host: string; ok: boolean; reasons: string[] }> };
    const by = new Map(candidates.hosts.map((h) => [h.host, h]));
    assert.equal(by.get('h2')?.ok, true);
    assert.equal(by.get('h3')?.ok, false);
    assert.match(by.get('h3')!.reasons.join(';'), /lacks .*avx2/);
    assert.match(by.get('h1')!.reasons.join(';'), /runs there now/);

    const placed = await cli('vm', 'create', 'n2', '--memory', '128', '--host', 'h3');
    assert.notEqual(placed.code, 0);
    assert.match(placed.stderr, /'n2' cannot run there: h3 cannot run its CPU model .*it lacks .*avx2.*; choose another host or --cpu model/);
    assert.notEqual((await cli('vm', 'show', 'n2')).code, 0, 'nothing made');

    const plan = (await cli('node', 'drain', 'h1', '--dry-run', '--to', 'h3')).json.plan as Array<{ vm: string; to: string; progress: { state: string; reason?: string } }>;
    assert.equal(plan.find((i) => i.vm === 'n1')?.progress.state, 'blocked');
    assert.match(plan.find((i) => i.vm === 'n1')!.progress.reason!, /h3 cannot run its CPU model .*avx2/);

    await create('w1', 'h1', '--cpu', 'Westmere-v1');
    const moved = await cli('vm', 'migrate', 'w1', '--to', 'h3', '--no-probe');
    assert.equal(moved.code, 0, moved.stderr);
    assert.equal(await sameGuest('w1'), 'h3', 'moved live: same boot');
  });

  it('a model no host can give (AVX-512 under TCG) is refused with the features named; host/max only with --cpu-passthrough', async () => {
    const wide = await cli('vm', 'create', 's1', '--memory', '128', '--cpu', 'Skylake-Server-v4');
    assert.notEqual(wide.code, 0);
    assert.match(wide.stderr, /no host runs CPU model Skylake-Server-v4: h1 cannot run .*avx512f/);
    const max = await cli('vm', 'create', 'p1', '--memory', '128', '--cpu', 'max', '--host', 'h1');
    assert.notEqual(max.code, 0);
    assert.match(max.stderr, /--cpu-passthrough/);
  });
});
