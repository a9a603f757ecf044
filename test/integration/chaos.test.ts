/**
 * Faults during live migrations, in a 3-host etcd lab with real QEMU guests: the failures the
 * campaign found, each replayed on purpose (named after its fault), then the short campaign itself
 * (the long one: `npm run chaos -- --faults 100`) — real faults (SIGKILL, SIGSTOP, blackhole routes,
 * a token bucket on the uplink, a full filesystem, etcd members killed), judged by the checker, which
 * reads the machine (processes per namespace, taps, sockets, pool files) and the guests, not the
 * agents. A fixed seed, so a failure replays with the command the report prints.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { printChaos } from '../../bench/chaos.ts';
import { AgentClient } from '../../src/agent/client.ts';
import { loadIdentity } from '../../src/cluster/pki.ts';
import type { Job } from '../../src/cluster/model.ts';
import { LabAdmin } from '../../src/lab/chaos.ts';
import { checkLab, qemuProcesses, settle, type CampaignVm, type GuestBaseline } from '../../src/lab/checker.ts';
import { cutLink } from '../../src/lab/lab-faults.ts';
import { killAgent, labContext, startAgent } from '../../src/lab/lab.ts';
import { FAULT_KIND_NAMES, prepareCampaignVms, runMigrationCampaign } from '../../src/lab/migration-campaign.ts';
import { useLab } from '../helpers/lab.ts';

const SEED = 16;
const FAULTS = 15;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('faults during live migrations (3-host etcd lab)', () => {
  const suite = useLab('chaos', ['--store', 'etcd']);
  let admin: LabAdmin;
  let vms: CampaignVm[];

  before(async () => {
    admin = await LabAdmin.open(suite.lab);
    vms = await prepareCampaignVms(suite.lab, admin, () => undefined);
  });

  /** What every guest shows now, for the checker to compare with afterwards. */
  const baselines = async () => {
    const all = new Map<string, GuestBaseline>();
    for (const v of vms) all.set(v.name, { boot: (await suite.probe.gamesrv(v.ip)).boot, ...(v.kind === 'ram' ? {} : { diskSeq: (await suite.probe.diskcheckStats(v.ip)).seq }) });
    return all;
  };

  /** Starts a slow migration (4 MiB/s: ~30 s for 128 MiB) of `name` and waits until its destination QEMU runs. */
  const slowMigration = async (name: string) => {
    const { owner: from, token } = await admin.vm(name);
    const to = suite.lab.hosts.map((h) => h.name).find((h) => h !== from)!;
    const identity = await loadIdentity(path.join(suite.dir, 'admin'));
    const source = new AgentClient(labContext(suite.lab).agents.find((a) => a.name === from)!, identity);
    const { job } = await source.call<{ job: Job }>('POST', `/v1/vms/${name}/migrate`, { to, token, params: { maxBandwidth: 4 * 2 ** 20 } });
    for (let i = 0; i < 100 && (await admin.call<{ job: Job }>('GET', `/v1/jobs/${job.id}`)).job.progress?.phase !== 'perform'; i++) await sleep(100);
    const incoming = (await qemuProcesses(suite.lab)).find((p) => p.vm === name && p.host === to);
    assert.ok(incoming, `the destination QEMU of ${name} runs on ${to}`);
    return { from, to, jobId: job.id, incoming };
  };

  const jobEnds = async (id: string) => {
    for (let i = 0; i < 240; i++) {
      const { job } = await admin.call<{ job: Job }>('GET', `/v1/jobs/${id}`);
      if (job.state !== 'running') return job;
      await sleep(250);
    }
    assert.fail(`job ${id} still running after 60 s`);
  };

  const assertNothingFound = async (before: Map<string, GuestBaseline>) => {
    assert.ok(await settle(suite.lab, admin, suite.probe, vms, 120_000), 'the lab settles: every VM runs once and answers, no job runs');
    const { findings, verdicts } = await checkLab(suite.lab, admin, suite.probe, vms, before, new Set());
    assert.deepEqual(findings, []);
    assert.ok(verdicts.every((v) => v.sameBoot), 'every guest answers from the boot it had');
  };

  it("regression kill-destination-agent at perform: the destination's QEMU ends while its agent is down, and the agent that comes back removes its tap and its half copy of the local disk", async () => {
    const before = await baselines();
    const { from, to, jobId, incoming } = await slowMigration('c-local');
    await killAgent(suite.lab, to);
    try {
      // While no agent watches, the destination QEMU ends (here: killed; in the campaign its stream broke).
      process.kill(incoming.pid, 'SIGKILL');
      const job = await jobEnds(jobId);
      assert.equal(job.state, 'failed', 'the source gives up on a destination it cannot reach');
    } finally {
      await startAgent(suite.lab, to);
    }
    assert.equal((await admin.vm('c-local')).owner, from);
    await assertNothingFound(before);
  });

  it("regression cut-link at perform: the source's cancel does not hang on the dead stream (QEMU's yank), the VM rolls back, and the destination its source could not reach removes itself", async () => {
    const before = await baselines();
    const { from, to, jobId, incoming } = await slowMigration('c-ram');
    const restore = await cutLink(suite.lab, from, to);
    let pending = false;
    try {
      const job = await jobEnds(jobId);
      assert.equal(job.state, 'failed');
      // QEMU may not end a stream stuck on the cut link (neither cancel nor yank ends a TLS handshake
      // that gets no answer): then the rollback is pending, never the VM given up for lost.
      assert.match(job.error ?? '', /still running on the source|rollback is not complete .* guest keeps running/, 'a rollback, not a source given up for lost');
      pending = /rollback is not complete/.test(job.error ?? '');
    } finally {
      await restore();
    }
    if (pending) {
      const log = path.join(suite.dir, 'hosts', from, 'agent.log');
      for (let i = 0; i < 120 && !(await readFile(log, 'utf8')).includes('rollback of c-ram finished'); i++) await sleep(500);
      assert.match(await readFile(log, 'utf8'), /rollback of c-ram finished/, 'the pending rollback finishes once the link is back');
    }
    // Nobody asks it: the destination notices by itself that its migration is gone.
    for (let i = 0; i < 40 && (await qemuProcesses(suite.lab)).some((p) => p.pid === incoming.pid); i++) await sleep(500);
    assert.ok(!(await qemuProcesses(suite.lab)).some((p) => p.pid === incoming.pid), 'the orphaned destination QEMU is gone within 20 s of the link coming back');
    assert.equal((await admin.vm('c-ram')).owner, from);
    await assertNothingFound(before);
  });

  it('regression kill-source-agent at perform: an agent restarted while its migration stream is stuck on a cut link comes back before its watchdog fences the host (no guest there restarted), and the migration rolls back', async () => {
    const before = await baselines();
    const { from, to, jobId } = await slowMigration('c-ram');
    const restore = await cutLink(suite.lab, from, to);
    try {
      await killAgent(suite.lab, from);
      // Its reconcile meets a source whose stream cannot end: it must not wait on it (the lease and the
      // watchdog's pets start only after reconcile), or the watchdog kills every HA guest of the host.
      await startAgent(suite.lab, from);
      const job = await jobEnds(jobId);
      assert.equal(job.state, 'failed');
    } finally {
      await restore();
    }
    assert.equal((await admin.vm('c-ram')).owner, from);
    await assertNothingFound(before);
  });

  it(`the short campaign: ${FAULTS} faults at random moments (seed ${SEED}): no VM lost or run twice, no lost or torn write, nothing left behind`, { timeout: 30 * 60_000 }, async () => {
    const started = Date.now();
    const outcomes = await runMigrationCampaign(suite.lab, suite.probe, vms, { seed: SEED, faults: FAULTS, maxMinutes: 20, kinds: FAULT_KIND_NAMES, log: (line) => console.log(line) });
    const report = printChaos({ seed: SEED, outcomes, minutes: (Date.now() - started) / 60_000 });
    console.log(report);
    assert.equal(outcomes.length, FAULTS, `all ${FAULTS} faults ran:\n${report}`);
    const findings = outcomes.flatMap((o) => o.findings.map((f) => `fault ${o.index} ${o.kind} at ${o.moment}: ${f.what}: ${f.detail}`));
    assert.deepEqual(findings, [], report);
    assert.ok(outcomes.every((o) => o.settled), `every fault settled:\n${report}`);
    // The faults bit (some migrations rolled back, refused or a guest restarted), and VMs still moved.
    assert.ok(outcomes.some((o) => o.migration === 'succeeded'), report);
    assert.ok(outcomes.some((o) => o.migration !== 'succeeded' || o.restarted), report);
  });
});
