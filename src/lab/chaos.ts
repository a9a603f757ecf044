/**
 * Faults of lab hosts, for the HA campaign (`ferry lab chaos`) and the failover benchmark: each fault
 * hits the host of an HA VM (or its QEMU, or its links), and is judged as a user would judge it —
 * the time until the guest answers from a new boot, whether two QEMUs ever ran it at once (counted on
 * the whole machine every 100 ms), whether the disk lost a write the guest saw complete or holds a
 * torn or foreign block — and then the host is brought back and must not start a second copy.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from '../agent/client.ts';
import { loadIdentity } from '../cluster/pki.ts';
import type { HaManagerRecord } from '../cluster/ha/records.ts';
import type { OwnedVm, HostRecord } from '../cluster/model.ts';
import { run } from '../util/exec.ts';
import { PROJECT_ROOT } from '../util/project.ts';
import { killAgent, labContext, qemuPidsOf, startAgent, switchPortName, type LabRecord } from './lab.ts';
import type { Probe } from './probe.ts';

export type FaultKind = 'kill-host' | 'freeze-agent' | 'freeze-host' | 'kill-qemu' | 'kill-manager-mid-recovery' | 'partition';

export const FAULT_KINDS: Record<FaultKind, string> = {
  'kill-host': 'every process of the host SIGKILLed (agent, QEMUs, replica server)',
  'freeze-agent': 'the agent frozen (SIGSTOP); its QEMU runs on until the watchdog acts',
  'freeze-host': 'agent and QEMU frozen, thawed after the VM runs elsewhere',
  'kill-qemu': "the guest's QEMU killed on a live host",
  'kill-manager-mid-recovery': "the host killed, then the HA manager's host killed during the recovery",
  partition: "the host's links cut (etcd store only)",
};

export interface FaultOutcome {
  kind: FaultKind;
  host: string;
  /** Milliseconds waited before the fault (its random moment). */
  delayMs: number;
  /** Fault to the guest's first reply from its new boot; null: it did not come back in time. */
  downMs: number | null;
  recoveredOn?: string;
  /** Most QEMUs seen running the VM at once. */
  mostCopies: number;
  /** Writes the guest saw complete that the disk lacks (null: not checked). */
  lostWrites: number | null;
  torn: number;
  foreign: number;
  error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The admin's view of the lab, through whichever agent answers. */
export class LabAdmin {
  private constructor(private readonly clients: AgentClient[]) {}

  static async open(lab: LabRecord): Promise<LabAdmin> {
    const identity = await loadIdentity(path.join(lab.dir, 'admin'));
    return new LabAdmin(labContext(lab).agents.map((a) => new AgentClient(a, identity, 5000)));
  }

