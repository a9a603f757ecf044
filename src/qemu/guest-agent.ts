/**
 * The QEMU guest agent (qemu-ga in the guest) over its virtio-serial channel: what the guest says
 * about itself (addresses, OS), a clean shutdown, and filesystem freeze for consistent snapshots.
 * It is a convenience: a guest without it (or with it hung) answers nothing, and nothing in a
 * migration waits for it. Every call has a short deadline; the channel is opened per call, because
 * QEMU serves one client and a guest agent that restarted must be resynchronised anyway.
 */
import net from 'node:net';
import { randomInt } from 'node:crypto';

export class GuestAgentUnavailableError extends Error {
  override name = 'GuestAgentUnavailableError';
}

/** The guest agent answered, and refused (thawing filesystems that are not frozen, say). */
export class GuestAgentRefusedError extends Error {
  override name = 'GuestAgentRefusedError';
}

export interface GuestInterface {
  name: string;
  mac?: string;
  addresses: string[];
}

export interface GuestOs {
  name?: string;
  version?: string;
  kernel?: string;
}

/** Runs one guest agent command after a guest-sync handshake; GuestAgentUnavailableError if the guest does not answer in time. */
export async function guestAgentCall<T>(socketPath: string, command: string, args?: Record<string, unknown>, timeoutMs = 3000, expectReply = true): Promise<T> {
  const socket = net.connect(socketPath);
  try {
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new GuestAgentUnavailableError(`the guest agent did not answer '${command}' within ${timeoutMs} ms (is qemu-ga running in the guest?)`)), timeoutMs);
      const id = randomInt(1, 2 ** 31);
      let synced = false;
      let buffer = Buffer.alloc(0);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new GuestAgentUnavailableError(`the guest agent channel cannot be opened: ${err.message}`));
      });
      socket.on('data', (chunk: Buffer) => {
        buffer = Buffer.concat([buffer, chunk]);
        // A delimited sync is answered after a 0xFF byte (never part of UTF-8): whatever came before is a stale reply.
        const marker = buffer.lastIndexOf(0xff);
        if (!synced && marker >= 0) buffer = buffer.subarray(marker + 1);
        let newline: number;
        while ((newline = buffer.indexOf(0x0a)) >= 0) {
          const line = buffer.subarray(0, newline).toString('utf8').trim();
          buffer = buffer.subarray(newline + 1);
          if (!line) continue;
          let reply: { return?: unknown; error?: { desc?: string } };
          try {
            reply = JSON.parse(line) as typeof reply;
          } catch {
            continue;
          }
          if (!synced) {
            if (reply.return === id) {
              synced = true;
              socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n');
              if (!expectReply) {
                clearTimeout(timer);
                socket.end(() => resolve(undefined as T));
              }
            }
            continue;
          }
          clearTimeout(timer);
          if (reply.error) reject(new GuestAgentRefusedError(`the guest agent refused ${command}: ${reply.error.desc ?? 'no reason given'}`));
          else resolve(reply.return as T);
          return;
        }
      });
      socket.once('connect', () => socket.write(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n'));
    });
  } finally {
    socket.destroy();
  }
}

/** What the guest agent says about the guest; undefined fields where it said nothing. */
export async function guestInfo(socketPath: string): Promise<{ os: GuestOs; interfaces: GuestInterface[] }> {
  const raw = await guestAgentCall<{ name: string; 'hardware-address'?: string; 'ip-addresses'?: { 'ip-address': string; prefix: number }[] }[]>(socketPath, 'guest-network-get-interfaces');
  const os = await guestAgentCall<{ 'pretty-name'?: string; name?: string; 'version-id'?: string; 'kernel-release'?: string }>(socketPath, 'guest-get-osinfo').catch(() => ({}) as Record<string, undefined>);
  return {
    os: {
      ...(os['pretty-name'] ?? os.name ? { name: os['pretty-name'] ?? os.name } : {}),
      ...(os['version-id'] ? { version: os['version-id'] } : {}),
      ...(os['kernel-release'] ? { kernel: os['kernel-release'] } : {}),
    },
    interfaces: raw
      .filter((i) => i.name !== 'lo')
      .map((i) => ({ name: i.name, ...(i['hardware-address'] ? { mac: i['hardware-address'] } : {}), addresses: (i['ip-addresses'] ?? []).map((a) => `${a['ip-address']}/${a.prefix}`) })),
  };
}

/**
 * Asks the guest to shut down through its agent: true if the agent took the request (it sends no
 * answer to this one), false if no agent answered (then ACPI is the way).
 */
export async function guestShutdown(socketPath: string): Promise<boolean> {
  return guestAgentCall(socketPath, 'guest-shutdown', { mode: 'powerdown' }, 2000, false).then(
    () => true,
    () => false,
  );
}
