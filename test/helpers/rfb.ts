/**
 * The opening of the RFB (VNC) protocol, as a viewer speaks it (RFC 6143): version, security type
 * None, ClientInit, and the server's ServerInit — the display's size and name. What a user's viewer
 * would show first; enough to know the display behind a relay is the VM's.
 */
import type { Duplex } from 'node:stream';

export interface ServerInit {
  version: string;
  width: number;
  height: number;
  name: string;
}

export async function rfbHandshake(stream: Duplex, timeoutMs = 10_000): Promise<ServerInit> {
  let buffered = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  let ended: Error | undefined;
  stream.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    wake?.();
  });
  stream.on('close', () => {
    ended = new Error('the display closed the connection');
    wake?.();
  });
  stream.on('error', (err) => {
    ended = err;
    wake?.();
  });
  const deadline = Date.now() + timeoutMs;
  const read = async (n: number): Promise<Buffer> => {
    while (buffered.length < n) {
      if (ended) throw ended;
      if (Date.now() > deadline) throw new Error(`the RFB handshake did not finish within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    const out = buffered.subarray(0, n);
    buffered = buffered.subarray(n);
    return out;
  };
  const version = (await read(12)).toString('latin1');
  if (!/^RFB \d{3}\.\d{3}\n$/.test(version)) throw new Error(`not an RFB server: ${JSON.stringify(version)}`);
  stream.write('RFB 003.008\n');
  const count = (await read(1))[0]!;
  if (count === 0) throw new Error(`the server refused: ${(await read((await read(4)).readUInt32BE(0))).toString()}`);
  const types = [...(await read(count))];
  if (!types.includes(1)) throw new Error(`the server wants authentication (security types ${types.join(', ')}); the relay's display should need none`);
  stream.write(Buffer.from([1]));
  const result = (await read(4)).readUInt32BE(0);
  if (result !== 0) throw new Error(`security result ${result}`);
  stream.write(Buffer.from([1])); // ClientInit: share the display with other viewers
  const init = await read(24);
  const name = (await read(init.readUInt32BE(20))).toString('utf8');
  return { version: version.trim(), width: init.readUInt16BE(0), height: init.readUInt16BE(2), name };
}
