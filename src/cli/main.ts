/** `ferry`: the command line, in the habits of virsh and qm. */
import { UsageError } from './errors.ts';
import { demoCommand } from './commands/demo.ts';
import { guestCommand } from './commands/guest.ts';
import { hostCommand } from './commands/host.ts';
import { agentCommand, bundlesCommand, initCommand, joinCommand } from './commands/cluster.ts';
import { jobCommand } from './commands/job.ts';
import { labCommand } from './commands/lab.ts';
import { nodeCommand } from './commands/node.ts';
import { probeCommand } from './commands/probe.ts';
import { vmCommand } from './commands/vm.ts';
import { storageCommand } from './commands/storage.ts';
import { volumeCommand } from './commands/volume.ts';
import { imageCommand } from './commands/image.ts';
import { networkCommand } from './commands/network.ts';
import { storeUserCommand } from './commands/store-user.ts';
import { certCommand } from './commands/cert.ts';

export interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<number | void>;
}

const COMMANDS: Record<string, Command> = {
  lab: labCommand,
  node: nodeCommand,
  vm: vmCommand,
  storage: storageCommand,
  volume: volumeCommand,
  image: imageCommand,
  network: networkCommand,
  'store-user': storeUserCommand,
  cert: certCommand,
  job: jobCommand,
  probe: probeCommand,
  init: initCommand,
  join: joinCommand,
  bundles: bundlesCommand,
  agent: agentCommand,
  demo: demoCommand,
  host: hostCommand,
  guest: guestCommand,
};

function help(): string {
  const names = Object.keys(COMMANDS);
  const width = Math.max(...names.map((n) => n.length));
  return [
    'ferry — live migration first cluster manager for QEMU/KVM',
    '',
    'Usage: ferry <command> [options]   (ferry <command> --help for its options)',
    '',
    'Commands:',
    ...names.map((n) => `  ${n.padEnd(width)}  ${COMMANDS[n]!.summary}`),
    '',
    'Options common to all commands: --json prints one JSON document instead of text.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command '${name}'; run 'ferry --help' for the list`);
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.usage);
    return 0;
  }
  return (await command.run(rest)) ?? 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    console.error(`ferry: ${e.message}`);
    if (process.env['FERRY_DEBUG']) console.error(e.stack);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  },
);
