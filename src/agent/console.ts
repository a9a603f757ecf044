/**
 * The serial console of a VM, from anywhere: `ferry vm console` upgrades its HTTPS connection to the
 * VM's agent (mutual TLS, admin only) into a byte stream, which the agent relays to the socket QEMU
 * serves the serial port on. QEMU serves one client at a time: so does the relay (a second one is
 * refused, or takes over with force). When the VM moves, its old QEMU goes and the stream ends; the
 * client asks again, and reaches the new host.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { LocalRuntime } from './runtime.ts';

/** A console or display connection refused before it was upgraded, with the HTTP status to answer. */
export class UpgradeRefusedError extends Error {
  override name = 'UpgradeRefusedError';
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

interface Session {
  client: Duplex;
  who: string;
  since: string;
}

export class ConsoleRelay {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly runtime: LocalRuntime, private readonly log: (line: string) => void) {}

  /** Connects an upgraded client connection to the VM's serial port; throws UpgradeRefusedError before answering 101. */
  async attach(vm: string, client: Duplex, head: Buffer, who: string, force: boolean): Promise<void> {
    const instance = this.runtime.get(vm);
    if (!instance) throw new UpgradeRefusedError(404, `VM '${vm}' is not running on this host`);
    const open = this.sessions.get(vm);
    if (open && !force) throw new UpgradeRefusedError(409, `the console of '${vm}' is open already (by ${open.who} since ${open.since}); add --force to take it over`);
    // The slot is this client's from here on (a second attach in the meantime sees it taken).
    const session: Session = { client, who, since: new Date().toISOString() };
    this.sessions.set(vm, session);
    if (open) {
      open.client.end('\r\n[ferry: another console session took over]\r\n');
      setTimeout(() => open.client.destroy(), 200).unref();
    }
    const release = () => {
      if (this.sessions.get(vm) === session) this.sessions.delete(vm);
    };
    let serial: net.Socket;
    try {
      serial = await connectQemuSocket(instance.serialSocket, `the serial console of '${vm}'`);
    } catch (err) {
      release();
      throw err;
    }
    const close = () => {
      release();
      client.destroy();
      serial.destroy();
    };
    if (client.destroyed) return close(); // it left while QEMU's socket was being reached
    this.log(`console of ${vm} opened by ${who}`);
    client.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: ferry-console\r\nConnection: Upgrade\r\n\r\n');
    if (head.length) serial.write(head);
    client.pipe(serial);
    // QEMU's serial port waits for its reader: a viewer that stops reading must not stall the guest's
    // console writes, so output it cannot take (over 1 MiB queued) is dropped for it, and said so once.
    let dropping = false;
    serial.on('data', (chunk: Buffer) => {
      if (client.writableLength > MAX_QUEUED_BYTES) {
        if (!dropping) this.log(`console of ${vm}: ${who} does not keep up; dropping output for it`);
        dropping = true;
        return;
      }
      dropping = false;
      client.write(chunk);
    });
    client.on('close', close);
    client.on('error', close);
    serial.on('close', close);
    serial.on('error', close);
  }
}

/** A socket QEMU serves in the VM's directory; refused with 502 (and what to do) when it cannot be reached. */
export function connectQemuSocket(socketPath: string, what: string): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(socketPath);
    s.once('connect', () => resolve(s));
    s.once('error', (err) => reject(new UpgradeRefusedError(502, `${what} cannot be reached (${err.message}); a VM started by an older ferry has none: stop and start it`)));
  });
}

/** Output queued for a slow console client before more is dropped. */
const MAX_QUEUED_BYTES = 1024 * 1024;
