/** ferry lab up|down|kill-agent|start-agent|demo|chaos: many hosts on one machine. */
import { DEFAULT_LAB_DIR, LAB_STORAGE, killAgent, labDown, labUp, readLab, startAgent, type LabStorage } from '../../lab/lab.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';
import path from 'node:path';
import { Probe } from '../../lab/probe.ts';
import { Cli } from '../context.ts';
import { medianCell, mib, ms, table } from '../format.ts';
import { migrateWithProbe, tourHosts, type MigrationSummary } from '../migrate.ts';
import { ProgressDisplay, progressLine } from '../progress.ts';
import { quakeDemo } from '../quake-demo.ts';
import { FAULT_KINDS, FAULT_TABLE_HEADER, runChaosCampaign, summarizeFaults, type FaultKind } from '../../lab/chaos.ts';

const USAGE = `Usage:
  ferry lab up [--hosts 3] [--store sqlite|etcd] [--storage nfs,iscsi,rbd] [--cpu-max HOST=MODEL,...] [--json]
      bring up hosts (network namespaces with agents), a switch and a client; pools 'shared' and 'local';
      --storage runs storage servers in a storage namespace (10.80.0.8), each added as a pool of its name:
      nfs (NFS-Ganesha), iscsi (tgt, 8 LUNs of 256 MiB), rbd (Ceph: 1 monitor, 3 memstore OSDs, cephx);
      --cpu-max h3=Westmere-v1 makes h3 an "older" host: it advertises only that model's CPU features
  ferry lab down [--json]                                    remove everything the lab made (recorded in its lab.json)
  ferry lab kill-agent HOST | start-agent HOST               stop / restart one host's agent (its guests keep running)
  ferry lab chaos [--faults 20] [--max-minutes 30] [--kinds K,...] [--vm chaos1] [--json]
      an HA fault campaign: random faults at random moments of the host of an HA VM (made when absent),
      each judged (time back, two QEMUs at once, writes lost, blocks torn) and the host brought back;
      kinds: ${Object.keys(FAULT_KINDS).join(', ')} (partition: etcd labs)
  ferry lab demo [--rounds 2] [--json]                       (lab up, then) migrate a game server around all hosts, print a table
  ferry lab demo --quake [--rounds 1] [--pool shared|local]  the same with a real Debian VM running the OpenArena (Quake 3) server,
      queried by a Quake 3 client; its boot disk in the shared pool (only RAM moves) or the local one (the disk moves too)

The lab lives in ${DEFAULT_LAB_DIR} (FERRY_LAB_DIR to change); guests get 10.80.0.100-199, hosts 10.80.0.11-19.`;

