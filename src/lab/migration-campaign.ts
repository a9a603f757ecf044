/**
 * The migration fault campaign: live migrations of four kinds of VM (RAM only, a local disk that is
 * copied, a replicated disk, a shared disk), each with one fault at a random moment — an agent or a
 * QEMU killed, an agent frozen, the link between the two hosts cut or squeezed, an etcd member or
 * the leader killed in the middle of the ownership swap, the destination's storage full. After each,
 * the lab is left to settle and the independent checker (checker.ts) judges it: exactly one QEMU per
 * VM where the store says, the guest's memory and disk intact, nothing left behind. Every choice
 * comes from one seed, so a campaign is replayed by its seed (timings on a shared machine still vary).
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from '../agent/client.ts';
import { heldMarker } from '../agent/faults.ts';
import { loadIdentity } from '../cluster/pki.ts';
import type { Job } from '../cluster/model.ts';
import type { MigrationPhase } from '../migration/types.ts';
import { run } from '../util/exec.ts';
import { PROJECT_ROOT } from '../util/project.ts';
import { LabAdmin } from './chaos.ts';
import { checkLab, qemuProcesses, settle, type CampaignVm, type Finding, type GuestBaseline, type VmKind } from './checker.ts';
import { boundLocalPools, cutLink, fillLocalPool, slowLink, type Undo } from './lab-faults.ts';
import { etcdLeader, faultFile, injectFault, killAgent, killEtcdMember, labContext, restartEtcdMember, startAgent, type LabRecord } from './lab.ts';
import type { Probe } from './probe.ts';
import { SeededRandom } from './seeded-random.ts';

export type MigrationFaultKind =
  | 'kill-source-agent'
  | 'kill-destination-agent'
  | 'kill-source-qemu'
  | 'kill-destination-qemu'
  | 'freeze-source-agent'
  | 'freeze-destination-agent'
  | 'cut-link-briefly'
  | 'cut-link'
  | 'slow-link'
  | 'kill-store-member'
  | 'kill-store-leader-at-swap'
  | 'fill-destination-storage';

interface FaultKindInfo {
  describe: string;
  /** Which VMs it makes sense for. */
  appliesTo: readonly VmKind[];
}

const ALL_VMS: readonly VmKind[] = ['ram', 'local-disk', 'replicated', 'shared'];

export const MIGRATION_FAULTS: Record<MigrationFaultKind, FaultKindInfo> = {
  'kill-source-agent': { describe: "source's agent SIGKILLed, restarted 1-3 s later", appliesTo: ALL_VMS },
  'kill-destination-agent': { describe: "destination's agent SIGKILLed, restarted 1-3 s later", appliesTo: ALL_VMS },
  'kill-source-qemu': { describe: "source's QEMU SIGKILLed", appliesTo: ALL_VMS },
  'kill-destination-qemu': { describe: "destination's QEMU SIGKILLed", appliesTo: ALL_VMS },
  'freeze-source-agent': { describe: "source's agent frozen (SIGSTOP) 1.5-3.5 s", appliesTo: ALL_VMS },
  'freeze-destination-agent': { describe: "destination's agent frozen (SIGSTOP) 1.5-3.5 s", appliesTo: ALL_VMS },
  'cut-link-briefly': { describe: 'link between the two hosts cut for 2-6 s', appliesTo: ALL_VMS },
  'cut-link': { describe: 'link between the two hosts cut until the migration ends', appliesTo: ALL_VMS },
  'slow-link': { describe: "source's uplink squeezed to 8 Mbit/s (200 ms queue, tail drops) for 4-10 s", appliesTo: ALL_VMS },
  'kill-store-member': { describe: 'an etcd member SIGKILLed, restarted 2-8 s later', appliesTo: ALL_VMS },
  'kill-store-leader-at-swap': { describe: "etcd's leader SIGKILLed just before the ownership swap", appliesTo: ALL_VMS },
  'fill-destination-storage': { describe: "destination's local pool filled (512 KiB left) before the migration or in its first 600 ms", appliesTo: ['local-disk'] },
};

