import type { Job } from '../../cluster/model.ts';
import type { MoveJob } from '../../cluster/moves/records.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { table } from '../format.ts';
import { progressTable, summaryLine } from '../moves.ts';
import type { Command } from '../command.ts';

/** Move jobs (drain, return, balance) are named KIND-HOST-xxxxxxxx; a VM's jobs by date. */
const MOVE_JOB = /^(drain|return|balance)-/;

export const jobCommand: Command = {
  summary: 'long operations and their records: ferry job list|show ID|cancel ID',
  usage: 'Usage: ferry job list [--json] | ferry job show ID [--json] | ferry job cancel ID\n  VM jobs (create, start, stop, migrate, recover, handover) and move jobs (drain, return, balance).',
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { json: { type: 'boolean' }, context: { type: 'string' } } });
    const [verb, id] = positionals;
    const cli = await Cli.load(values.context);
    const agent = await cli.anyAgent();
    if (verb === 'list') {
      const { jobs } = await agent.call<{ jobs: Job[] }>('GET', '/v1/jobs');
      if (values.json) return void console.log(JSON.stringify(jobs, null, 2));
      const { jobs: moves } = await agent.call<{ jobs: MoveJob[] }>('GET', '/v1/moves');
      console.log(table(['job', 'kind', 'vm', 'host', 'state', 'started'], jobs.map((j) => [j.id, j.kind, j.vm, j.host, j.state, j.createdAt])));
      if (moves.length) console.log(`\n${table(['job', 'kind', 'host', 'state', 'VMs', 'started'], moves.map((m) => [m.id, m.kind, m.host ?? '-', m.state, String(m.items.length), m.createdAt]))}`);
    } else if (verb === 'show' && id && MOVE_JOB.test(id)) {
      const { job } = await agent.call<{ job: MoveJob }>('GET', `/v1/moves/${encodeURIComponent(id)}`);
      if (values.json) return void console.log(JSON.stringify(job, null, 2));
      console.log(`${summaryLine(job)}\n${progressTable(job)}`);
    } else if (verb === 'show' && id) {
      const { job } = await agent.call<{ job: Job }>('GET', `/v1/jobs/${encodeURIComponent(id)}`);
      if (values.json) return void console.log(JSON.stringify(job, null, 2));
      console.log(`job ${job.id}: ${job.kind} ${job.vm} on ${job.host}: ${job.state}${job.error ? ` — ${job.error}` : ''}`);
      for (const line of job.log) console.log(`  ${line}`);
      if (job.result) console.log(JSON.stringify(job.result, null, 2));
    } else if (verb === 'cancel' && id && MOVE_JOB.test(id)) {
      const { job } = await agent.call<{ job: MoveJob }>('POST', `/v1/moves/${encodeURIComponent(id)}/cancel`, {});
      if (values.json) console.log(JSON.stringify({ cancelled: true, job }));
      else console.log(`cancelling ${job.kind} ${id}: the migrations under way roll back, the VMs moved already stay where they are`);
    } else if (verb === 'cancel' && id) {
      const { job } = await agent.call<{ job: Job }>('GET', `/v1/jobs/${encodeURIComponent(id)}`);
      const { cancelled } = await cli.agent(job.host).call<{ cancelled: boolean }>('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`, {});
      if (values.json) console.log(JSON.stringify({ cancelled }));
      else console.log(cancelled ? `cancelling job ${id}` : `job ${id} is not running`);
    } else throw new UsageError('usage: ferry job list | show ID | cancel ID');
  },
};
