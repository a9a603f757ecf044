/** `ferry`: the command line, in the habits of virsh and qm. */
import { UsageError } from './errors.ts';
import { runCli } from './dispatch.ts';

export type { Command } from './command.ts';

runCli(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    console.error(`ferry: ${e.message}`);
    if (process.env['FERRY_DEBUG']) console.error(e.stack);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  },
);
