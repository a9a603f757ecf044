/**
 * The watchdog daemon (guests mode, the lab's) with real processes: it kills the guarded QEMUs when the
 * pets stop past the deadline, not before, not after a disarm, and never a pid that is no QEMU. The
 * "QEMUs" are `sleep` run under a name starting with qemu-system (a real QEMU is not needed to be
 * killed; ha.test.ts has the watchdog kill real ones).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runWatchdog, type WatchdogDaemon } from '../../src/agent/watchdog.ts';
import { WatchdogClient } from '../../src/agent/watchdog-client.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the watchdog (guests mode)', () => {
  let dir: string;
  let daemon: WatchdogDaemon;
  let fakeQemu: string;
  const log: string[] = [];
  const children: ChildProcess[] = [];
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-watchdog-'));
    fakeQemu = path.join(dir, 'qemu-system-x86_64');
    await symlink('/bin/sleep', fakeQemu);
    daemon = await runWatchdog(path.join(dir, 'wd.sock'), { kind: 'guests' }, (l) => log.push(l));
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await daemon.close();
    await rm(dir, { recursive: true, force: true });
  });
  const start = (argv0: string) => {
    const child = spawn(argv0, ['60'], { stdio: 'ignore' });
    children.push(child);
    return child;
  };
  const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;

  it('kills the guarded QEMUs once the pets stop past the deadline, and only QEMUs', async () => {
    const qemu = start(fakeQemu);
    const other = start('/bin/sleep');
    await sleep(100);
    const client = new WatchdogClient(path.join(dir, 'wd.sock'), () => undefined);
    for (let i = 0; i < 4; i++) {
      client.pet(400, [qemu.pid!, other.pid!]);
      await sleep(200);
    }
    assert.equal(alive(qemu), true, 'petted within the deadline: nothing happens');
    await sleep(700);
    assert.equal(qemu.signalCode, 'SIGKILL');
    assert.equal(alive(other), true, 'a pid that is no QEMU is left alone');
    assert.match(log.join('\n'), new RegExp(`killed the guests' QEMUs ${qemu.pid}$`, 'm'));
    client.close();
  });

  it('a disarm (no HA guest left) stands it down', async () => {
    const qemu = start(fakeQemu);
    await sleep(100);
    const client = new WatchdogClient(path.join(dir, 'wd.sock'), () => undefined);
    client.pet(300, [qemu.pid!]);
    await sleep(100);
    client.disarm();
    await sleep(700);
    assert.equal(alive(qemu), true);
    client.close();
  });
});
