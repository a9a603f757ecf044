/**
 * Post-copy between two hosts of a lab when the network between them fails after the switch: the
 * guest already runs on the destination, the source holds the pages it has not pulled yet. The
 * link between h1 and h2 is cut (blackhole routes both ways: the migration stream and the agents'
 * requests to each other hang) and restored 6 s later; ferry must break the hung stream off, reach
 * the destination's agent again, and finish with QEMU's postcopy recovery — the guest's memory
 * intact, the same boot, running on h2.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { run } from '../../src/util/exec.ts';
import { useLab } from '../helpers/lab.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('post-copy between hosts survives a cut link (3-host lab, sqlite store)', () => {
  const lab = useLab('pc');

  it('a busy guest switched to post-copy, the link cut and restored: the migration completes and the guest verifies', async (t) => {
    const created = await lab.cli('vm', 'create', 'pc1', '--memory', '256', '--memcheck', '48', '--dirty', '48', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const ip: string = created.json.ip;
    const boot = (await lab.probe.gamesrv(ip, 30_000)).boot;
    const host = (name: string) => lab.lab.hosts.find((h) => h.name === name)!;
    const [h1, h2] = [host('h1'), host('h2')];
    const blackhole = (verb: 'add' | 'del') =>
      Promise.all([
        run('ip', ['-n', h1.netns, 'route', verb, 'blackhole', `${h2.address}/32`]),
        run('ip', ['-n', h2.netns, 'route', verb, 'blackhole', `${h1.address}/32`]),
      ]);

    const migration = lab.cli('vm', 'migrate', 'pc1', '--to', 'h2', '--policy', 'must-finish', '--allow-postcopy', '--bandwidth', '16', '--no-probe');
    // Wait for the switch to post-copy in the job's log, then cut.
    let jobId: string | undefined;
    for (let i = 0; i < 600; i++) {
      await sleep(200);
      const jobs = (await lab.cli('job', 'list')).json as { id: string; kind: string; vm: string; state: string }[] | undefined;
      jobId ??= jobs?.find((j) => j.kind === 'migrate' && j.vm === 'pc1')?.id;
      if (!jobId) continue;
      const job = (await lab.cli('job', 'show', jobId)).json as { state: string; log: string[] };
      if (job.state !== 'running') break;
      if (job.log.some((l) => /switched over/.test(l))) {
        await blackhole('add');
        break;
      }
    }
    assert.ok(jobId, 'the migration job was not found');
    await sleep(6000);
    await blackhole('del');
    const result = await migration;
    const job = (await lab.cli('job', 'show', jobId)).json as { state: string; log: string[]; result?: { postcopy: boolean } };
    t.diagnostic(job.log.filter((l) => /post-copy/.test(l)).join(' | '));
    assert.equal(result.code, 0, `${result.stderr}\n${job.log.join('\n')}`);
    assert.equal(result.json.status, 'completed');
    assert.equal(job.result?.postcopy, true, 'the migration switched to post-copy');
    assert.ok(job.log.some((l) => /post-copy link lost/.test(l)), job.log.join('\n'));
    assert.ok(job.log.some((l) => /post-copy resumed/.test(l)), job.log.join('\n'));
    assert.equal((await lab.probe.gamesrv(ip, 30_000)).boot, boot, 'the guest restarted');
    const verdict = await lab.probe.memcheckVerify(ip, 60_000);
    assert.equal(verdict.mismatches, 0, `memcheck found ${verdict.mismatches} bad pages`);
    const vm = (await lab.cli('vm', 'show', 'pc1')).json as { owner: string };
    assert.equal(vm.owner, 'h2');
  });
});