export const FAULT_KIND_NAMES = Object.keys(MIGRATION_FAULTS) as MigrationFaultKind[];

/** Where the migration was when the fault struck: a protocol phase, or not yet begun / already ended. */
export type FaultMoment = MigrationPhase | 'not-begun' | 'ended';
export const FAULT_MOMENTS: readonly FaultMoment[] = ['not-begun', 'begin', 'prepare', 'perform', 'switchover', 'finish', 'confirm', 'ended'];

export interface MigrationFaultOutcome {
  index: number;
  kind: MigrationFaultKind;
  vm: string;
  vmKind: VmKind;
  from: string;
  to: string;
  /** RAM stream cap, MiB/s; null: unlimited. */
  bandwidthMiBps: number | null;
  delayMs: number;
  moment: FaultMoment;
  /** How the migration ended: moved, rolled back (the VM stayed), refused before anything changed (or the request itself), or still running. */
  migration: 'succeeded' | 'rolled-back' | 'refused' | 'unfinished';
  /** Where the VM runs after the lab settled (the checker's view). */
  endedOn: string | undefined;
  restarted: boolean;
  settled: boolean;
  /** From the fault's end (outage undone) until the migration ended and the lab settled. */
  settleSeconds?: number;
  findings: Finding[];
  /** What the fault could not do (a QEMU already gone), or why the request was refused. */
  note?: string;
  /** Why the migration failed, in its job's words. */
  failure?: string;
  seconds: number;
}

/** The campaign cannot go on (a VM it needs is down); the faults so far stand. */
export class CampaignHaltedError extends Error {
  override name = 'CampaignHaltedError';
}

export interface MigrationCampaignOptions {
  /** Set when the campaign stopped before its count: why. */
  halted?: { reason?: string };
  seed: number;
  faults: number;
  maxMinutes: number;
  kinds: MigrationFaultKind[];
  log: (line: string) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The campaign's four VMs, made once (128 MiB each, memory and disk checkers running, under HA). */
export async function prepareCampaignVms(lab: LabRecord, admin: LabAdmin, log: (line: string) => void): Promise<CampaignVm[]> {
  const ferry = (...args: string[]) =>
    run(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), ...args], { timeoutMs: 180_000, env: { ...process.env, FERRY_LAB_DIR: lab.dir, FERRY_CONTEXT: path.join(lab.dir, 'context.json') } });
  const [h1, h2] = lab.hosts.map((h) => h.name) as [string, string];
  const pools = (await admin.call<{ pools: Array<{ name: string }> }>('GET', '/v1/cluster/storage')).pools.map((p) => p.name);
  if (!pools.includes('campaign-r')) {
    await boundLocalPools(lab, 384);
    for (const h of lab.hosts) await run('mkdir', ['-p', path.join(lab.dir, 'hosts', h.name, 'replicas')]);
    await ferry('storage', 'add', 'campaign-r', '--type', 'replicated', '--path', path.join(lab.dir, 'hosts', '%h', 'replicas'));
  }
  const wanted: Array<{ name: string; kind: VmKind; disk: string[]; host: string }> = [
    { name: 'c-ram', kind: 'ram', disk: [], host: h1 },
    { name: 'c-local', kind: 'local-disk', disk: ['--disk', '32M,storage=local', '--diskcheck', '40'], host: h1 },
    { name: 'c-repl', kind: 'replicated', disk: ['--disk', '32M,storage=campaign-r,peer=' + h2, '--diskcheck', '40'], host: h1 },
    { name: 'c-shared', kind: 'shared', disk: ['--disk', '32M,storage=shared', '--diskcheck', '40'], host: h2 },
  ];
  const vms: CampaignVm[] = [];
  for (const w of wanted) {
    const exists = await admin.vm(w.name).then(() => true, () => false);
    if (!exists) {
      log(`creating ${w.name} (${w.kind}) on ${w.host}`);
      await ferry('vm', 'create', w.name, '--memory', '128', '--memcheck', '16', ...w.disk, '--host', w.host);
      await ferry('ha', 'add', w.name, '--max-restart', '3', '--max-relocate', '2');
    }
    const ip = (await admin.vm(w.name)).ip;
    if (!ip) throw new Error(`${w.name} has no guest address`);
    vms.push({ name: w.name, kind: w.kind, ip, ...(w.kind === 'replicated' ? { replicaHosts: [h1, h2] } : {}) });
  }
  return vms;
}

