/**
 * `ferry vm console NAME`: the VM's serial line, interactive, from wherever the CLI runs. Ctrl-]
 * leaves (as in virsh and telnet). When the stream ends because the VM moved (its old QEMU is gone),
 * the console finds the VM's new host and reconnects; when the VM stopped, it says so and ends.
 */
import type { Duplex } from 'node:stream';
import type { Cli } from './context.ts';

/** Ctrl-] */
const ESCAPE = 0x1d;
/** How long to look for the VM again after its console closed (a migration's switchover, a restart). */
const RECONNECT_MS = 30_000;

export async function interactiveConsole(cli: Cli, name: string, options: { force: boolean }): Promise<number> {
  const stdin = process.stdin;
  const note = (line: string) => process.stderr.write(`\r\n[ferry: ${line}]\r\n`);
  let leaving = false;
  let current: Duplex | undefined;
  const onInput = (chunk: Buffer) => {
    const at = chunk.indexOf(ESCAPE);
    if (at >= 0) {
      if (at > 0) current?.write(chunk.subarray(0, at));
      leaving = true;
      current?.destroy();
      return;
    }
    current?.write(chunk);
  };
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onInput);
  stdin.once('end', () => {
    // Input piped in and finished: leave once the guest had a moment to answer.
    setTimeout(() => {
      leaving = true;
      current?.destroy();
    }, 1500);
  });
  try {
    let host = (await cli.vm(name)).owner;
    let force = options.force;
    for (;;) {
      current = await cli.agent(host).openConsole(name, force);
      current.on('error', () => current?.destroy()); // a reset ends this stream like a close: the VM is looked for again
      force = false;
      note(`connected to the serial console of ${name} on ${host}; Ctrl-] leaves`);
      current.pipe(process.stdout, { end: false });
      await new Promise<void>((resolve) => current!.once('close', () => resolve()));
      if (leaving) return 0;
      const next = await findAgain(cli, name);
      if (leaving) return 0; // Ctrl-] while the VM was looked for
      if (!next) {
        note(`the console of ${name} closed and the VM is not running (see 'ferry vm show ${name}')`);
        return 1;
      }
      note(next === host ? `the console of ${name} closed; reconnecting` : `${name} moved to ${next}; reconnecting there`);
      host = next;
    }
  } finally {
    stdin.off('data', onInput);
    if (stdin.isTTY) stdin.setRawMode(false);
    stdin.pause();
  }
}

/** The host that runs the VM now, once its console can be opened again; undefined if it does not run. */
async function findAgain(cli: Cli, name: string): Promise<string | undefined> {
  const deadline = Date.now() + RECONNECT_MS;
  while (Date.now() < deadline) {
    const vm = await cli.vm(name).catch(() => undefined);
    if (!vm || vm.desired === 'stopped') return undefined;
    const health = await cli.agent(vm.owner).call<{ vms: { name: string }[] }>('GET', '/v1/health').catch(() => undefined);
    if (health?.vms.some((v) => v.name === name)) return vm.owner;
    await new Promise((r) => setTimeout(r, 300));
  }
  return undefined;
}
