/** How the CLI shows a move job (drain, return, balance): the plan before, progress while, the outcome after. */
import type { AgentClient } from '../agent/client.ts';
import type { MoveItem, MoveJob } from '../cluster/moves/records.ts';
import { table } from './format.ts';

/** Per VM: where it goes and why, or what blocks it. */
export function planTable(items: MoveItem[]): string {
  if (!items.length) return 'no VM to move';
  const bases = [...new Set(items.flatMap((i) => (i.predicted ? [`${i.vm}: ${i.predicted.basis}`] : [])))];
  const expected = items.some((i) => i.predicted)
    ? `\nexpected times (shortest first), from: ${bases.join('; ')}`
    : '\n(no expected times: the cluster has no completed migration to learn from yet; ordered by memory)';
  return (
    table(
      ['vm', 'memory', 'from', 'to', 'expected', 'why / what blocks it'],
      items.map((i) => [i.vm, `${i.memoryMiB} MiB`, i.from, i.to || '-', i.predicted ? `${i.predicted.seconds} s` : '-', i.progress.state === 'blocked' ? `BLOCKED: ${i.progress.reason}` : i.why]),
    ) + expected
  );
}

/** Per VM: where it is in the job. */
export function progressTable(job: MoveJob): string {
  return table(
    ['vm', 'from', 'to', 'state', 'detail'],
    job.items.map((i) => [i.vm, i.from, i.to || '-', i.progress.state, detail(i)]),
  );
}

function detail(item: MoveItem): string {
  const p = item.progress;
  switch (p.state) {
    case 'waiting':
      return '';
    case 'starting':
      return `asked at ${p.since.slice(11, 19)}`;
    case 'migrating':
      return `job ${p.jobId} since ${p.startedAt.slice(11, 19)}`;
    case 'moved':
      return p.jobId ? `in ${p.seconds} s (job ${p.jobId})` : 'was there already';
    case 'blocked':
    case 'failed':
      return p.reason;
    case 'elsewhere':
      return `left by other means: it is on ${p.owner}`;
  }
}

/**
 * One line for the whole job: VMs done and left, memory left, and an ETA from the job's pace so far
 * (guest memory moved per second since it began, whatever ran in parallel); none moved yet: no ETA,
 * not a guess.
 */
export function summaryLine(job: MoveJob, now = Date.now()): string {
  const count = (state: MoveItem['progress']['state']) => job.items.filter((i) => i.progress.state === state).length;
  const left = job.items.filter((i) => ['waiting', 'starting', 'migrating'].includes(i.progress.state));
  const movedMiB = job.items.filter((i) => i.progress.state === 'moved' && i.progress.jobId).reduce((sum, i) => sum + i.memoryMiB, 0);
  const leftMiB = left.reduce((sum, i) => sum + i.memoryMiB, 0);
  const elapsedS = (now - Date.parse(job.createdAt)) / 1000;
  const eta = left.length && movedMiB > 0 && elapsedS > 0 ? `; ETA ${Math.round(leftMiB / (movedMiB / elapsedS))} s (at the ${Math.round(movedMiB / elapsedS)} MiB/s of guest memory moved so far)` : '';
  const blockedOrFailed = count('blocked') + count('failed');
  return `${job.kind} ${job.id}: ${job.state}; ${count('moved')} of ${job.items.length} moved, ${count('migrating')} migrating, ${count('waiting')} waiting${blockedOrFailed ? `, ${blockedOrFailed} not moving` : ''}; ${leftMiB} MiB of guest memory left${eta}`;
}

/** Follows a job until it ends, a line for each VM that changes and the summary; the job at its end. */
export async function followJob(agent: AgentClient, id: string, print: (line: string) => void): Promise<MoveJob> {
  const seen = new Map<string, string>();
  let lastSummary = '';
  for (;;) {
    const { job } = await agent.call<{ job: MoveJob }>('GET', `/v1/moves/${id}`);
    for (const item of job.items) {
      const now = `${item.progress.state} ${detail(item)}`;
      if (seen.get(item.vm) !== now && (seen.has(item.vm) || item.progress.state !== 'waiting')) print(`  ${item.vm}: ${item.progress.state}${detail(item) ? ` — ${detail(item)}` : ''}`);
      seen.set(item.vm, now);
    }
    const summary = summaryLine(job);
    if (summary !== lastSummary) print(summary);
    lastSummary = summary;
    if (job.state === 'done' || job.state === 'cancelled') return job;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The VMs a job did not move, for the exit: none means success (one that left by other means is not a failure). */
export function notMoved(job: MoveJob): MoveItem[] {
  return job.items.filter((i) => i.progress.state !== 'moved' && i.progress.state !== 'elsewhere');
}