/** Everything one fault needs, drawn from the seed before anything happens (so timing cannot change the draw). */
export interface FaultPlan {
  kind: MigrationFaultKind;
  vm: CampaignVm;
  toChoice: number;
  bandwidthMiBps: number | null;
  delayMs: number;
  outageMs: number;
  storeMember: number;
}

/** The first `count` faults a campaign with this seed injects (what `npm run chaos -- --seed S` replays). */
export function drawPlans(seed: number, count: number, kinds: MigrationFaultKind[], vms: CampaignVm[]): FaultPlan[] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: count }, () => drawPlan(rng, kinds, vms));
}

function drawPlan(rng: SeededRandom, kinds: MigrationFaultKind[], vms: CampaignVm[]): FaultPlan {
  const kind = rng.pick(kinds);
  const vm = rng.pick(vms.filter((v) => MIGRATION_FAULTS[kind].appliesTo.includes(v.kind)));
  const bandwidthMiBps = rng.pick([null, 24, 48] as const);
  return {
    kind,
    vm,
    toChoice: rng.int(0, 1),
    bandwidthMiBps,
    // Aim inside the migration and sometimes past it: 128 MiB moves in ~1 s unlimited, ~3 s at 48 MiB/s,
    // ~5 s at 24 MiB/s (TCG, this machine); a disk copy is over within its first second or so.
    delayMs: rng.int(0, kind === 'fill-destination-storage' ? 600 : bandwidthMiBps === null ? 1200 : bandwidthMiBps === 48 ? 2800 : 5000),
    outageMs: rng.int(1000, 6000),
    storeMember: rng.int(0, 2),
  };
}

export async function runMigrationCampaign(lab: LabRecord, probe: Probe, vms: CampaignVm[], options: MigrationCampaignOptions): Promise<MigrationFaultOutcome[]> {
  if (lab.store !== 'etcd') throw new Error('the migration campaign needs an etcd lab (ferry lab up --store etcd): it kills store members');
  const admin = await LabAdmin.open(lab);
  const identity = await loadIdentity(path.join(lab.dir, 'admin'));
  const agents = new Map(labContext(lab).agents.map((a) => [a.name, new AgentClient(a, identity, 15_000)]));
  const rng = new SeededRandom(options.seed);
  const outcomes: MigrationFaultOutcome[] = [];
  const reported = new Set<string>();
  const halted = options.halted ?? {};
  const stopAt = Date.now() + options.maxMinutes * 60_000;
  for (let i = 1; i <= options.faults && Date.now() < stopAt; i++) {
    const plan = drawPlan(rng, options.kinds, vms);
    let outcome: MigrationFaultOutcome;
    try {
      outcome = await runOneFault(lab, admin, agents, probe, vms, plan, i, reported);
    } catch (err) {
      if (!(err instanceof CampaignHaltedError)) throw err;
      options.log(`campaign halted: ${err.message}`);
      halted.reason = err.message;
      break;
    }
    // A leftover stays until someone removes it: it is the fault's that made it, not every later one's.
    outcome.findings = outcome.findings.filter((f) => !(f.what === 'leftover' || f.what === 'stuck-job') || !reported.has(f.detail));
    for (const f of outcome.findings) reported.add(f.detail);
    outcomes.push(outcome);
    const found = outcome.findings.length ? ` — FOUND: ${outcome.findings.map((f) => `${f.what}: ${f.detail}`).join('; ')}` : '';
    options.log(
      `fault ${i}/${options.faults} ${outcome.kind} at ${outcome.moment} (${outcome.delayMs} ms): ${outcome.vm} ${outcome.from} → ${outcome.to}` +
        `${outcome.bandwidthMiBps ? ` at ${outcome.bandwidthMiBps} MiB/s` : ''}: migration ${outcome.migration}, runs on ${outcome.endedOn ?? '-'}` +
        `${outcome.restarted ? ' (restarted by HA)' : ''}${outcome.note ? ` [${outcome.note}]` : ''}${outcome.failure ? ` [failed: ${outcome.failure}]` : ''}, ${outcome.seconds.toFixed(0)} s${found}`,
    );
  }
  return outcomes;
}

