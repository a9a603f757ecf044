import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { converging, planMigration, PolicyController, type RoundObservation } from '../../src/migration/policy/policy.ts';

const MiB = 2 ** 20;
/** A guest dirtying 80 MiB/s over a link that moves 40 MiB/s: never converges on its own. */
const stuck = (round: number): RoundObservation => ({
  round, elapsedMs: round * 1000, remainingBytes: 60 * MiB, dirtyRateBytesPerSec: 80 * MiB, throughputBytesPerSec: 40 * MiB, expectedDowntimeMs: 1500, downtimeLimitMs: 50,
});

describe('migration policies', () => {
  it('judges convergence from what is left, the link and the dirty rate', () => {
    assert.equal(converging(stuck(2)), false);
    assert.equal(converging({ ...stuck(2), dirtyRateBytesPerSec: 10 * MiB }), true, 'the copy outruns the guest');
    assert.equal(converging({ ...stuck(2), remainingBytes: 1 * MiB }), true, 'what is left fits in the pause');
  });

  it('plans limits, capabilities and a timeout per GiB', () => {
    const balanced = planMigration({ name: 'balanced' }, 2048);
    assert.equal(balanced.downtimeLimitMs, 50);
    assert.equal(balanced.maxBandwidth, 'unlimited');
    assert.equal(balanced.timeoutMs, 480_000);
    assert.deepEqual(balanced.capabilities, { xbzrle: false, 'auto-converge': true, 'postcopy-ram': false, multifd: true, 'postcopy-preempt': false });
    assert.equal(planMigration({ name: 'balanced', multifd: false }, 2048).capabilities['multifd'], false, 'the caller can turn the default off');
    const must = planMigration({ name: 'must-finish', allowPostcopy: true, downtimeLimitMs: 80 }, 512);
    assert.equal(must.capabilities['xbzrle'], true);
    assert.equal(must.capabilities['multifd'], false, 'must-finish keeps XBZRLE and may switch to post-copy');
    assert.equal(must.capabilities['postcopy-ram'], true);
    assert.equal(must.downtimeLimitMs, 80);
    assert.equal(planMigration({ name: 'minimal-downtime' }, 128).timeoutMs, 30_000, 'at least 30 s');
  });

  it('multifd replaces XBZRLE and finds zero pages in its threads; postcopy-preempt only with post-copy', () => {
    const multifd = planMigration({ name: 'must-finish', multifd: true }, 512);
    assert.equal(multifd.capabilities['multifd'], true);
    assert.equal(multifd.capabilities['xbzrle'], false, 'XBZRLE does not work across multifd channels');
    assert.equal(multifd.parameters['zero-page-detection'], 'multifd');
    assert.equal(multifd.parameters['xbzrle-cache-size'], undefined);
    assert.throws(() => planMigration({ name: 'must-finish', multifd: true, allowPostcopy: true }, 512), /multifd and post-copy cannot be combined/);
    assert.throws(() => planMigration({ name: 'balanced', postcopyPreempt: true }, 512), /postcopy-preempt needs post-copy/);
    assert.equal(planMigration({ name: 'must-finish', allowPostcopy: true }, 512).capabilities['postcopy-preempt'], true, 'on by default with post-copy');
    assert.equal(planMigration({ name: 'must-finish', allowPostcopy: true, postcopyPreempt: false }, 512).capabilities['postcopy-preempt'], false);
    assert.equal(planMigration({ name: 'must-finish' }, 512).capabilities['postcopy-preempt'], false);
  });

  it('refuses nonsense with a message', () => {
    assert.throws(() => planMigration({ name: 'fastest' as never }, 256), /unknown policy 'fastest'; choose one of minimal-downtime, balanced, must-finish/);
    assert.throws(() => planMigration({ name: 'balanced', allowPostcopy: true }, 256), /only used by the must-finish policy/);
    assert.throws(() => planMigration({ name: 'balanced', downtimeLimitMs: 0 }, 256), /between 1 and 60000/);
  });

  it('balanced raises the pause limit step by step, then throttles, never post-copy', () => {
    const c = new PolicyController(planMigration({ name: 'balanced' }, 256));
    const kinds = Array.from({ length: 12 }, (_, i) => c.onRound(stuck(i + 2)).map((a) => (a.kind === 'set-downtime-limit' ? `limit ${a.ms}` : a.kind))).flat();
    assert.deepEqual(kinds, ['limit 100', 'limit 200', 'throttle', 'limit 400', 'limit 500']);
    assert.equal(c.inPostcopy, false);
    assert.equal(c.steps.length, 5);
    assert.match(c.steps[0]!.reason, /80.0 MiB\/s dirtied vs 40.0 MiB\/s sent/);
  });

  it('must-finish escalates faster and switches to post-copy only when allowed', () => {
    const withPostcopy = new PolicyController(planMigration({ name: 'must-finish', allowPostcopy: true }, 256));
    const actions = Array.from({ length: 8 }, (_, i) => withPostcopy.onRound(stuck(i + 2)).map((a) => a.kind)).flat();
    assert.deepEqual(actions.filter((k) => k !== 'set-downtime-limit'), ['throttle', 'start-postcopy']);
    assert.equal(withPostcopy.inPostcopy, true);
    assert.deepEqual(withPostcopy.onRound(stuck(20)), [], 'nothing more after the switch');
    const without = new PolicyController(planMigration({ name: 'must-finish' }, 256));
    const kinds = Array.from({ length: 20 }, (_, i) => without.onRound(stuck(i + 2)).map((a) => a.kind)).flat();
    assert.ok(!kinds.includes('start-postcopy'));
  });

  it('minimal-downtime never lengthens the pause nor slows the guest', () => {
    const c = new PolicyController(planMigration({ name: 'minimal-downtime' }, 256));
    for (let r = 2; r < 30; r++) assert.deepEqual(c.onRound(stuck(r)), []);
  });

  it('takes no step while the copy converges', () => {
    const c = new PolicyController(planMigration({ name: 'must-finish', allowPostcopy: true }, 256));
    for (let r = 2; r < 30; r++) assert.deepEqual(c.onRound({ ...stuck(r), dirtyRateBytesPerSec: 5 * MiB }), []);
  });
});