export const labCommand: Command = {
  summary: 'many hosts on one machine: network namespaces, a switch, agents, a probe client',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: {
        hosts: { type: 'string' }, store: { type: 'string' }, 'cpu-max': { type: 'string' }, storage: { type: 'string' }, rounds: { type: 'string' }, quake: { type: 'boolean' }, pool: { type: 'string' }, json: { type: 'boolean' },
        faults: { type: 'string' }, 'max-minutes': { type: 'string' }, kinds: { type: 'string' }, vm: { type: 'string' },
      },
    });
    const [verb, host] = positionals;
    const json = values.json ?? false;
    switch (verb) {
      case 'up': {
        const store = values.store ?? 'sqlite';
        if (store !== 'sqlite' && store !== 'etcd') throw new UsageError(`--store ${store}: choose sqlite or etcd`);
        const hosts = values.hosts === undefined ? 3 : Number(values.hosts);
        const memory = process.env['FERRY_LAB_HOST_MEMORY'];
        const storage = (values.storage ?? '').split(',').filter(Boolean);
        for (const kind of storage) if (!LAB_STORAGE.includes(kind as LabStorage)) throw new UsageError(`--storage ${kind}: the lab can run ${LAB_STORAGE.join(', ')}`);
        const cpuRestrictions: Record<string, { maxModel: string }> = {};
        for (const pair of (values['cpu-max'] ?? '').split(',').filter(Boolean)) {
          const m = /^(h\d+)=([A-Za-z][A-Za-z0-9._-]*)$/.exec(pair);
          if (!m) throw new UsageError(`--cpu-max ${pair}: HOST=MODEL, as h3=Westmere-v1`);
          cpuRestrictions[m[1]!] = { maxModel: m[2]! };
        }
        const lab = await labUp({ hosts, store, storage: storage as LabStorage[], cpuRestrictions, ...(memory ? { memoryMiBPerHost: Number(memory) } : {}), ...(json ? {} : { log: (l: string) => console.log(l) }) });
        if (json) return void console.log(JSON.stringify(lab, null, 2));
        console.log(`lab up in ${lab.dir} (store ${lab.store}):`);
        for (const h of lab.hosts) console.log(`  ${h.name}  ${h.address}  namespace ${h.netns}  agent pid ${h.pid}`);
        console.log(`  client namespace ${lab.clientNetns} (${lab.clientAddress})`);
        console.log("try: ferry node list; ferry vm create web1 --memory 256; ferry vm migrate web1 --to h2; 'ferry lab down' removes it all");
        return;
      }
      case 'down': {
        const removed = await labDown();
        if (json) console.log(JSON.stringify({ removed }));
        else console.log(removed.length ? `lab removed: ${removed.join(', ')}` : 'no lab to remove');
        return;
      }
      case 'kill-agent':
      case 'start-agent': {
        const lab = await readLab();
        if (!lab) throw new UsageError("no lab is up; run 'ferry lab up'");
        if (!host) throw new UsageError(`ferry lab ${verb} needs a host name`);
        if (verb === 'kill-agent') await killAgent(lab, host);
        else await startAgent(lab, host);
        if (json) console.log(JSON.stringify({ host, done: verb }));
        else console.log(`${verb === 'kill-agent' ? 'killed' : 'started'} the agent of ${host}`);
        return;
      }
      case 'chaos': {
        const lab = await readLab();
        if (!lab) throw new UsageError("no lab is up; run 'ferry lab up'");
        const faults = Number(values.faults ?? 20);
        const maxMinutes = Number(values['max-minutes'] ?? 30);
        if (!Number.isInteger(faults) || faults < 1 || faults > 1000) throw new UsageError('--faults: a whole number from 1 to 1000');
        if (!(maxMinutes > 0 && maxMinutes <= 24 * 60)) throw new UsageError('--max-minutes: more than 0, at most a day');
        const kinds = (values.kinds ?? Object.keys(FAULT_KINDS).join(',')).split(',') as FaultKind[];
        for (const k of kinds) if (!(k in FAULT_KINDS)) throw new UsageError(`--kinds ${k}: choose among ${Object.keys(FAULT_KINDS).join(', ')}`);
        const probe = await Probe.start(lab.clientNetns);
        try {
          const outcomes = await runChaosCampaign(lab, probe, { faults, maxMinutes, kinds, vm: values.vm ?? 'chaos1', log: json ? () => undefined : (l) => console.log(l) });
          if (json) return void console.log(JSON.stringify({ outcomes }, null, 2));
          console.log(table(FAULT_TABLE_HEADER, summarizeFaults(outcomes)));
          if (outcomes.some((o) => o.error)) process.exitCode = 1;
        } finally {
          await probe.close();
        }
        return;
      }
      case 'demo': {
        if (!values.quake) return labDemo(Number(values.rounds ?? 2), json);
        const pool = values.pool ?? 'shared';
        if (pool !== 'shared' && pool !== 'local') throw new UsageError(`--pool ${pool}: choose shared or local`);
        const rounds = Number(values.rounds ?? 1);
        if (!Number.isInteger(rounds) || rounds < 1 || rounds > 10) throw new UsageError('--rounds must be between 1 and 10');
        return quakeDemo(rounds, pool, json);
      }
      default:
        throw new UsageError(USAGE);
    }
  },
};

