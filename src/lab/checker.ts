/**
 * The campaign's independent checker: what runs is read off the machine (QEMU processes and the
 * network namespace each lives in, taps, listening sockets, files in the pools), what the guest
 * remembers is asked of the guest (boot id, memory and disk checkers), and only then compared with
 * what the store says. It does not ask the agents what they think runs.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Job, OwnedVm } from '../cluster/model.ts';
import { run } from '../util/exec.ts';
import type { LabAdmin } from './chaos.ts';
import { fillerLeft, localPoolDir } from './lab-faults.ts';
import type { LabRecord } from './lab.ts';
import type { Probe } from './probe.ts';

export type VmKind = 'ram' | 'local-disk' | 'replicated' | 'shared';

/** A VM of the campaign and what its guest last showed. */
export interface CampaignVm {
  name: string;
  kind: VmKind;
  ip: string;
  /** The replica hosts of a replicated VM (its migrations stay between them). */
  replicaHosts?: string[];
}

export interface GuestBaseline {
  boot: string;
  /** The disk checker's last handed-out write before the fault (disk VMs). */
  diskSeq?: number;
}

export interface QemuProcess {
  pid: number;
  vm: string;
  /** The lab host whose namespace it runs in; undefined: outside every host (a leak of its own). */
  host: string | undefined;
  cmdline: string;
}

/** Every QEMU guest process of this lab on the machine, with the lab host it runs in. */
export async function qemuProcesses(lab: LabRecord): Promise<QemuProcess[]> {
  const byNetns = new Map(lab.hosts.map((h) => [h.netns, h.name]));
  const found: QemuProcess[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ');
    const m = /^\S*qemu-system-x86_64 -name guest=([^,\s]+),/.exec(cmdline);
    if (!m || !cmdline.includes(lab.dir + '/')) continue; // another lab's guest (its files live in its own directory)
    const netns = (await run('ip', ['netns', 'identify', entry]).catch(() => '')).trim();
    found.push({ pid: Number(entry), vm: m[1]!, host: byNetns.get(netns), cmdline });
  }
  return found;
}

/** What the checker found wrong about one VM or the lab, in words a person can follow up. */
export interface Finding {
  what: 'lost' | 'double-run' | 'store-disagrees' | 'memory' | 'lost-writes' | 'torn-or-foreign' | 'leftover' | 'stuck-job' | 'not-running';
  vm?: string;
  detail: string;
}

export interface VmVerdict {
  vm: string;
  host: string | undefined;
  /** The guest answered from the boot it had before the fault. */
  sameBoot: boolean;
  /** The guest answered from a new boot (its QEMU was killed and HA started it again). */
  restarted: boolean;
  lostWrites: number | null;
}