async function jobOf(admin: LabAdmin, id: string): Promise<Job | undefined> {
  return (await admin.call<{ job: Job }>('GET', `/v1/jobs/${id}`).catch(() => undefined))?.job;
}

async function momentOf(admin: LabAdmin, id: string | undefined): Promise<FaultMoment> {
  if (!id) return 'not-begun';
  const job = await jobOf(admin, id);
  if (!job) return 'not-begun';
  if (job.state !== 'running') return 'ended';
  return job.progress?.phase ?? 'begin';
}

async function runOneFault(lab: LabRecord, admin: LabAdmin, agents: Map<string, AgentClient>, probe: Probe, vms: CampaignVm[], plan: FaultPlan, index: number, reported: ReadonlySet<string>): Promise<MigrationFaultOutcome> {
  const started = Date.now();
  const { kind, vm } = plan;
  const { owner: from, token } = await admin.vm(vm.name);
  const others = (vm.replicaHosts ?? lab.hosts.map((h) => h.name)).filter((h) => h !== from);
  const to = others[plan.toChoice % others.length]!;
  const hostPid = (name: string) => lab.hosts.find((h) => h.name === name)!.pid!;

  const baselines = new Map<string, GuestBaseline>();
  for (const v of vms) {
    const reply = await probe.gamesrv(v.ip, 5000).catch(() => undefined);
    // A VM an earlier fault left down was reported then; a campaign cannot go on judging faults without it.
    if (!reply) throw new CampaignHaltedError(`${v.name} does not answer before fault ${index} (an earlier fault left it down; see the findings before this one)`);
    const boot = reply.boot;
    const diskSeq = v.kind === 'ram' ? undefined : (await probe.diskcheckStats(v.ip).catch(() => undefined))?.seq;
    baselines.set(v.name, { boot, ...(diskSeq !== undefined ? { diskSeq } : {}) });
  }
  const outcome: MigrationFaultOutcome = {
    index, kind, vm: vm.name, vmKind: vm.kind, from, to, bandwidthMiBps: plan.bandwidthMiBps, delayMs: plan.delayMs,
    moment: 'not-begun', migration: 'unfinished', endedOn: undefined, restarted: false, settled: false, findings: [], seconds: 0,
  };
  const mayRestart = new Set<string>();
  const undo: Undo[] = [];
  const held = heldMarker(faultFile(lab, from));
  if (kind === 'kill-store-leader-at-swap') await injectFault(lab, from, 'before-ownership-swap', 'hold', vm.name);
  let jobId: string | undefined;
  try {
    // A disk copy is over within a second or so: the pool is full from the start (or within 600 ms of it).
    if (kind === 'fill-destination-storage' && plan.delayMs < 300) undo.push(await fillLocalPool(lab, to));
    const params = { maxBandwidth: plan.bandwidthMiBps === null ? 'unlimited' : plan.bandwidthMiBps * 2 ** 20 };
    try {
      jobId = (await agents.get(from)!.call<{ job: Job }>('POST', `/v1/vms/${vm.name}/migrate`, { to, token, params })).job.id;
    } catch (err) {
      outcome.migration = 'refused';
      outcome.note = `refused: ${(err as Error).message}`;
    }
    if (kind === 'kill-store-leader-at-swap') {
      const until = Date.now() + 60_000;
      while (jobId && !existsSync(held) && Date.now() < until && (await momentOf(admin, jobId)) !== 'ended') await sleep(20);
    } else await sleep(plan.delayMs);
    outcome.moment = await momentOf(admin, jobId);

    const qemuOn = async (host: string) => (await qemuProcesses(lab)).find((p) => p.vm === vm.name && p.host === host)?.pid;
    switch (kind) {
      case 'kill-source-agent':
      case 'kill-destination-agent': {
        const host = kind === 'kill-source-agent' ? from : to;
        await killAgent(lab, host);
        undo.push(async () => {
          await sleep(Math.min(plan.outageMs, 3000));
          await startAgent(lab, host);
        });
        break;
      }
      case 'kill-source-qemu':
      case 'kill-destination-qemu': {
        const pid = await qemuOn(kind === 'kill-source-qemu' ? from : to);
        if (pid) {
          process.kill(pid, 'SIGKILL');
          mayRestart.add(vm.name); // if it was the live copy, its memory is gone: HA boots it again
        } else outcome.note = 'no such QEMU at that moment';
        break;
      }
      case 'freeze-source-agent':
      case 'freeze-destination-agent': {
        const pid = hostPid(kind === 'freeze-source-agent' ? from : to);
        process.kill(pid, 'SIGSTOP');
        undo.push(async () => {
          // Below the HA timing's slack (watchdog at 5/6 of the lease TTL, renewals every 1/3): an agent
          // frozen longer is fenced by its watchdog by design — the HA campaign (chaos.ts) covers that.
          await sleep(1500 + (plan.outageMs % 2000));
          process.kill(pid, 'SIGCONT');
        });
        break;
      }
      case 'cut-link-briefly': {
        const restore = await cutLink(lab, from, to);
        undo.push(async () => {
          await sleep(Math.max(plan.outageMs, 2000));
          await restore();
        });
        break;
      }
      case 'cut-link': {
        const restore = await cutLink(lab, from, to);
        undo.push(async () => {
          const until = Date.now() + 120_000;
          while (jobId && Date.now() < until && (await momentOf(admin, jobId)) !== 'ended') await sleep(500);
          await restore();
        });
        break;
      }
      case 'slow-link': {
        const restore = await slowLink(lab, from, 8, 200);
        undo.push(async () => {
          await sleep(Math.max(plan.outageMs, 4000) + 4000);
          await restore();
        });
        break;
      }
      case 'kill-store-member': {
        await killEtcdMember(lab, plan.storeMember);
        undo.push(async () => {
          await sleep(Math.max(plan.outageMs, 2000));
          await restartEtcdMember(lab, plan.storeMember);
        });
        break;
      }
      case 'kill-store-leader-at-swap': {
        if (!existsSync(held)) {
          outcome.note = 'the migration did not reach the ownership swap';
          break;
        }
        const leader = await etcdLeader(lab);
        if (leader === undefined) outcome.note = 'etcd had no leader to kill';
        else {
          await killEtcdMember(lab, leader);
          undo.push(async () => {
            await sleep(3000);
            await restartEtcdMember(lab, leader);
          });
        }
        await rm(held, { force: true });
        break;
      }
      case 'fill-destination-storage': {
        if (plan.delayMs >= 300) undo.push(await fillLocalPool(lab, to));
        break;
      }
    }
  } finally {
    // Undo in order; the fault file's hold must never outlive the fault.
    for (const step of undo) await step().catch((err: Error) => outcome.findings.push({ what: 'leftover', detail: `undoing ${kind} failed: ${err.message}` }));
    await rm(held, { force: true });
    await rm(faultFile(lab, from), { force: true });
  }
  const settling = Date.now();
  if (jobId) {
    const until = Date.now() + 180_000;
    let job = await jobOf(admin, jobId);
    while (Date.now() < until && (!job || job.state === 'running')) {
      await sleep(500);
      job = await jobOf(admin, jobId);
    }
    if (job && job.state !== 'running') outcome.migration = job.state === 'succeeded' ? 'succeeded' : /^migration of '[^']+' refused/.test(job.error ?? '') ? 'refused' : 'rolled-back';
    if (job?.state === 'failed' && job.error) outcome.failure = job.error.replace(/\s+/g, ' ').slice(0, 400);
  }
  outcome.settled = await settle(lab, admin, probe, vms, 150_000, started - 1000, reported);
  outcome.settleSeconds = Math.round((Date.now() - settling) / 100) / 10;
  const check = await checkLab(lab, admin, probe, vms, baselines, mayRestart);
  outcome.findings.push(...check.findings);
  const verdict = check.verdicts.find((v) => v.vm === vm.name);
  outcome.endedOn = verdict?.host;
  outcome.restarted = verdict?.restarted ?? false;
  outcome.seconds = (Date.now() - started) / 1000;
  return outcome;
}

