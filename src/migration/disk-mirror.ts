/**
 * The source's half of copying disks during a live migration: one QEMU block
 * job per disk mirrors it into the destination's NBD export. Active mode
 * (`write-blocking`): once the job is ready, every guest write completes only
 * when both copies have it, so the copy converges however fast the guest
 * writes. At QEMU's pre-switchover pause the jobs are completed without a
 * pivot: the destination's copy is then identical and the source's untouched.
 */
import type { QmpClient } from '../qemu/qmp.ts';
import { QmpCommandError } from '../qemu/errors.ts';
import type { DiskProgress, NbdTargets } from './sides.ts';

const JOB_PREFIX = 'ferry-mirror-';
const MIRROR_BUFFER_BYTES = 64 * 2 ** 20;
/**
 * How long completing in-sync mirrors may take in the pause (it takes a few ms): beyond it the
 * destination is unreachable, and the migration is cancelled rather than the guest kept paused.
 */
const COMPLETION_BUDGET_MS = 10_000;

interface BlockJobInfo {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready: boolean;
  status: string;
  error?: string;
}

export function mirrorJobId(diskId: string): string {
  return `${JOB_PREFIX}${diskId}`;
}

/** Connects an NBD client node per disk to the destination's exports and starts the mirror jobs. */
export async function startMirrors(qmp: QmpClient, targets: NbdTargets, tlsObject: string | undefined, speed?: number): Promise<void> {
  for (const diskId of targets.disks) {
    const node = mirrorJobId(diskId);
    const server = targets.server.type === 'unix' ? { type: 'unix', path: targets.server.path } : { type: 'inet', host: targets.server.host, port: String(targets.server.port) };
    await qmp.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': node,
      server,
      export: diskId,
      ...(tlsObject ? { 'tls-creds': tlsObject, ...(targets.tlsHostname ? { 'tls-hostname': targets.tlsHostname } : {}) } : {}),
    });
    await qmp.execute('blockdev-mirror', {
      'job-id': node,
      device: diskId,
      target: node,
      sync: 'full',
      'copy-mode': 'write-blocking',
      // Keep a failed job around so its error can be read (query-block-jobs), then dismiss it.
      'auto-dismiss': false,
      ...(speed ? { speed } : {}),
      // 64 MiB of copy buffer instead of QEMU's default: the 1 GiB disk benchmark went from 2.6-2.9 s to 2.3-2.4 s.
      'buf-size': MIRROR_BUFFER_BYTES,
    });
  }
}

async function mirrorJobs(qmp: QmpClient): Promise<BlockJobInfo[]> {
  return (await qmp.execute<BlockJobInfo[]>('query-block-jobs')).filter((j) => j.device.startsWith(JOB_PREFIX));
}

export async function mirrorProgress(qmp: QmpClient, diskIds: readonly string[]): Promise<DiskProgress> {
  const jobs = await mirrorJobs(qmp);
  let totalBytes = 0;
  let copiedBytes = 0;
  let ready = diskIds.length > 0;
  for (const id of diskIds) {
    const job = jobs.find((j) => j.device === mirrorJobId(id));
    if (!job) throw new Error(`the mirror job of ${id} has vanished`);
    if (job.error || job.status === 'concluded' || job.status === 'aborting')
      throw new Error(`the mirror of ${id} failed: ${job.error ?? job.status}`);
    totalBytes += job.len;
    copiedBytes += job.offset;
    ready &&= job.ready;
  }
  return { totalBytes, copiedBytes, ready };
}

/**
 * Completes ready jobs without pivoting (block-job-cancel of a ready mirror
 * waits until the target is in sync). Called with the guest paused, so nothing
 * is written meanwhile; this is part of the guest's downtime, hence events
 * rather than polling. The caller then drops the NBD client nodes (dropTargets).
 */
