/**
 * Bash completion: `ferry completion bash` prints the script (setup installs it in
 * /etc/bash_completion.d/ferry); the script asks `ferry __complete WORDS…` for the candidates of the
 * last word — commands, their verbs and flags (read from each command's usage text), VM names from
 * the cluster, host names from the context.
 */
import type { Command } from './command.ts';

export const BASH_SCRIPT = `# bash completion for ferry (ferry completion bash)
_ferry() {
  local IFS=$'\\n'
  COMPREPLY=($(ferry __complete "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _ferry ferry
`;

/** Verbs that take a VM name next. */
const HA_VM_VERBS = new Set(['add', 'set', 'remove']);
const VM_VERBS = new Set(['show', 'start', 'stop', 'destroy', 'migrate', 'console', 'vnc', 'cdrom', 'fsfreeze', 'recover']);
const HOST_FLAGS = new Set(['--host', '--to']);

export interface CompletionSources {
  commands: Record<string, () => Promise<Command>>;
  vmNames(): Promise<string[]>;
  hostNames(): Promise<string[]>;
}

/** Candidates for the last of `words` (the words after `ferry`, the last one being completed). */
export async function complete(words: string[], sources: CompletionSources): Promise<string[]> {
  const current = words[words.length - 1] ?? '';
  const before = words.slice(0, -1);
  const starts = (xs: string[]) => [...new Set(xs)].filter((x) => x.startsWith(current)).sort();
  if (before.length === 0) return starts(Object.keys(sources.commands));
  const load = sources.commands[before[0]!];
  if (!load) return [];
  const usage = (await load()).usage;
  const previous = before[before.length - 1]!;
  if (HOST_FLAGS.has(previous)) return starts(await sources.hostNames());
  if (current.startsWith('-')) return starts(usage.match(/--[a-z][a-z-]*/g) ?? []);
  if (before.length === 1) {
    const verbs = [...usage.matchAll(new RegExp(`ferry ${before[0]} ([a-z][a-z-]*(?:\\|[a-z][a-z-]*)*)`, 'g'))].flatMap((m) => m[1]!.split('|'));
    return starts(verbs);
  }
  if (before[0] === 'vm' && before.length === 2 && VM_VERBS.has(before[1]!)) return starts(await sources.vmNames());
  if (before[0] === 'ha' && before.length === 2 && HA_VM_VERBS.has(before[1]!)) return starts(await sources.vmNames());
  return [];
}
