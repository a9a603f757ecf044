/** ferry probe VM: a game-like UDP client in the lab's client namespace. */
import { Probe } from '../../lab/probe.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';

export const probeCommand: Command = {
  summary: "play against a guest's gamesrv at 200 packets/s and report gaps and losses (or verify its memory)",
  usage: [
    'Usage: ferry probe VM [--seconds N] [--hz 200] [--verify] [--json]',
    '',
    '  Prints, each second, the longest gap between replies and the packets lost; at the end a summary.',
    "  --verify asks the guest's memcheck to verify its memory instead.",
  ].join('\n'),
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: { seconds: { type: 'string' }, hz: { type: 'string' }, verify: { type: 'boolean' }, json: { type: 'boolean' }, context: { type: 'string' } },
    });
    const name = positionals[0];
    if (!name) throw new UsageError('ferry probe needs a VM name');
    const cli = await Cli.load(values.context);
    if (!cli.context.clientNetns) throw new UsageError('this cluster has no probe client namespace (the lab has one)');
    const vm = await cli.vm(name);
    if (!vm.ip) throw new UsageError(`'${name}' has no known address to probe`);
    const probe = await Probe.start(cli.context.clientNetns);
    try {
      if (values.verify) {
        const verdict = await probe.memcheckVerify(vm.ip);
        console.log(values.json ? JSON.stringify(verdict) : `${name}: ${verdict.pages} pages checked, ${verdict.mismatches} mismatches`);
        return verdict.mismatches === 0 ? 0 : 1;
      }
      const seconds = Number(values.seconds ?? 10);
      const hz = Number(values.hz ?? 200);
      if (!(hz >= 1 && hz <= 2000)) throw new UsageError('--hz must be between 1 and 2000');
      await probe.startStream(vm.ip, hz);
      let worst = 0;
      let lost = 0;
      let sent = 0;
      for (let s = 1; s <= seconds; s++) {
        await new Promise((r) => setTimeout(r, 1000));
        const w = await probe.window();
        worst = Math.max(worst, w.maxGapMs);
        lost += w.lost;
        sent += w.sent;
        if (!values.json) console.log(`${s}s: ${w.received}/${w.sent} replies, longest gap ${w.maxGapMs} ms, tick ${w.lastTick}`);
      }
      await probe.stopStream();
      const summary = { vm: name, address: vm.ip, hz, seconds, sent, lost, maxGapMs: worst };
      console.log(values.json ? JSON.stringify(summary) : `${name}: ${lost} of ${sent} packets lost, longest gap ${worst} ms`);
    } finally {
      await probe.close();
    }
  },
};
