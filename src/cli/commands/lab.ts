/** ferry lab up|down|kill-agent|start-agent: many hosts on one machine. */
import { parseArgs } from 'node:util';
import { DEFAULT_LAB_DIR, killAgent, labDown, labUp, readLab, startAgent } from '../../lab/lab.ts';
import { UsageError } from '../errors.ts';
import type { Command } from '../main.ts';

const USAGE = `Usage:
  ferry lab up [--hosts 3] [--store sqlite|etcd] [--json]   bring up hosts (network namespaces with agents), a switch and a client
  ferry lab down [--json]                                    remove everything the lab made (recorded in its lab.json)
  ferry lab kill-agent HOST | start-agent HOST               stop / restart one host's agent (its guests keep running)

The lab lives in ${DEFAULT_LAB_DIR} (FERRY_LAB_DIR to change); guests get 10.80.0.100-199, hosts 10.80.0.11-19.`;

export const labCommand: Command = {
  summary: 'many hosts on one machine: network namespaces, a switch, agents, a probe client',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { hosts: { type: 'string' }, store: { type: 'string' }, json: { type: 'boolean' } } });
    const [verb, host] = positionals;
    const json = values.json ?? false;
    switch (verb) {
      case 'up': {
        const store = values.store ?? 'sqlite';
        if (store !== 'sqlite' && store !== 'etcd') throw new UsageError(`--store ${store}: choose sqlite or etcd`);
        const hosts = values.hosts === undefined ? 3 : Number(values.hosts);
        const memory = process.env['FERRY_LAB_HOST_MEMORY'];
        const lab = await labUp({ hosts, store, ...(memory ? { memoryMiBPerHost: Number(memory) } : {}), ...(json ? {} : { log: (l: string) => console.log(l) }) });
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
      default:
        throw new UsageError(USAGE);
    }
  },
};
