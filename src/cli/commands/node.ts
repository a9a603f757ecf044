import { parseArgs } from 'node:util';
import type { HostRecord } from '../../cluster/model.ts';
import { Cli } from '../context.ts';
import { UsageError } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../main.ts';

export const nodeCommand: Command = {
  summary: 'the cluster\'s hosts: ferry node list',
  usage: 'Usage: ferry node list [--json]',
  async run(args) {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' }, context: { type: 'string' } } });
    if (positionals[0] !== 'list') throw new UsageError('usage: ferry node list [--json]');
    const cli = await Cli.load(values.context);
    const { hosts } = await (await cli.anyAgent()).call<{ hosts: (HostRecord & { freeMemoryMiB: number })[] }>('GET', '/v1/cluster/hosts');
    const known = new Set(hosts.map((h) => h.name));
    const down = cli.context.agents.filter((a) => !known.has(a.name)).map((a) => a.name);
    if (values.json) return void console.log(JSON.stringify({ hosts, down }, null, 2));
    console.log(
      table(
        ['host', 'address', 'memory', 'free', 'QEMU', 'newest machine type', 'state'],
        [
          ...hosts.map((h) => [h.name, h.address, `${h.memoryMiB} MiB`, `${h.freeMemoryMiB} MiB`, h.qemu?.version ?? '-', h.qemu?.machineTypes[0] ?? '-', 'up']),
          ...down.map((d) => [d, '-', '-', '-', '-', '-', 'down']),
        ],
      ),
    );
  },
};
