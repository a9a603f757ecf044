/** A hop's blackout cut at the switchover's moments; a moment not seen stays missing, never 0. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { blackoutBreakdown } from '../../src/cli/migrate.ts';
import type { StreamWindow } from '../../src/lab/probe.ts';

const window = (from: number | null, to: number | null): StreamWindow => ({
  sent: 100, received: 90, lost: 10, maxGapMs: 0, maxGapFrom: from, maxGapTo: to, firstTick: 1, lastTick: 2, bootIds: ['b'], durationMs: 500,
});

describe('blackoutBreakdown', () => {
  it('splits the gap the client saw into the steps of the switchover', () => {
    const b = blackoutBreakdown({ stoppedAt: 1005, loadedAt: 1035, verifiedAt: null, ownedAt: 1037, resumedAt: 1040.5 }, window(1000, 1090));
    assert.deepEqual(b, { lastReplyToStop: 5, stopToLoaded: 30, verify: null, toOwned: 2, ownedToResumed: 3.5, resumedToReply: 49.5 });
  });

  it('with a memory check, the swap is counted from the end of the check', () => {
    const b = blackoutBreakdown({ stoppedAt: 1005, loadedAt: 1035, verifiedAt: 1300, ownedAt: 1302, resumedAt: 1305 }, window(1000, 1350));
    assert.equal(b?.verify, 265);
    assert.equal(b?.toOwned, 2);
  });

  it('leaves out what was not seen', () => {
    const b = blackoutBreakdown({ stoppedAt: null, loadedAt: 1035, verifiedAt: null, ownedAt: 1037, resumedAt: null }, undefined);
    assert.deepEqual(b, { lastReplyToStop: null, stopToLoaded: null, verify: null, toOwned: 2, ownedToResumed: null, resumedToReply: null });
    assert.equal(blackoutBreakdown(undefined, window(1, 2)), null);
  });
});