/** Faults by kind (rows) and the moment they struck (columns). */
export function faultMomentTable(outcomes: MigrationFaultOutcome[]): string[][] {
  const moments = FAULT_MOMENTS.filter((m) => outcomes.some((o) => o.moment === m));
  const kinds = FAULT_KIND_NAMES.filter((k) => outcomes.some((o) => o.kind === k));
  const rows = kinds.map((k) => [k, ...moments.map((m) => String(outcomes.filter((o) => o.kind === k && o.moment === m).length || '')), String(outcomes.filter((o) => o.kind === k).length)]);
  return [['fault \\ moment', ...moments, 'all'], ...rows, ['all', ...moments.map((m) => String(outcomes.filter((o) => o.moment === m).length)), String(outcomes.length)]];
}

/** Per kind: how the migrations ended and what the checker found. */
export function faultOutcomeTable(outcomes: MigrationFaultOutcome[]): string[][] {
  const count = (of: MigrationFaultOutcome[], what: Finding['what'][]) => String(of.reduce((n, o) => n + o.findings.filter((f) => what.includes(f.what)).length, 0));
  const row = (label: string, of: MigrationFaultOutcome[]) => [
    label,
    String(of.length),
    String(of.filter((o) => o.migration === 'succeeded').length),
    String(of.filter((o) => o.migration === 'rolled-back').length),
    String(of.filter((o) => o.migration === 'refused').length),
    String(of.filter((o) => o.migration === 'unfinished').length),
    String(of.filter((o) => o.restarted).length),
    count(of, ['lost', 'not-running']),
    count(of, ['double-run']),
    count(of, ['lost-writes', 'torn-or-foreign', 'memory']),
    count(of, ['store-disagrees']),
    count(of, ['leftover', 'stuck-job']),
    settleFigure(of),
  ];
  const kinds = FAULT_KIND_NAMES.filter((k) => outcomes.some((o) => o.kind === k));
  return [
    ['fault', 'faults', 'moved', 'rolled back', 'refused', 'unfinished', 'restarted by HA', 'VMs lost', 'double runs', 'lost/torn writes, memory', 'store disagrees', 'leftovers', 'settled in: median / worst (n)'],
    ...kinds.map((k) => row(k, outcomes.filter((o) => o.kind === k))),
    row('all faults', outcomes),
  ];
}

/** How long the lab took to settle after the faults: median and worst over those that say, and how many. */
function settleFigure(of: MigrationFaultOutcome[]): string {
  const times = of.map((o) => o.settleSeconds).filter((t): t is number => t !== undefined).sort((a, b) => a - b);
  if (!times.length) return '-';
  const mid = Math.floor(times.length / 2);
  const median = times.length % 2 ? times[mid]! : (times[mid - 1]! + times[mid]!) / 2;
  return `${median.toFixed(1)} s / ${times.at(-1)!.toFixed(1)} s (${times.length})`;
}
