import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { planMigration } from '../../src/migration/policy/policy.ts';
import { predictMigration } from '../../src/migration/predict.ts';

const MiB = 2 ** 20;
const base = { guestBytes: 512 * MiB, nonZeroBytes: 100 * MiB, dirtyRateBytesPerSec: 0, linkBytesPerSec: 200 * MiB, setupMs: 300 };

describe('migration prediction', () => {
  it('an idle guest: one pass over its non-zero memory plus setup', () => {
    const p = predictMigration(base, planMigration({ name: 'balanced' }, 512));
    assert.equal(p.converges, true);
    assert.equal(p.rounds, 2);
    assert.equal(p.totalMs, 300 + 500);
    assert.equal(p.downtimeMs, 0);
  });

  it('a guest dirtying below the link converges in a few rounds with a short pause', () => {
    const p = predictMigration({ ...base, dirtyRateBytesPerSec: 40 * MiB }, planMigration({ name: 'balanced' }, 512));
    assert.equal(p.converges, true);
    assert.ok(p.rounds >= 3 && p.rounds <= 6, `rounds ${p.rounds}`);
    assert.ok(p.downtimeMs <= 50);
  });

  it('a guest dirtying above the link: minimal-downtime gives up, must-finish finishes', () => {
    const busy = { ...base, dirtyRateBytesPerSec: 400 * MiB };
    const minimal = predictMigration(busy, planMigration({ name: 'minimal-downtime' }, 512));
    assert.equal(minimal.converges, false);
    assert.match(minimal.reason ?? '', /timeout; would roll back/);
    const must = predictMigration(busy, planMigration({ name: 'must-finish' }, 512));
    assert.equal(must.converges, true);
    assert.ok(must.steps.length > 0, 'must-finish has to escalate to get there');
  });

  it('a bandwidth limit slows the prediction accordingly', () => {
    const limited = predictMigration(base, planMigration({ name: 'balanced', maxBandwidth: 50 * MiB }, 512));
    assert.equal(limited.totalMs, 300 + 2000);
  });
});
