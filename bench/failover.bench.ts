/**
 * How long an HA VM is down when its host fails (`npm run bench -- --only failover`), in a 3-host lab
 * with the SQLite store and a 10 s host lease. A VM on shared storage under HA; per fault kind,
 * `runs` faults of its current host, each timed from the fault to the guest's first reply from a new
 * boot (the probe asks it every 100 ms), while every QEMU running it on the machine is counted every
 * 100 ms (two at once is a double run). The host is then brought back and the next fault waits until
 * it is in the cluster again. Printed beside the documented figures of Proxmox, oVirt, KubeVirt and
 * vSphere (ANCHORS.md), which are their own numbers, not measured here.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { median, table } from '../src/cli/format.ts';
import { readLab, startAgent, type LabRecord } from '../src/lab/lab.ts';
import { Probe } from '../src/lab/probe.ts';
import { run } from '../src/util/exec.ts';
import { PROJECT_ROOT } from '../src/util/project.ts';

const FERRY = path.join(PROJECT_ROOT, 'bin', 'ferry.mjs');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type FaultKind = 'kill' | 'freeze-agent' | 'freeze-host';
const KINDS: Array<{ kind: FaultKind; what: string }> = [
  { kind: 'kill', what: 'every process of the host SIGKILLed (agent, QEMU)' },
  { kind: 'freeze-agent', what: 'the agent frozen (SIGSTOP); its QEMU runs on until the watchdog acts' },
  { kind: 'freeze-host', what: 'agent and QEMU frozen, thawed after the VM runs elsewhere' },
];

interface FaultResult {
  ms: number | null;
  doubleRun: boolean;
  error?: string;
}

async function qemuPids(vm: string): Promise<string[]> {
  return (await run('pgrep', ['-f', `qemu-system-x86_64 -name guest=${vm},`]).catch(() => '')).split('\n').filter(Boolean);
}

export async function runFailoverBench(runs = 10): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-bench-failover-'));
  const env = { ...process.env, FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fbf${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '768' };
  const ferry = (...args: string[]) => {
    const r = spawnSync(process.execPath, [FERRY, ...args, '--json'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ferry ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout || '{}');
  };
  let probe: Probe | undefined;
  const results = new Map<FaultKind, FaultResult[]>(KINDS.map((k) => [k.kind, []]));
  try {
    ferry('lab', 'up', '--hosts', '3');
    const lab = (await readLab(dir))!;
    probe = await Probe.start(lab.clientNetns);
    ferry('vm', 'create', 'ha1', '--memory', '128', '--disk', '32M,storage=shared', '--host', 'h1');
    ferry('ha', 'add', 'ha1');
    const ip = ferry('vm', 'show', 'ha1').ip as string;
    for (let i = 0; i < runs; i++) {
      for (const { kind } of KINDS) results.get(kind)!.push(await oneFault(lab, probe, ferry, ip, kind));
    }
  } finally {
    await probe?.close();
    // Not spawnSync: agents this process restarted are its children, and only a running event loop
    // reaps them once `lab down` kills them (it waits for them to be gone).
    await new Promise((resolve) => execFile(process.execPath, [FERRY, 'lab', 'down'], { env }, resolve));
    await rm(dir, { recursive: true, force: true });
  }
  const anchors = 'Proxmox VE HA: "about 2 minutes" (docs); oVirt: host dead at 140 s (sanlock); KubeVirt: noticed after 5 min, no restart without external fencing; vSphere HA: host failed after 15 s, then the restart';
  console.log(`\nHA failover — fault to the guest's first reply from its new boot on another host (3-host lab, SQLite store, lease TTL 10 s, 128 MiB guest on shared storage, TCG); ${runs} faults of each kind, interleaved`);
  console.log(
    table(
      ['fault', 'faults', 'recovered', 'p50', 'worst', 'double runs', 'failed'],
      KINDS.map(({ kind, what }) => {
        const rs = results.get(kind)!;
        const times = rs.map((r) => r.ms).filter((ms): ms is number => ms !== null);
        return [
          what,
          String(rs.length),
          String(times.length),
          times.length ? `${(median(times) / 1000).toFixed(1)} s` : '-',
          times.length ? `${(Math.max(...times) / 1000).toFixed(1)} s` : '-',
          String(rs.filter((r) => r.doubleRun).length),
          rs.filter((r) => r.error).map((r) => r.error).join('; ') || '0',
        ];
      }),
    ),
  );
  console.log(`anchors (their documented figures, not measured here): ${anchors}`);
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- `ferry … --json` answers vary by command
type Ferry = (...args: string[]) => any;

async function oneFault(lab: LabRecord, probe: Probe, ferry: Ferry, ip: string, kind: FaultKind): Promise<FaultResult> {
  const owner = ferry('vm', 'show', 'ha1').owner as string;
  const host = lab.hosts.find((h) => h.name === owner)!;
  const before = await probe.gamesrv(ip, 5000);
  const [qemu] = await qemuPids('ha1');
  const qemuPid = Number(qemu);
  const fault = Date.now();
  if (kind === 'kill') {
    process.kill(host.pid!, 'SIGKILL');
    process.kill(qemuPid, 'SIGKILL');
  } else {
    process.kill(host.pid!, 'SIGSTOP');
    if (kind === 'freeze-host') process.kill(qemuPid, 'SIGSTOP');
  }
  let most = 0;
  let done = false;
  const counting = (async () => {
    while (!done) {
      most = Math.max(most, (await qemuPids('ha1')).length);
      await sleep(100);
    }
  })();
  let ms: number | null = null;
  let error: string | undefined;
  const deadline = fault + 90_000;
  while (Date.now() < deadline) {
    const reply = await probe.gamesrv(ip, 100).catch(() => undefined);
    if (reply && reply.boot !== before.boot) {
      ms = Date.now() - fault;
      break;
    }
    await sleep(100);
  }
  if (ms === null) error = `not back within 90 s (${kind})`;
  // Bring the host back: thawed, or its agent started again; the VM must stay a single copy meanwhile.
  if (kind === 'kill') await startAgent(lab, owner);
  else {
    process.kill(host.pid!, 'SIGCONT');
    if (kind === 'freeze-host') process.kill(qemuPid, 'SIGCONT');
  }
  for (let i = 0; i < 60; i++) {
    const hosts = ferry('node', 'list').hosts as Array<{ name: string }>;
    if (hosts.some((h) => h.name === owner)) break;
    await sleep(500);
  }
  await sleep(2000);
  done = true;
  await counting;
  if (most > 1) error = `${most} QEMUs ran ha1 at once`;
  return { ms, doubleRun: most > 1, ...(error ? { error } : {}) };
}