/** The seed article's demo made real: a game server moves around the hosts while a client keeps playing. */
async function labDemo(rounds: number, json: boolean): Promise<number> {
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new UsageError('--rounds must be between 1 and 20');
  const say = (line: string) => !json && console.log(line);
  const lab = await labUp({ log: say });
  const cli = await Cli.load(path.join(lab.dir, 'context.json'));
  const hosts = lab.hosts.map((h) => h.name);
  let vm = await cli.vm('demo').catch(() => undefined);
  if (!vm) {
    say("creating VM 'demo' on h1: 256 MiB, gamesrv, memcheck filling 64 MiB and rewriting 4 MiB/s,");
    say("  a 64 MiB disk in the hosts' local storage (copied on every hop), diskcheck writing 50 blocks/s to it");
    await cli
      .agent(hosts[0]!)
      .call('POST', '/v1/vms', { name: 'demo', memoryMiB: 256, memcheckMiB: 64, dirtyMiBps: 4, disks: [{ sizeBytes: 64 * 2 ** 20, pool: 'local' }], diskcheckRate: 50 }, 180_000);
    vm = await cli.vm('demo');
  }
  const probe = await Probe.start(lab.clientNetns);
  const rows: (MigrationSummary & { memory: string; disk: string })[] = [];
  const hasDisk = (vm.spec.disks ?? []).length > 0;
  try {
    const display = new ProgressDisplay();
    await tourHosts(hosts, vm.owner, rounds, async (to) => {
      const summary = await migrateWithProbe(cli, 'demo', to, { onProgress: json ? undefined : (from, p) => display.update(progressLine(`demo ${from}→${to}:`, p)) });
      display.clear();
      const verdict = await probe.memcheckVerify(vm.ip!);
      const disk = hasDisk ? await probe.diskcheckVerify(vm.ip!) : undefined;
      const diskBad = disk ? disk.lost + disk.torn + disk.foreign : 0;
      rows.push({
        ...summary,
        memory: verdict.mismatches === 0 ? 'verified' : `${verdict.mismatches} BAD`,
        disk: !disk ? '-' : diskBad === 0 ? `verified (${mib(summary.diskBytes)} copied)` : `${diskBad} BAD blocks`,
      });
      say(`${summary.from} → ${to}: ${summary.status}, total ${ms(summary.totalMs)}, QEMU downtime ${ms(summary.downtimeMs)}, client blackout ${ms(summary.blackoutMs)}`);
      return summary.status === 'completed';
    });
  } finally {
    await probe.close();
  }
  if (json) {
    console.log(JSON.stringify({ hops: rows }, null, 2));
  } else {
    console.log('');
    console.log(
      table(
        ['hop', 'attempts', 'total', 'QEMU downtime', 'client blackout', 'packets lost', 'RAM sent', 'memory', 'disk'],
        rows.map((r) => [`${r.from} → ${r.to}`, String(r.attempts ?? '-'), ms(r.totalMs), ms(r.downtimeMs), ms(r.blackoutMs), r.packetsSent === null ? '-' : `${r.packetsLost}/${r.packetsSent}`, mib(r.bytes), r.memory, r.disk]),
      ),
    );
    console.log('');
    console.log('Where each blackout went (ms; - = not seen): last reply before the stop → source stopped → destination loaded');
    console.log('→ (memory check) → ownership swapped → guest resumed on the destination → first reply to the client:');
    console.log(
      table(
        ['hop', 'reply→stop', 'stop→loaded', 'check', '→owner', 'owner→resumed', 'resumed→reply', 'blackout'],
        rows.map((r) => {
          const b = r.breakdown;
          return [`${r.from} → ${r.to}`, ms(b?.lastReplyToStop), ms(b?.stopToLoaded), ms(b?.verify), ms(b?.toOwned), ms(b?.ownedToResumed), ms(b?.resumedToReply), ms(r.blackoutMs)];
        }),
      ),
    );
    const done = rows.filter((r) => r.status === 'completed');
    console.log(
      `median of ${done.length} completed hops: total ${medianCell(done.map((r) => r.totalMs))} (last attempt; ${medianCell(done.map((r) => r.totalMsAllAttempts))} with failed attempts), ` +
        `QEMU downtime ${medianCell(done.map((r) => r.downtimeMs))}, client blackout ${medianCell(done.map((r) => r.blackoutMs))}; attempts per hop ${done.map((r) => r.attempts ?? '?').join(', ')}`,
    );
    console.log('');
    console.log('The lab keeps running. Try:');
    console.log('  ferry node list; ferry vm list; ferry probe demo --seconds 5');
    console.log('  ferry vm migrate demo --to h2; ferry job list');
    console.log('  ferry lab down        # removes the namespaces, agents, guests and state it made');
  }
  return rows.every((r) => r.status === 'completed' && r.memory === 'verified' && (r.disk === '-' || r.disk.startsWith('verified'))) ? 0 : 1;
}