  async call<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> {
    let last: unknown;
    for (const client of this.clients) {
      try {
        return await client.call<T>(method, route, body);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  async vm(name: string): Promise<OwnedVm> {
    return (await this.call<{ vm: OwnedVm }>('GET', `/v1/cluster/vms/${name}`)).vm;
  }

  async hosts(): Promise<string[]> {
    return (await this.call<{ hosts: HostRecord[] }>('GET', '/v1/cluster/hosts')).hosts.map((h) => h.name);
  }

  async manager(): Promise<string | undefined> {
    return (await this.call<{ manager: HaManagerRecord | null }>('GET', '/v1/ha')).manager?.host;
  }
}

export interface FaultTarget {
  lab: LabRecord;
  probe: Probe;
  admin: LabAdmin;
  vm: string;
  ip: string;
}

/** Kills every process of a lab host: its agent, its guests' QEMUs, its replica server. */
export async function killLabHost(lab: LabRecord, host: string): Promise<void> {
  const state = path.join(lab.dir, 'hosts', host, 'state');
  const files = await readdir(path.join(state, 'instances')).catch(() => [] as string[]);
  const guests = await Promise.all(files.filter((f) => f.endsWith('.json')).map(async (f) => (JSON.parse(await readFile(path.join(state, 'instances', f), 'utf8')) as { pid: number }).pid));
  const replicaServer = Number((await readFile(path.join(state, 'replica-server', 'pid'), 'utf8').catch(() => '')).trim());
  await killAgent(lab, host);
  for (const pid of [...guests, ...(replicaServer > 0 ? [replicaServer] : [])]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
}

function uplinkOf(lab: LabRecord, host: string): string {
  return switchPortName(lab.hosts.find((h) => h.name === host)!.netns);
}

/** One fault of `kind` after `delayMs`, judged, and the lab brought back whole. */
export async function injectFault(target: FaultTarget, kind: FaultKind, delayMs: number): Promise<FaultOutcome> {
  const { lab, probe, admin, vm, ip } = target;
  const owner = (await admin.vm(vm)).owner;
  const host = lab.hosts.find((h) => h.name === owner)!;
  const before = await probe.gamesrv(ip, 5000);
  await sleep(delayMs);
  const lastSeen = (await probe.diskcheckStats(ip).catch(() => undefined))?.seq;
  const [qemu] = await qemuPidsOf(vm);
  const outcome: FaultOutcome = { kind, host: owner, delayMs, downMs: null, mostCopies: 0, lostWrites: null, torn: 0, foreign: 0 };
  let recovered = false;
  const counting = (async () => {
    while (!recovered) {
      outcome.mostCopies = Math.max(outcome.mostCopies, (await qemuPidsOf(vm)).length);
      await sleep(100);
    }
  })();
  const restore: Array<() => Promise<void>> = [];
  const fault = Date.now();
  switch (kind) {
    case 'kill-host':
      await killLabHost(lab, owner);
      restore.push(() => startAgent(lab, owner).then(() => undefined));
      break;
    case 'freeze-agent':
    case 'freeze-host':
      process.kill(host.pid!, 'SIGSTOP');
      if (kind === 'freeze-host' && qemu) process.kill(qemu, 'SIGSTOP');
      restore.push(async () => {
        process.kill(host.pid!, 'SIGCONT');
        if (kind === 'freeze-host' && qemu) process.kill(qemu, 'SIGCONT');
      });
      break;
    case 'kill-qemu':
      if (qemu) process.kill(qemu, 'SIGKILL');
      break;
    case 'kill-manager-mid-recovery': {
      const manager = await admin.manager();
      await killLabHost(lab, owner);
      restore.push(() => startAgent(lab, owner).then(() => undefined));
      if (manager && manager !== owner) {
        // Somewhere in the wait for the lease, the margin or the start on the new host.
        await sleep(8_000 + Math.random() * 6_000);
        await killLabHost(lab, manager);
        restore.push(() => startAgent(lab, manager).then(() => undefined));
      }
      break;
    }
    case 'partition':
      if (lab.store !== 'etcd') throw new Error('a partition needs the etcd lab: with SQLite the store is a file no cut link takes away');
      await run('ip', ['-n', lab.switchNetns, 'link', 'set', uplinkOf(lab, owner), 'down']);
      restore.push(() => run('ip', ['-n', lab.switchNetns, 'link', 'set', uplinkOf(lab, owner), 'up']).then(() => undefined));
      break;
  }
  try {
    const deadline = fault + 120_000;
    while (Date.now() < deadline) {
      const reply = await probe.gamesrv(ip, 100).catch(() => undefined);
      if (reply && reply.boot !== before.boot) {
        outcome.downMs = Date.now() - fault;
        break;
      }
      await sleep(100);
    }
    if (outcome.downMs === null) outcome.error = 'the guest did not answer from a new boot within 120 s';
    else {
      outcome.recoveredOn = (await admin.vm(vm)).owner;
      const startup = await probe.diskcheckStartup(ip, 60_000);
      outcome.torn = startup.torn;
      outcome.foreign = startup.foreign;
      if (lastSeen !== undefined) outcome.lostWrites = Math.max(0, lastSeen - startup.maxseq);
    }
  } finally {
    for (const step of restore) await step();
    // Every host back in the cluster, then a moment for a returning agent to sort out what it had.
    const all = lab.hosts.map((h) => h.name);
    for (let i = 0; i < 120; i++) {
      const live = await admin.hosts().catch(() => [] as string[]);
      if (all.every((h) => live.includes(h))) break;
      await sleep(500);
    }
    await sleep(2000);
    recovered = true;
    await counting;
  }
  if (outcome.mostCopies > 1) outcome.error = `${outcome.mostCopies} QEMUs ran ${vm} at once`;
  return outcome;
}

export interface CampaignOptions {
  faults: number;
  maxMinutes: number;
  kinds: FaultKind[];
  /** The HA VM to fault; made (on shared storage, with the disk checker) when absent. */
  vm: string;
  log: (line: string) => void;
}

/** Random faults of the kinds asked, each at a random moment (0–5 s after the last one settled). */
export async function runChaosCampaign(lab: LabRecord, probe: Probe, options: CampaignOptions): Promise<FaultOutcome[]> {
  const admin = await LabAdmin.open(lab);
  await ensureHaVm(lab, admin, options.vm, options.log);
  const ip = (await admin.vm(options.vm)).ip;
  if (!ip) throw new Error(`'${options.vm}' has no guest address the probe could ask`);
  const kinds = lab.store === 'etcd' ? options.kinds : options.kinds.filter((k) => k !== 'partition');
  const outcomes: FaultOutcome[] = [];
  const stopAt = Date.now() + options.maxMinutes * 60_000;
  for (let i = 1; i <= options.faults && Date.now() < stopAt; i++) {
    const kind = kinds[Math.floor(Math.random() * kinds.length)]!;
    const outcome = await injectFault({ lab, probe, admin, vm: options.vm, ip }, kind, Math.round(Math.random() * 5000));
    outcomes.push(outcome);
    const down = outcome.downMs === null ? 'not back' : `back in ${(outcome.downMs / 1000).toFixed(1)} s on ${outcome.recoveredOn}`;
    options.log(`fault ${i}/${options.faults}: ${kind} of ${outcome.host} after ${outcome.delayMs} ms: ${down}; copies at most ${outcome.mostCopies}, lost writes ${outcome.lostWrites ?? '-'}, torn ${outcome.torn}, foreign ${outcome.foreign}${outcome.error ? ` — ${outcome.error}` : ''}`);
  }
  return outcomes;
}

async function ensureHaVm(lab: LabRecord, admin: LabAdmin, vm: string, log: (line: string) => void): Promise<void> {
  const ferry = (...args: string[]) => run(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), ...args], { timeoutMs: 180_000, env: { FERRY_LAB_DIR: lab.dir, FERRY_CONTEXT: path.join(lab.dir, 'context.json') } });
  const exists = await admin.vm(vm).then(() => true, () => false);
  if (!exists) {
    log(`creating ${vm} (128 MiB, a 32 MiB disk in the shared pool with the disk checker writing 40 blocks/s) and putting it under HA`);
    await ferry('vm', 'create', vm, '--memory', '128', '--disk', '32M,storage=shared', '--diskcheck', '40');
  }
  const { resources } = await admin.call<{ resources: Array<{ vm: string }> }>('GET', '/v1/ha');
  if (!resources.some((r) => r.vm === vm)) await ferry('ha', 'add', vm);
}

/** One row per fault kind and a total: faults, recovered, p50 and worst time back, double runs, lost writes. */
export function summarizeFaults(outcomes: FaultOutcome[]): string[][] {
  const median = (xs: number[]) => {
    const sorted = [...xs].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  };
  const row = (label: string, of: FaultOutcome[]) => {
    const times = of.map((o) => o.downMs).filter((t): t is number => t !== null);
    const checked = of.filter((o) => o.lostWrites !== null);
    return [
      label,
      String(of.length),
      String(times.length),
      times.length ? `${(median(times) / 1000).toFixed(1)} s` : '-',
      times.length ? `${(Math.max(...times) / 1000).toFixed(1)} s` : '-',
      String(of.filter((o) => o.mostCopies > 1).length),
      checked.length ? String(checked.reduce((n, o) => n + o.lostWrites!, 0)) : '-',
      String(of.reduce((n, o) => n + o.torn + o.foreign, 0)),
    ];
  };
  const kinds = [...new Set(outcomes.map((o) => o.kind))];
  return [...kinds.map((k) => row(FAULT_KINDS[k], outcomes.filter((o) => o.kind === k))), row('all faults', outcomes)];
}

export const FAULT_TABLE_HEADER = ['fault', 'faults', 'back', 'p50', 'worst', 'double runs', 'lost writes', 'torn or foreign blocks'];
