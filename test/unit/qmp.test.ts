/**
 * The QMP client against a real QEMU (no guest: `-machine none`), including the
 * ways a connection goes wrong: unknown command, malformed argument, a QEMU
 * that stops answering (SIGSTOP), and one that goes away.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { QmpCommandError, QmpConnectionClosedError, QmpTimeoutError } from '../../src/qemu/errors.ts';
import { QemuProcess } from '../../src/qemu/process.ts';
import { QmpClient } from '../../src/qemu/qmp.ts';

async function bareQemu(dir: string, name: string): Promise<QemuProcess> {
  const qmpSocket = path.join(dir, `${name}.sock`);
  return QemuProcess.start({
    argv: ['-machine', 'none', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-chardev', `socket,id=qmp,path=${qmpSocket},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control'],
    qmpSocket,
    serialLog: '/dev/null',
  });
}

describe('QMP client against a real QEMU', () => {
  let dir: string;
  let qemu: QemuProcess;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-qmp-'));
    qemu = await bareQemu(dir, 'a');
  });
  after(async () => {
    await qemu.kill();
    await rm(dir, { recursive: true, force: true });
  });

  it('negotiates capabilities and reads the greeting', async () => {
    assert.equal(qemu.qmp.greeting.version.qemu.major >= 7, true);
    const status = await qemu.qmp.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(status.running, false);
    assert.equal(status.status, 'prelaunch');
  });

  it('matches concurrent commands to their answers by id', async () => {
    const [status, name, version] = await Promise.all([
      qemu.qmp.execute<{ status: string }>('query-status'),
      qemu.qmp.execute<Record<string, unknown>>('query-name'),
      qemu.qmp.execute<{ qemu: { major: number } }>('query-version'),
    ]);
    assert.equal(status.status, 'prelaunch');
    assert.deepEqual(name, {});
    assert.equal(version.qemu.major, qemu.qmp.greeting.version.qemu.major);
  });

  it('an unknown command is a typed error with QEMU class and description', async () => {
    await assert.rejects(qemu.qmp.execute('no-such-command'), (err: unknown) => {
      assert.ok(err instanceof QmpCommandError);
      assert.equal(err.errorClass, 'CommandNotFound');
      assert.match(err.description, /no-such-command/);
      assert.match(err.message, /no-such-command/);
      return true;
    });
  });

  it('a malformed argument is a typed error, and the connection stays usable', async () => {
    await assert.rejects(qemu.qmp.execute('migrate-set-parameters', { 'downtime-limit': 'soon' }), (err: unknown) => {
      assert.ok(err instanceof QmpCommandError);
      assert.equal(err.errorClass, 'GenericError');
      assert.match(err.description, /downtime-limit/);
      return true;
    });
    const status = await qemu.qmp.execute<{ status: string }>('query-status');
    assert.equal(status.status, 'prelaunch');
  });

  it('delivers asynchronous events', async () => {
    const dir2 = await mkdtemp(path.join(os.tmpdir(), 'ferry-qmp-ev-'));
    const other = await bareQemu(dir2, 'ev');
    try {
      const shutdown = other.qmp.waitForEvent('SHUTDOWN', 5000);
      await other.qmp.execute('quit');
      const event = await shutdown;
      assert.equal(event.event, 'SHUTDOWN');
      assert.equal(typeof event.timestamp.seconds, 'number');
    } finally {
      await other.kill();
      await rm(dir2, { recursive: true, force: true });
    }
  });

  it('a QEMU that stops answering gives a timeout, not a hang', async () => {
    const dir2 = await mkdtemp(path.join(os.tmpdir(), 'ferry-qmp-stop-'));
    const other = await bareQemu(dir2, 'stopped');
    try {
      process.kill(other.pid, 'SIGSTOP');
      const started = Date.now();
      await assert.rejects(other.qmp.execute('query-status', undefined, 300), QmpTimeoutError);
      assert.ok(Date.now() - started < 2000);
      process.kill(other.pid, 'SIGCONT');
      // The late answer to the timed-out command must not be taken for the next one.
      const status = await other.qmp.execute<{ status: string }>('query-status');
      assert.equal(status.status, 'prelaunch');
    } finally {
      await other.kill();
      await rm(dir2, { recursive: true, force: true });
    }
  });

  it('a closed socket fails pending and later commands with a typed error', async () => {
    const dir2 = await mkdtemp(path.join(os.tmpdir(), 'ferry-qmp-close-'));
    const other = await bareQemu(dir2, 'closing');
    try {
      process.kill(other.pid, 'SIGSTOP'); // the command below stays pending until the kill
      const pending = other.qmp.execute('query-status', undefined, 10_000);
      process.kill(other.pid, 'SIGKILL');
      await assert.rejects(pending, QmpConnectionClosedError);
      await assert.rejects(other.qmp.execute('query-status'), QmpConnectionClosedError);
      const exit = await other.exited;
      assert.equal(exit.signal, 'SIGKILL');
      assert.equal(exit.expected, false, 'an outside kill is reported as unexpected');
    } finally {
      await other.kill();
      await rm(dir2, { recursive: true, force: true });
    }
  });

  it('connecting to a socket nobody serves fails with a typed error in time', async () => {
    await assert.rejects(QmpClient.connect(path.join(dir, 'nobody.sock'), { connectTimeoutMs: 200 }), QmpConnectionClosedError);
  });
});
