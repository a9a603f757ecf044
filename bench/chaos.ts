/**
 * The migration fault campaign (`npm run chaos -- --faults 100 --seed 1`): a 3-host lab of its own
 * (etcd store, pools local/shared/replicated), four VMs, and one fault per migration at a random
 * moment (src/lab/migration-campaign.ts), each judged by the independent checker. Prints the fault ×
 * moment table and the outcomes, writes every outcome to bench/results/chaos-<seed>.json, and exits
 * non-zero when the checker found anything.
 *
 *   --faults N        how many faults (default 20)
 *   --seed S          the campaign's seed (default: random, printed)
 *   --max-minutes M   stop drawing new faults after M minutes (default 120)
 *   --kinds K,...     only these fault kinds (default all)
 *   --keep            leave the lab up afterwards (to look at it; `ferry lab down` with its FERRY_LAB_DIR)
 */
import { execFile, spawnSync } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { table } from '../src/cli/format.ts';
import { LabAdmin } from '../src/lab/chaos.ts';
import { readLab } from '../src/lab/lab.ts';
import { FAULT_KIND_NAMES, faultMomentTable, faultOutcomeTable, prepareCampaignVms, runMigrationCampaign, type MigrationFaultKind, type MigrationFaultOutcome } from '../src/lab/migration-campaign.ts';
import { Probe } from '../src/lab/probe.ts';
import { PROJECT_ROOT } from '../src/util/project.ts';

const FERRY = path.join(PROJECT_ROOT, 'bin', 'ferry.mjs');

export interface ChaosRun {
  seed: number;
  outcomes: MigrationFaultOutcome[];
  minutes: number;
  /** Why the campaign stopped before its count, if it did. */
  halted?: string;
  /** Where the lab's logs were kept (a campaign with findings keeps them). */
  logs?: string;
}

export async function runChaos(options: { faults: number; seed: number; maxMinutes: number; kinds: MigrationFaultKind[]; keep?: boolean; log?: (line: string) => void }): Promise<ChaosRun> {
  const log = options.log ?? ((line: string) => console.log(line));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-chaos-'));
  const env = { ...process.env, FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json'), FERRY_LAB_PREFIX: `fch${process.pid % 10000}`, FERRY_LAB_HOST_MEMORY: '1024' };
  const started = Date.now();
  let probe: Probe | undefined;
  let outcomes: MigrationFaultOutcome[] = [];
  const halted: { reason?: string } = {};
  let logs: string | undefined;
  try {
    const up = spawnSync(process.execPath, [FERRY, 'lab', 'up', '--hosts', '3', '--store', 'etcd', '--json'], { env, encoding: 'utf8' });
    if (up.status !== 0) throw new Error(`ferry lab up: ${up.stderr}`);
    const lab = (await readLab(dir))!;
    probe = await Probe.start(lab.clientNetns);
    const admin = await LabAdmin.open(lab);
    // The ferry CLI the campaign runs needs the lab's environment.
    Object.assign(process.env, { FERRY_LAB_DIR: dir, FERRY_CONTEXT: path.join(dir, 'context.json') });
    const vms = await prepareCampaignVms(lab, admin, log);
    log(`campaign: seed ${options.seed}, ${options.faults} faults of ${options.kinds.length} kinds, lab in ${dir}`);
    outcomes = await runMigrationCampaign(lab, probe, vms, { seed: options.seed, faults: options.faults, maxMinutes: options.maxMinutes, kinds: options.kinds, log, halted });
  } finally {
    await probe?.close();
    if (halted.reason || outcomes.some((o) => o.findings.length)) {
      // The agents' and watchdogs' logs explain a finding: kept before the lab goes.
      logs = `${dir}-logs`;
      await cp(path.join(dir, 'hosts'), logs, { recursive: true, filter: (f) => !/\.(qcow2|ext4|sock)$/.test(f) && !f.includes('/images') && !f.includes('/replicas') }).catch(() => undefined);
      log(`the lab's logs are kept in ${logs}`);
    }
    if (!options.keep) {
      // Not spawnSync: agents this process restarted are its children, and only a running event loop reaps them.
      await new Promise((resolve) => execFile(process.execPath, [FERRY, 'lab', 'down'], { env }, resolve));
      await rm(dir, { recursive: true, force: true });
    } else log(`lab kept in ${dir}`);
  }
  return { seed: options.seed, outcomes, minutes: (Date.now() - started) / 60_000, ...(halted.reason ? { halted: halted.reason } : {}), ...(logs ? { logs } : {}) };
}

export function printChaos(result: ChaosRun): string {
  const { outcomes, seed } = result;
  const found = outcomes.flatMap((o) => o.findings.map((f) => `  fault ${o.index} (${o.kind} at ${o.moment}, ${o.vm}): ${f.what}: ${f.detail}`));
  return [
    `\nMigration fault campaign, seed ${seed}: ${outcomes.length} faults in ${result.minutes.toFixed(0)} min (3-host lab, etcd store, TCG, 128 MiB guests: RAM only, local disk, replicated, shared; each under HA)`,
    'faults by kind and the moment they struck (the migration\'s phase; not-begun: before its job began, ended: after it finished)',
    table(faultMomentTable(outcomes)[0]!, faultMomentTable(outcomes).slice(1)),
    'outcomes (checked independently: QEMU processes per namespace, guest boot id, memcheck, diskcheck, taps, listening sockets, pool files, jobs)',
    table(faultOutcomeTable(outcomes)[0]!, faultOutcomeTable(outcomes).slice(1)),
    found.length ? `findings:\n${found.join('\n')}` : 'findings: none',
    ...(result.halted ? [`HALTED after ${outcomes.length} faults: ${result.halted}`] : []),
    `reproduce: npm run chaos -- --faults ${outcomes.length} --seed ${seed}`,
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { faults: { type: 'string' }, seed: { type: 'string' }, 'max-minutes': { type: 'string' }, kinds: { type: 'string' }, keep: { type: 'boolean' } } });
  const faults = Number(values.faults ?? 20);
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
  const maxMinutes = Number(values['max-minutes'] ?? 120);
  const kinds = (values.kinds?.split(',') ?? FAULT_KIND_NAMES) as MigrationFaultKind[];
  const unknown = kinds.filter((k) => !FAULT_KIND_NAMES.includes(k));
  if (!Number.isInteger(faults) || faults < 1 || !Number.isInteger(seed) || !(maxMinutes > 0) || unknown.length) {
    console.error(`usage: npm run chaos -- [--faults N] [--seed S] [--max-minutes M] [--kinds ${FAULT_KIND_NAMES.join(',')}] [--keep]${unknown.length ? `\nunknown kinds: ${unknown.join(', ')}` : ''}`);
    process.exit(2);
  }
  const result = await runChaos({ faults, seed, maxMinutes, kinds, keep: values.keep ?? false });
  const text = printChaos(result);
  console.log(text);
  await writeFile(path.join(PROJECT_ROOT, 'bench', 'results', `chaos-${seed}.json`), JSON.stringify(result, null, 2) + '\n');
  await writeFile(path.join(PROJECT_ROOT, 'bench', 'results', `chaos-${seed}.txt`), text + '\n');
  process.exit(result.halted || result.outcomes.some((o) => o.findings.length) ? 1 : 0);
}
