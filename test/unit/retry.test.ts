/** Trying a migration again after lost pages: only for that failure, only so often, never after a cancel. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MigrationRolledBackError } from '../../src/migration/errors.ts';
import { retryOnLostPages } from '../../src/migration/retry.ts';
import type { MigrationRecord } from '../../src/migration/types.ts';

const record = (failure?: MigrationRecord['failure']): MigrationRecord =>
  ({ vm: 'g1', outcome: failure ? 'rolled-back' : 'completed', startedAt: new Date().toISOString(), totalMs: 40, attempts: 1, earlierAttempts: [], totalMsAllAttempts: 40, ...(failure ? { failure } : {}) }) as unknown as MigrationRecord;
const lost = () => new MigrationRolledBackError(record({ phase: 'switchover', reason: 'memory check failed: 3 of 256 MiB differ', lostPages: true }));

describe('retryOnLostPages', () => {
  it('tries again after lost pages and returns the attempt that completed', async () => {
    const lines: string[] = [];
    let calls = 0;
    const done = await retryOnLostPages(async () => (++calls < 3 ? Promise.reject(lost()) : record()), { log: (l) => lines.push(l) });
    assert.equal(done.outcome, 'completed');
    assert.equal(done.attempts, 3, 'the record says how many attempts it took');
    assert.deepEqual(
      done.earlierAttempts.map((a) => [a.phase, a.reason]),
      [
        ['switchover', 'memory check failed: 3 of 256 MiB differ'],
        ['switchover', 'memory check failed: 3 of 256 MiB differ'],
      ],
      'and what stopped each earlier one',
    );
    assert.equal(done.totalMs, 40, 'totalMs stays the last attempt\'s');
    assert.ok(done.totalMsAllAttempts >= done.totalMs, 'the total over all attempts includes the last');
    assert.equal(calls, 3);
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /attempt 1 of 3 rolled back: memory check failed.*trying again/);
  });

  it('gives up after the last attempt with the last failure', async () => {
    let calls = 0;
    await assert.rejects(
      retryOnLostPages(async () => {
        calls++;
        throw lost();
      }),
      (err: unknown) => err instanceof MigrationRolledBackError && err.record.failure?.lostPages === true && err.record.attempts === 3 && err.record.earlierAttempts.length === 2,
    );
    assert.equal(calls, 3);
  });

  it('does not try again after any other failure, nor once cancelled', async () => {
    let calls = 0;
    const other = new MigrationRolledBackError(record({ phase: 'perform', reason: 'the destination QEMU exited' }));
    await assert.rejects(retryOnLostPages(async () => (calls++, Promise.reject(other))), (err) => err === other && other.record.attempts === 1 && other.record.earlierAttempts.length === 0);
    assert.equal(calls, 1);
    const cancel = new AbortController();
    cancel.abort();
    calls = 0;
    await assert.rejects(retryOnLostPages(async () => (calls++, Promise.reject(lost())), { signal: cancel.signal }));
    assert.equal(calls, 1);
  });
});