export async function completeMirrors(qmp: QmpClient, diskIds: readonly string[]): Promise<void> {
  const jobIds = diskIds.map(mirrorJobId);
  // Cancelling a job that is not in sync would abort it and leave the destination's copy incomplete.
  const jobs = await mirrorJobs(qmp);
  for (const id of jobIds) {
    const job = jobs.find((j) => j.device === id);
    if (!job || !job.ready || job.status !== 'ready') throw new Error(`the mirror ${id} is ${job ? `${job.status}${job.error ? ` (${job.error})` : ''}` : 'gone'}, not in sync, at switchover`);
  }
  const pending = new Set(jobIds);
  const concluded = new Promise<void>((resolve) => {
    const onEvent = (e: { event: string; data: Record<string, unknown> }) => {
      if (e.event !== 'JOB_STATUS_CHANGE' || e.data['status'] !== 'concluded') return;
      pending.delete(String(e.data['id']));
      if (pending.size === 0) {
        qmp.off('event', onEvent);
        resolve();
      }
    };
    qmp.on('event', onEvent);
  });
  for (const id of jobIds) await qmp.execute('block-job-cancel', { device: id });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`mirror jobs ${[...pending].join(', ')} did not conclude within ${COMPLETION_BUDGET_MS / 1000} s of completion`)), COMPLETION_BUDGET_MS);
  });
  try {
    await Promise.race([concluded, timeout]);
  } finally {
    clearTimeout(timer);
  }
  await waitConcluded(qmp, diskIds, (job) => {
    if (job.error) throw new Error(`the mirror of ${job.device.slice(JOB_PREFIX.length)} failed at completion: ${job.error}`);
  });
}

/** Job states in which a job still runs and can be cancelled. */
const LIVE = new Set(['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending']);

/**
 * Rollback, and tidying before a new mirror or after an agent restart: removes
 * every ferry mirror job and NBD client node QEMU has, from QEMU's own view
 * rather than from what this process remembers. The source's volumes are only
 * read by the jobs, so they stay as they were.
 */
export async function removeAllMirrors(qmp: QmpClient): Promise<void> {
  const jobs = await mirrorJobs(qmp);
  const nodes = (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).map((n) => n['node-name']).filter((n) => n.startsWith(JOB_PREFIX));
  if (!jobs.length && !nodes.length) return;
  if (jobs.some((j) => LIVE.has(j.status))) {
    // A partitioned NBD connection holds its in-flight requests (and in write-blocking mode the
    // guest's writes) until TCP gives up; yanking fails them at once so the cancel can finish.
    for (const node of nodes) await qmp.execute('yank', { instances: [{ type: 'block-node', 'node-name': node }] }).catch(() => undefined);
    for (const job of jobs.filter((j) => LIVE.has(j.status))) await qmp.execute('block-job-cancel', { device: job.device, force: true }).catch(() => undefined);
  }
  const deadline = Date.now() + 30_000;
  for (;;) {
    const left = (await mirrorJobs(qmp)).filter((j) => j.status !== 'concluded' && j.status !== 'null');
    if (!left.length) break;
    if (Date.now() > deadline) throw new Error(`mirror jobs still ${left.map((j) => `${j.device}: ${j.status}`).join(', ')} 30 s after being cancelled`);
    await new Promise((r) => setTimeout(r, 10));
  }
  for (const job of await mirrorJobs(qmp)) await qmp.execute('job-dismiss', { id: job.device }).catch(() => undefined);
  for (const node of nodes) await qmp.execute('blockdev-del', { 'node-name': node }).catch(ignoreMissing);
}

/** Waits until the named jobs have concluded, checks each, and dismisses them. */
async function waitConcluded(qmp: QmpClient, diskIds: readonly string[], check: (job: BlockJobInfo) => void): Promise<void> {
  const deadline = Date.now() + COMPLETION_BUDGET_MS;
  for (;;) {
    const jobs = (await mirrorJobs(qmp)).filter((j) => diskIds.includes(j.device.slice(JOB_PREFIX.length)));
    const vanished = diskIds.filter((id) => !jobs.some((j) => j.device === mirrorJobId(id)));
    if (vanished.length) throw new Error(`the mirror job of ${vanished.join(', ')} vanished before it was completed`);
    const pending = jobs.filter((j) => j.status !== 'concluded' && j.status !== 'null');
    if (pending.length === 0) {
      for (const job of jobs) {
        check(job);
        await qmp.execute('job-dismiss', { id: job.device }).catch(ignoreMissing);
      }
      return;
    }
    if (Date.now() > deadline) throw new Error(`mirror jobs still ${pending.map((j) => `${j.device}: ${j.status}`).join(', ')} ${COMPLETION_BUDGET_MS / 1000} s after completion`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Removes the NBD client nodes of finished mirrors. */
export async function dropTargets(qmp: QmpClient, diskIds: readonly string[]): Promise<void> {
  for (const id of diskIds) await qmp.execute('blockdev-del', { 'node-name': mirrorJobId(id) }).catch(ignoreMissing);
}

function ignoreMissing(err: unknown): void {
  if (err instanceof QmpCommandError && /not found|No node|does not exist|No active block job|Cannot find/i.test(err.description)) return;
  throw err;
}
