/** `ferry ARGS`: which command runs, its help, the version and the completion hooks. */
import { UsageError } from './errors.ts';
import type { Command } from './command.ts';
import { FERRY_VERSION } from '../util/project.ts';

/**
 * Each command is loaded when it runs: `ferry vm list` loads the VM commands, not the lab, the
 * storage drivers or the benchmarks. `ferry --help` loads them all for their summaries.
 */
export const COMMANDS: Record<string, () => Promise<Command>> = {
  lab: async () => (await import('./commands/lab.ts')).labCommand,
  node: async () => (await import('./commands/node.ts')).nodeCommand,
  vm: async () => (await import('./commands/vm.ts')).vmCommand,
  storage: async () => (await import('./commands/storage.ts')).storageCommand,
  volume: async () => (await import('./commands/volume.ts')).volumeCommand,
  image: async () => (await import('./commands/image.ts')).imageCommand,
  network: async () => (await import('./commands/network.ts')).networkCommand,
  job: async () => (await import('./commands/job.ts')).jobCommand,
  ha: async () => (await import('./commands/ha.ts')).haCommand,
  cluster: async () => (await import('./commands/cluster-state.ts')).clusterCommand,
  user: async () => (await import('./commands/user.ts')).userCommand,
  token: async () => (await import('./commands/user.ts')).tokenCommand,
  ui: async () => (await import('./commands/user.ts')).uiCommand,
  probe: async () => (await import('./commands/probe.ts')).probeCommand,
  init: async () => (await import('./commands/cluster.ts')).initCommand,
  join: async () => (await import('./commands/cluster.ts')).joinCommand,
  bundles: async () => (await import('./commands/cluster.ts')).bundlesCommand,
  cert: async () => (await import('./commands/cert.ts')).certCommand,
  'store-user': async () => (await import('./commands/store-user.ts')).storeUserCommand,
  agent: async () => (await import('./commands/cluster.ts')).agentCommand,
  watchdog: async () => (await import('./commands/watchdog.ts')).watchdogCommand,
  demo: async () => (await import('./commands/demo.ts')).demoCommand,
  host: async () => (await import('./commands/host.ts')).hostCommand,
  guest: async () => (await import('./commands/guest.ts')).guestCommand,
};


async function help(): Promise<string> {
  const names = Object.keys(COMMANDS);
  const width = Math.max(...names.map((n) => n.length));
  const summaries = await Promise.all(names.map(async (n) => (await COMMANDS[n]!()).summary));
  return [
    'ferry — live migration first cluster manager for QEMU/KVM',
    '',
    'Usage: ferry <command> [options]   (ferry <command> --help for its options)',
    '',
    'Commands:',
    ...names.map((n, i) => `  ${n.padEnd(width)}  ${summaries[i]}`),
    '',
    'Options common to all commands: --json prints one JSON document instead of text.',
  ].join('\n');
}

/** Runs `ferry ARGV`: its exit code, or a throw (a UsageError for a mistake in how it was called). */
export async function runCli(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(await help());
    return 0;
  }
  if (name === 'completion') {
    if (rest.length !== 1 || rest[0] !== 'bash') throw new UsageError('ferry completion bash: prints the bash completion script (setup installs it in /etc/bash_completion.d/ferry)');
    process.stdout.write((await import('./completion.ts')).BASH_SCRIPT);
    return 0;
  }
  if (name === '__complete') {
    const { complete } = await import('./completion.ts');
    // Names from the cluster only where a context exists; a completion never fails loudly.
    const fromCluster = async (read: () => Promise<string[]>) => read().catch(() => [] as string[]);
    const cli = async () => (await import('./context.ts')).Cli.load();
    const words = await complete(rest, {
      commands: COMMANDS,
      vmNames: () => fromCluster(async () => ((await (await (await cli()).anyAgent()).call<{ vms: Array<{ spec: { name: string } }> }>('GET', '/v1/cluster/vms', undefined, 2000)).vms.map((v) => v.spec.name))),
      hostNames: () => fromCluster(async () => (await cli()).context.agents.map((a) => a.name)),
    });
    if (words.length) console.log(words.join('\n'));
    return 0;
  }
  if (name === '--version' || name === 'version') {
    console.log(`ferry ${FERRY_VERSION}`);
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) throw new UsageError(`unknown command '${name}'; run 'ferry --help' for the list`);
  const command = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.usage);
    return 0;
  }
  return (await command.run(rest)) ?? 0;
}
