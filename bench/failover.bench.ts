/**
 * How long an HA VM is down when its host fails (`npm run bench -- --only failover`), in a 3-host lab
 * with the etcd store (the only one a partition can cut a host from) and a 10 s host lease. A VM on shared storage under HA; `runs` faults of each
 * kind, interleaved, each of the VM's current host (src/lab/chaos.ts): timed from the fault to the
 * guest's first reply from a new boot, every QEMU running it on the machine counted every 100 ms (two
 * at once is a double run), the disk checked for writes lost, torn or foreign; then the host is brought
 * back. Printed beside the documented figures of Proxmox, oVirt, KubeVirt and vSphere (ANCHORS.md),
 * which are their own numbers, not measured here.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { table } from '../src/cli/format.ts';
import { FAULT_TABLE_HEADER, LabAdmin, injectFault, summarizeFaults, type FaultKind, type FaultOutcome } from '../src/lab/chaos.ts';
import { readLab } from '../src/lab/lab.ts';
import { Probe } from '../src/lab/probe.ts';
import { PROJECT_ROOT } from '../src/util/project.ts';

const FERRY = path.join(PROJECT_ROOT, 'bin', 'ferry.mjs');
const KINDS: FaultKind[] = ['kill-host', 'partition', 'freeze-agent', 'freeze-host', 'kill-manager-mid-recovery'];

export async function runFailoverBench(runs = 10): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-failover-'));
  const env = { ...process.env, FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fbf${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '768' };
  const ferry = (...args: string[]) => {
    const r = spawnSync(process.execPath, [FERRY, ...args, '--json'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ferry ${args.join(' ')}: ${r.stderr}`);
  };
  let probe: Probe | undefined;
  const outcomes: FaultOutcome[] = [];
  try {
    ferry('lab', 'up', '--hosts', '3', '--store', 'etcd');
    const lab = (await readLab(dir))!;
    probe = await Probe.start(lab.clientNetns);
    ferry('vm', 'create', 'ha1', '--memory', '128', '--disk', '32M,storage=shared', '--diskcheck', '40', '--host', 'h1');
    ferry('ha', 'add', 'ha1');
    const admin = await LabAdmin.open(lab);
    const ip = (await admin.vm('ha1')).ip!;
    for (let i = 0; i < runs; i++) for (const kind of KINDS) outcomes.push(await injectFault({ lab, probe, admin, vm: 'ha1', ip }, kind, 0));
  } finally {
    await probe?.close();
    // Not spawnSync: agents this process restarted are its children, and only a running event loop
    // reaps them once `lab down` kills them (it waits for them to be gone).
    await new Promise((resolve) => execFile(process.execPath, [FERRY, 'lab', 'down'], { env }, resolve));
    await rm(dir, { recursive: true, force: true });
  }
  console.log(`\nHA failover — fault to the guest's first reply from its new boot (3-host lab, etcd store, lease TTL 10 s, 128 MiB guest on shared storage writing 40 blocks/s, TCG); ${runs} faults of each kind, interleaved`);
  console.log(table(FAULT_TABLE_HEADER, summarizeFaults(outcomes)));
  console.log(
    'anchors (their documented figures, not measured here): Proxmox VE HA: "about 2 minutes" (docs); oVirt: host dead at 140 s (sanlock); KubeVirt: noticed after 5 min, no restart without external fencing; vSphere HA: host failed after 15 s, then the restart',
  );
}
