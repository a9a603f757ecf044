/** ferry watchdog: the watchdog outside the agent, which the agent pets (agent/watchdog.ts). */
import { runWatchdog } from '../../agent/watchdog.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage: ferry watchdog --socket PATH (--device /dev/watchdog | --kill-guests)
  Runs in the foreground (contrib/ferry-watchdog.service). The agent (node.json "watchdog": {"socket": PATH})
  pets it after each lease renewal while it runs HA guests. When the pets stop for longer than the
  deadline of the timing chain (before the host's lease can expire):
    --device      the kernel watchdog (softdog, or the hardware's) is fed until the deadline minus its own
                  timeout after the last pet, so the machine resets at the deadline; its timeout must be
                  below the deadline less a second (softdog soft_margin=5 for the default 10 s lease,
                  whose deadline is 8.3 s)
    --kill-guests SIGKILL the guests' QEMUs (the lab, where no machine may be reset)`;

export const watchdogCommand: Command = {
  summary: "the watchdog outside the agent: resets the machine (or kills the HA guests) when the agent falls silent",
  usage: USAGE,
  async run(args) {
    const { values } = parseCommandLine({ args, options: { socket: { type: 'string' }, device: { type: 'string' }, 'kill-guests': { type: 'boolean' } } });
    if (!values.socket) throw new UsageError(USAGE);
    if (Boolean(values.device) === Boolean(values['kill-guests'])) throw new UsageError(`choose one of --device PATH and --kill-guests\n${USAGE}`);
    const log = (line: string) => console.log(`${new Date().toISOString()} watchdog: ${line}`);
    const daemon = await runWatchdog(values.socket, values.device ? { kind: 'device', path: values.device } : { kind: 'guests' }, log);
    await new Promise<void>((resolve) => {
      for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => resolve());
    });
    // Stopped on purpose: a watchdog that goes away while armed leaves the device unfed (it resets), as it should.
    await daemon.close();
    process.exit(0);
  },
};
