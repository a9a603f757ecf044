/**
 * The watchdog outside the agent (Proxmox's watchdog-mux, sanlock's wdmd): `ferry watchdog` runs as a
 * process of its own and the agent pets it over a unix socket after each lease renewal. If the pets
 * stop for longer than the deadline the agent gave (it is dead, frozen, or cut off from the store and
 * somehow did not fence itself), the watchdog acts before the host's lease can expire and the HA
 * manager start the guests elsewhere (cluster/ha/timing.ts):
 *
 *   device mode  (production) it feeds /dev/watchdog on its own timer until (deadline - the device's
 *                timeout, read from sysfs) after the last pet, then never again: the kernel's watchdog
 *                (softdog or hardware) resets the machine at the deadline. A disarm closes the device
 *                with the magic 'V'; a pet that comes after the feeding stopped changes nothing.
 *   guests mode  (the lab, where no machine may be reset) it SIGKILLs the guests' QEMUs the agent
 *                named in its last pet, after checking each pid still is a QEMU.
 *
 * Armed only while the agent names guests to guard (its HA guests): a host with none may restart its
 * agent at leisure, as with Proxmox's LRM. Messages are JSON lines:
 *   {"pet": {"deadlineMs": 8333, "guests": [pid, …]}}   {"disarm": true}
 */
import { openSync, readFileSync, writeSync, closeSync } from 'node:fs';
import { chmod, rm } from 'node:fs/promises';
import path from 'node:path';
import net from 'node:net';

export type WatchdogAction = { kind: 'device'; path: string } | { kind: 'guests' };

export interface PetMessage {
  pet: { deadlineMs: number; guests: number[] };
}

export interface WatchdogDaemon {
  close(): Promise<void>;
}

/** The device's own timeout, from sysfs (/dev/watchdog → the first watchdog's, /dev/watchdogN → its own). */
function deviceTimeoutMs(devicePath: string): number {
  const name = path.basename(devicePath) === 'watchdog' ? 'watchdog0' : path.basename(devicePath);
  const seconds = Number(readFileSync(`/sys/class/watchdog/${name}/timeout`, 'utf8').trim());
  if (!(seconds > 0)) throw new Error(`cannot read the timeout of ${devicePath} from /sys/class/watchdog/${name}/timeout`);
  return seconds * 1000;
}

export async function runWatchdog(socketPath: string, action: WatchdogAction, log: (line: string) => void): Promise<WatchdogDaemon> {
  let lastPet = 0;
  let deadlineMs = 0;
  let guests: number[] = [];
  let device: number | undefined;
  // Device mode: fed every second until (deadline - the device's timeout) after the last pet, so the
  // machine resets at the deadline whatever the device's timeout; once it went unfed, never again.
  let timeoutMs = 0;
  let expired = false;
  if (action.kind === 'device') {
    timeoutMs = deviceTimeoutMs(action.path);
    device = openSync(action.path, 'w'); // at start: a device that cannot be opened is an error now, not at the first pet
    writeSync(device, 'V'); // opened means armed: stand it down until a pet names guests
    closeSync(device);
    device = undefined;
  }
  const armed = () => guests.length > 0;

  const feed = () => {
    if (action.kind !== 'device' || expired) return;
    try {
      device ??= openSync(action.path, 'w');
      writeSync(device, '\0');
    } catch (err) {
      log(`cannot feed ${action.path}: ${(err as Error).message}; the machine resets when its timeout runs out`);
    }
  };

  const disarm = (why: string) => {
    if (device !== undefined && !expired) {
      try {
        writeSync(device, 'V');
        closeSync(device);
      } catch (err) {
        log(`cannot disarm ${action.kind === 'device' ? action.path : 'the device'}: ${(err as Error).message}`);
      }
      device = undefined;
    }
    if (armed()) log(`disarmed: ${why}`);
    guests = [];
  };

  const onMessage = (line: string) => {
    let message: Partial<PetMessage> & { disarm?: boolean };
    try {
      message = JSON.parse(line) as typeof message;
    } catch {
      log(`ignored a message that is not JSON: ${line.slice(0, 80)}`);
      return;
    }
    if (expired) return; // the reset is under way: a late pet must not stop it
    if (message.disarm) return disarm('the agent stopped guarding guests');
    if (!message.pet) return;
    const { deadlineMs: deadline, guests: pids } = message.pet;
    if (!Number.isFinite(deadline) || deadline <= 0 || !Array.isArray(pids)) return;
    if (action.kind === 'device' && deadline <= timeoutMs + 1000) {
      log(`refused a deadline of ${deadline} ms: ${action.path} needs more than its own timeout (${timeoutMs} ms) plus a second; lower the device's timeout`);
      return;
    }
    const wasArmed = armed();
    deadlineMs = deadline;
    guests = pids.filter((p) => Number.isInteger(p) && p > 1);
    lastPet = performance.now();
    if (!guests.length) return disarm('no guest to guard');
    feed();
    if (!wasArmed) log(`armed: guarding ${guests.length} guest(s), deadline ${deadlineMs} ms without a pet`);
  };

  const expiry = setInterval(() => {
    if (!armed()) return;
    const silent = performance.now() - lastPet;
    if (action.kind === 'device') {
      if (silent < deadlineMs - timeoutMs) return feed();
      if (!expired) log(`no pet for ${Math.round(silent)} ms: ${action.path} is no longer fed, the machine resets within ${timeoutMs} ms`);
      expired = true;
      return;
    }
    if (silent <= deadlineMs) return;
    const killed = guests.filter(killIfQemu);
    log(`no pet for ${Math.round(silent)} ms (deadline ${deadlineMs} ms): killed the guests' QEMUs ${killed.join(', ') || '(none was left)'}`);
    guests = [];
  }, action.kind === 'device' ? Math.max(100, Math.min(1000, timeoutMs / 3)) : 100);

  await rm(socketPath, { force: true });
  const server = net.createServer((socket) => {
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        onMessage(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    });
    // A client that goes away without a disarm leaves the watchdog armed: that is the point.
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socketPath, () => resolve()));
  await chmod(socketPath, 0o600);
  log(`watching (${action.kind === 'device' ? `device ${action.path}` : 'lab: kills the guests\' QEMUs'}) on ${socketPath}`);
  return {
    async close() {
      clearInterval(expiry);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** SIGKILLs `pid` if it still is a QEMU (a pid the kernel gave to another process is left alone). */
function killIfQemu(pid: number): boolean {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] ?? '';
    if (!/qemu-system/.test(argv0)) return false;
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}
