/**
 * `ferry vm vnc NAME`: the VM's VNC display on a port of this machine's loopback, for any VNC
 * viewer. Each viewer connection becomes a websocket to the agent of the host that runs the VM
 * now (looked up per connection: after a migration the viewer reconnects and reaches the new host).
 * Only loopback: the display needs no password because only the admin's certificate reaches it.
 */
import net from 'node:net';
import { createWebSocketStream } from 'ws';
import type { Cli } from './context.ts';
import { UsageError } from './errors.ts';

export async function forwardDisplay(cli: Cli, name: string, listen: string, json: boolean): Promise<number> {
  const m = /^(127\.\d+\.\d+\.\d+|localhost|\[::1\]|::1):(\d+)$/.exec(listen);
  if (!m) throw new UsageError(`--listen ${listen}: give a loopback address and port such as 127.0.0.1:5900 (0 picks a free port); the display has no password of its own, so ferry serves it only on this machine`);
  await cli.vm(name); // refused at once for an unknown VM
  // Notes go to stderr, also with --json: stdout carries only the one JSON document.
  const note = (line: string) => process.stderr.write(`[ferry: ${line}]\n`);
  const server = net.createServer((viewer) => {
    viewer.pause();
    void (async () => {
      try {
        const vm = await cli.vm(name);
        const ws = await cli.agent(vm.owner).openDisplay(name);
        if (viewer.destroyed) return ws.terminate(); // the viewer left meanwhile: the agent's slot goes back
        const stream = createWebSocketStream(ws);
        note(`viewer ${viewer.remoteAddress}:${viewer.remotePort} connected to ${name} on ${vm.owner}`);
        ws.on('close', (code, reason) => {
          if (code === 1012) note(`${name} left ${vm.owner} (${reason.toString()}); the viewer reconnects to reach it where it runs now`);
          viewer.destroy();
        });
        stream.on('error', () => viewer.destroy());
        viewer.on('error', () => stream.destroy());
        viewer.on('close', () => stream.destroy());
        viewer.pipe(stream).pipe(viewer);
        viewer.resume();
      } catch (err) {
        note(`could not open the display of ${name}: ${(err as Error).message}`);
        viewer.destroy();
      }
    })();
  });
  const host = m[1]!.replace(/^\[|\]$/g, '');
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new UsageError(`cannot listen on ${listen}: ${err.message}`)));
    server.listen(Number(m[2]), host, resolve);
  });
  const address = server.address() as net.AddressInfo;
  if (json) console.log(JSON.stringify({ vm: name, listen: { host: address.address, port: address.port } }));
  else console.log(`VNC display of ${name} on ${address.address}:${address.port} — point a viewer at it (e.g. vncviewer ${address.address}::${address.port}); Ctrl-C stops`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  server.close();
  return 0;
}