export interface CheckResult {
  findings: Finding[];
  verdicts: VmVerdict[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Checks every VM and the lab. `mayRestart`: VMs whose running QEMU the fault killed — a new boot
 * is their right outcome (HA starts them again); any other VM must answer from the same boot.
 */
export async function checkLab(lab: LabRecord, admin: LabAdmin, probe: Probe, vms: CampaignVm[], baselines: Map<string, GuestBaseline>, mayRestart: Set<string>): Promise<CheckResult> {
  const findings: Finding[] = [];
  const verdicts: VmVerdict[] = [];
  const processes = await qemuProcesses(lab);
  const records = new Map<string, OwnedVm>();
  for (const vm of vms) records.set(vm.name, await admin.vm(vm.name));

  for (const vm of vms) {
    const copies = processes.filter((p) => p.vm === vm.name);
    const record = records.get(vm.name)!;
    const host = copies[0]?.host;
    if (copies.length === 0) findings.push({ what: 'lost', vm: vm.name, detail: `no QEMU runs ${vm.name} (store: ${record.desired} on ${record.owner})` });
    if (copies.length > 1) findings.push({ what: 'double-run', vm: vm.name, detail: `${copies.length} QEMUs run ${vm.name}: ${copies.map((c) => `pid ${c.pid} on ${c.host ?? 'no host'}`).join(', ')}` });
    if (copies.length === 1 && (host !== record.owner || record.desired !== 'running'))
      findings.push({ what: 'store-disagrees', vm: vm.name, detail: `${vm.name} runs on ${host ?? 'no host'}, the store says ${record.desired} on ${record.owner}` });
    const baseline = baselines.get(vm.name)!;
    const verdict: VmVerdict = { vm: vm.name, host, sameBoot: false, restarted: false, lostWrites: null };
    verdicts.push(verdict);
    if (copies.length !== 1) continue;
    const reply = await probe.gamesrv(vm.ip, 5000).catch(() => undefined);
    if (!reply) {
      findings.push({ what: 'not-running', vm: vm.name, detail: `${vm.name}'s guest does not answer (its QEMU pid ${copies[0]!.pid} runs on ${host})` });
      continue;
    }
    verdict.sameBoot = reply.boot === baseline.boot;
    verdict.restarted = !verdict.sameBoot;
    if (verdict.restarted && !mayRestart.has(vm.name))
      findings.push({ what: 'lost', vm: vm.name, detail: `${vm.name} answered from a new boot though no fault killed its running QEMU (its memory is lost); the agents said: ${await agentLinesAbout(lab, vm.name)}` });
    if (verdict.sameBoot) {
      const memory = await probe.memcheckVerify(vm.ip).catch((err: Error) => err);
      if (memory instanceof Error) findings.push({ what: 'memory', vm: vm.name, detail: `memcheck did not answer: ${memory.message}` });
      else if (memory.mismatches) findings.push({ what: 'memory', vm: vm.name, detail: `memcheck: ${memory.mismatches} of ${memory.pages} pages differ (first ${memory.firstBadPage})` });
    }
    if (vm.kind === 'ram') continue;
    if (verdict.sameBoot) {
      const disk = await probe.diskcheckVerify(vm.ip).catch((err: Error) => err);
      if (disk instanceof Error) findings.push({ what: 'lost-writes', vm: vm.name, detail: `diskcheck did not answer: ${disk.message}` });
      else {
        verdict.lostWrites = disk.lost;
        if (disk.lost) findings.push({ what: 'lost-writes', vm: vm.name, detail: `diskcheck: ${disk.lost} completed writes missing (first bad block ${disk.firstBadBlock})` });
        if (disk.torn || disk.foreign) findings.push({ what: 'torn-or-foreign', vm: vm.name, detail: `diskcheck: ${disk.torn} torn, ${disk.foreign} foreign blocks` });
      }
    } else {
      // A new boot: the disk must hold every write the old guest saw complete, none torn or foreign.
      const startup = await probe.diskcheckStartup(vm.ip, 60_000).catch((err: Error) => err);
      if (startup instanceof Error) findings.push({ what: 'lost-writes', vm: vm.name, detail: `diskcheck did not answer after the restart: ${startup.message}` });
      else {
        verdict.lostWrites = baseline.diskSeq === undefined ? null : Math.max(0, baseline.diskSeq - startup.maxseq);
        if (verdict.lostWrites) findings.push({ what: 'lost-writes', vm: vm.name, detail: `after the restart the disk lacks ${verdict.lostWrites} writes the guest saw complete` });
        if (startup.torn || startup.foreign) findings.push({ what: 'torn-or-foreign', vm: vm.name, detail: `after the restart: ${startup.torn} torn, ${startup.foreign} foreign blocks` });
      }
    }
  }
  findings.push(...(await leftovers(lab, admin, processes, vms, records)));
  return { findings, verdicts };
}

/** What a migration or its failure may leave behind: processes, taps, open ports, volumes, jobs. */
export async function leftovers(lab: LabRecord, admin: LabAdmin, processes: QemuProcess[], vms: CampaignVm[], records: Map<string, OwnedVm>): Promise<Finding[]> {
  const findings: Finding[] = [];
  const known = new Set(vms.map((v) => v.name));
  for (const p of processes) if (!known.has(p.vm)) findings.push({ what: 'leftover', vm: p.vm, detail: `QEMU pid ${p.pid} runs unknown guest ${p.vm} on ${p.host ?? 'no host'}` });
  for (const h of lab.hosts) {
    const here = processes.filter((p) => p.host === h.name);
    const taps = (await run('ip', ['-n', h.netns, '-o', 'link', 'show']).catch(() => '')).split('\n').map((l) => /^\d+: (ft[0-9a-f]+)[@:]/.exec(l)?.[1]).filter((t): t is string => !!t);
    for (const tap of taps) if (!here.some((p) => p.cmdline.includes(`ifname=${tap},`) || p.cmdline.includes(`ifname=${tap} `))) findings.push({ what: 'leftover', detail: `tap ${tap} on ${h.name} belongs to no QEMU there` });
    const listening = await run('ip', ['netns', 'exec', h.netns, 'ss', '-Hltnp']).catch(() => '');
    for (const line of listening.split('\n')) if (/"qemu-system/.test(line)) findings.push({ what: 'leftover', detail: `a QEMU on ${h.name} still listens (an NBD export or an incoming migration): ${line.trim().replace(/\s+/g, ' ')}` });
    const pool = localPoolDir(lab, h.name);
    for (const file of existsSync(pool) ? await readdir(pool) : []) {
      const owner = [...records.entries()].find(([name]) => file.startsWith(`${name}-`));
      if (file.startsWith('.') || file === 'lost+found') continue;
      if (!owner) findings.push({ what: 'leftover', detail: `volume file ${file} on ${h.name} belongs to no VM` });
      else if (owner[1].owner !== h.name) findings.push({ what: 'leftover', vm: owner[0], detail: `a copy of ${owner[0]}'s disk (${file}) remains on ${h.name}, where ${owner[0]} does not run` });
    }
    if (fillerLeft(lab, h.name)) findings.push({ what: 'leftover', detail: `the campaign's filler remains in ${h.name}'s local pool` });
  }
  const { jobs } = await admin.call<{ jobs: Job[] }>('GET', '/v1/jobs');
  for (const job of jobs) if (job.state === 'running') findings.push({ what: 'stuck-job', vm: job.vm, detail: `job ${job.id} (${job.kind} of ${job.vm} on ${job.host}) is still running` });
  for (const vm of vms) {
    const { migration } = await admin.call<{ migration: unknown }>('GET', `/v1/cluster/vms/${vm.name}`);
    if (migration) findings.push({ what: 'stuck-job', vm: vm.name, detail: `the store still holds an in-flight migration of ${vm.name}: ${JSON.stringify(migration)}` });
  }
  return findings;
}

/** Waits until every VM runs exactly once and answers, no job (begun since `since`) runs, no migration is in flight and nothing new is left behind (or the time is up). */
export async function settle(lab: LabRecord, admin: LabAdmin, probe: Probe, vms: CampaignVm[], timeoutMs: number, since = 0, reported: ReadonlySet<string> = new Set()): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await (async () => {
      const hosts = await admin.hosts();
      if (!lab.hosts.every((h) => hosts.includes(h.name))) return false;
      const { jobs } = await admin.call<{ jobs: Job[] }>('GET', '/v1/jobs');
      // A job stuck from before `since` is the checker's to report, not a reason to wait again.
      if (jobs.some((j) => j.state === 'running' && Date.parse(j.createdAt) >= since)) return false;
      const processes = await qemuProcesses(lab);
      for (const vm of vms) {
        if (processes.filter((p) => p.vm === vm.name).length !== 1) return false;
        const { migration } = await admin.call<{ migration: unknown }>('GET', `/v1/cluster/vms/${vm.name}`);
        if (migration) return false;
        if (!(await probe.gamesrv(vm.ip, 1000).catch(() => undefined))) return false;
      }
      // What a failed migration held is released within seconds of its end, not at once: wait for it
      // (a leftover reported by an earlier fault stays the checker's).
      const records = new Map<string, OwnedVm>();
      for (const vm of vms) records.set(vm.name, await admin.vm(vm.name));
      const left = await leftovers(lab, admin, processes, vms, records);
      return left.every((f) => reported.has(f.detail));
    })().catch(() => false);
    if (ok) return true;
    await sleep(500);
  }
  return false;
}

/** The agents' last log lines about a VM's end, for a finding a person follows up. */
async function agentLinesAbout(lab: LabRecord, vm: string): Promise<string> {
  const lines: string[] = [];
  for (const h of lab.hosts) {
    const log = await readFile(path.join(lab.dir, 'hosts', h.name, 'agent.log'), 'utf8').catch(() => '');
    lines.push(...log.split('\n').filter((l) => l.includes(vm) && /exited|stopped|fence|watchdog|HA manager|recovered|removed/.test(l)).slice(-3));
  }
  return lines.sort().slice(-4).join(' | ') || 'nothing';
}
