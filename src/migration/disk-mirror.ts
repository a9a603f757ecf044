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
    timer = setTimeout(() => reject(new Error(`mirror jobs ${[...pending].join(', ')} did not conclude within 60 s of completion`)), 60_000);
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

/** Rollback: stop the jobs at once (the destination's copy is thrown away) and drop the NBD client nodes. */
export async function cancelMirrors(qmp: QmpClient, diskIds: readonly string[]): Promise<void> {
  for (const id of diskIds) {
    await qmp.execute('block-job-cancel', { device: mirrorJobId(id), force: true }).catch(ignoreMissing);
  }
  await waitConcluded(qmp, diskIds, () => undefined);
  await dropTargets(qmp, diskIds);
}

async function waitConcluded(qmp: QmpClient, diskIds: readonly string[], check: (job: BlockJobInfo) => void): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const jobs = (await mirrorJobs(qmp)).filter((j) => diskIds.includes(j.device.slice(JOB_PREFIX.length)));
    const pending = jobs.filter((j) => j.status !== 'concluded' && j.status !== 'null');
    if (pending.length === 0) {
      for (const job of jobs) {
        check(job);
        await qmp.execute('job-dismiss', { id: job.device }).catch(ignoreMissing);
      }
      return;
    }
    if (Date.now() > deadline) throw new Error(`mirror jobs still ${pending.map((j) => `${j.device}: ${j.status}`).join(', ')} after 60 s`);
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
