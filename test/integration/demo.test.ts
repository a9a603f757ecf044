/**
 * `ferry demo`, as the README tells a user to run it: a guest migrated back and forth between two
 * QEMU processes on this machine while a game client measures the silence. Short (2 hops, a small
 * guest); the lab demo (`scripts/demo.sh`) is the long one.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ferry } from '../helpers/cli.ts';

describe('ferry demo', () => {
  it('migrates the game server twice; every hop measured, one attempt each, memory verified', async () => {
    const result = await ferry({}, 'demo', '--hops', '2', '--memory', '128', '--memcheck', '16', '--json');
    assert.equal(result.code, 0, result.stderr);
    const hops = result.json.hops as { hop: number; attempts: number; totalMs: number; downtimeMs: number | null; blackoutMs: number; lost: number; sent: number; memoryVerified: boolean }[];
    assert.deepEqual(hops.map((h) => h.hop), [1, 2]);
    for (const h of hops) {
      assert.equal(h.attempts, 1);
      assert.equal(h.memoryVerified, true);
      assert.ok(h.totalMs > 0 && h.sent > 0, JSON.stringify(h));
      assert.equal(typeof h.downtimeMs, 'number', 'QEMU reports its downtime');
      assert.ok(h.blackoutMs >= (h.downtimeMs ?? 0), 'a client cannot see less than the pause');
    }
    const table = await ferry({}, 'demo', '--hops', '1', '--memory', '128', '--memcheck', '0');
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /hop\s+attempts\s+total/);
    assert.match(table.stdout, /median of 1 hops: total \d+ ms \(of 1\)/);
  });
});
