import { createServer, connect } from 'node:net';

/** A TCP port free on `address` right now (the caller binds it, and retries if it was taken meanwhile). */
export function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, address, () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** Whether something accepts TCP connections at address:port. */
export function accepts(address: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: address, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

const CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;

/** ADDR/PREFIX read as numbers (an address, its network's base, the prefix of 8 to 30 bits), or undefined if it is not one. */
export function parseCidr(text: string): { address: number; base: number; prefixLength: number } | undefined {
  const m = CIDR.exec(text);
  if (!m) return undefined;
  const octets = m.slice(1, 5).map(Number);
  const prefixLength = Number(m[5]);
  if (octets.some((o) => o > 255) || prefixLength < 8 || prefixLength > 30) return undefined;
  const address = octets.reduce((a, o) => a * 256 + o, 0);
  return { address, base: address - (address % 2 ** (32 - prefixLength)), prefixLength };
}

/** Whether ADDR/PREFIX is a host address inside `subnet` (not its network or broadcast address), with the subnet's prefix length. */
export function inSubnet(addressWithPrefix: string, subnet: string): boolean {
  const net = parseCidr(subnet);
  const host = parseCidr(addressWithPrefix);
  if (!net || !host) return false;
  const offset = host.address - net.base;
  return host.prefixLength === net.prefixLength && offset > 0 && offset < 2 ** (32 - net.prefixLength) - 1;
}
