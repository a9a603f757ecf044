/**
 * The switchover when the destination cannot be reached right after the
 * ownership moved to it (its agent's answer lost, the network between the
 * hosts gone): the source must never run again, whether or not the
 * destination already runs the guest. The unreachable destination is a
 * wrapper around a real local destination that throws where a dead link
 * would (a mock at that seam only); QEMU, the guest and the stream are real.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { migrate } from '../../src/migration/engine.ts';
import { LocalDestination, LocalSource } from '../../src/migration/local.ts';
import type { VmInstance } from '../../src/qemu/instance.ts';
import { bootGuest, guestSpec, openLab, type Lab } from '../helpers/guest.ts';

class UnreachableAfterCommit extends LocalDestination {
  constructor(
    options: ConstructorParameters<typeof LocalDestination>[0],
    private readonly resumeBeforeFailing: boolean,
  ) {
    super(options);
  }
  override async resume(): Promise<void> {
    if (this.resumeBeforeFailing) await super.resume(); // the guest runs here, the answer is lost
    throw new Error('connection reset by peer');
  }
  override async isRunning(): Promise<boolean> {
    throw new Error('agent unreachable');
  }
  override async abort(): Promise<void> {
    throw new Error('agent unreachable');
  }
}

describe('switchover with a destination that cannot confirm', () => {
  let lab: Lab;
  let vm: VmInstance;
  let boot: string;
  const ip = () => lab.net.guestIp(10);

  before(async () => {
    lab = await openLab('swo');
    vm = await bootGuest(lab, await guestSpec(lab, 'swo', { memoryMiB: 192, memcheckMiB: 16, dirtyMiBps: 1 }));
    boot = (await lab.probe.gamesrv(ip())).boot;
  });
  after(async () => {
    await vm?.destroy();
    await lab?.close();
  });

  for (const resumed of [true, false]) {
    it(`${resumed ? 'the guest already runs there' : 'the guest is still paused there'}: the source is stopped, never resumed; the record says so`, async () => {
      const source = vm;
      const destination = new UnreachableAfterCommit({ spec: vm.spec, accel: 'tcg', runDir: lab.runDir, network: lab.net.attacher }, resumed);
      const record = await migrate({ source: new LocalSource(vm), destination });
      assert.equal(record.outcome, 'completed');
      assert.match(record.warnings?.[0] ?? '', /did not confirm that the guest runs/);
      assert.equal(source.process.isRunning, false, 'the source QEMU must be gone');
      vm = destination.instance;
      if (!resumed) {
        // What the destination agent does when it sees that it owns the VM: resume it.
        assert.notEqual((await vm.qmp.execute<{ status: string }>('query-status')).status, 'running', 'nobody may have resumed it yet');
        await vm.qmp.execute('cont');
      }
      const reply = await lab.probe.gamesrv(ip());
      assert.equal(reply.boot, boot, 'the same guest answers: it moved, it was not restarted');
      assert.equal((await lab.probe.memcheckVerify(ip())).mismatches, 0);
    });
  }
});
