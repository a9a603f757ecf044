/** A host's etcd role, without etcd: which keys it may write (the lab's identity suite tries them against real etcd). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HA_KEYS } from '../../src/cluster/ha/records.ts';
import { KEYS } from '../../src/cluster/model.ts';
import { MOVE_KEYS } from '../../src/cluster/moves/records.ts';
import { CLUSTER_CPU_KEY } from '../../src/cluster/cpu.ts';
import { hostPermissions, mayWrite } from '../../src/cluster/store/etcd-auth.ts';

describe("a host's etcd role", () => {
  const h1 = hostPermissions('h1');

  it('writes its own records, never the same records of another host', () => {
    for (const [own, other] of [
      [KEYS.host('h1'), KEYS.host('h2')],
      [KEYS.replicaEndpoint('r', 'v1', 'h1'), KEYS.replicaEndpoint('r', 'v1', 'h2')],
      [HA_KEYS.guarded('h1'), HA_KEYS.guarded('h2')],
    ]) {
      assert.ok(mayWrite(h1, own!), `h1 writes ${own}`);
      assert.ok(!mayWrite(h1, other!), `h1 may not write ${other}`);
    }
    assert.ok(!mayWrite(h1, KEYS.host('h10')), 'a host record is one key, not a prefix');
    assert.ok(!mayWrite(h1, HA_KEYS.guarded('h10')));
  });

  it('writes every shared HA record an agent writes for the manager or the admin (each key family, so none is forgotten)', () => {
    const shared = [
      HA_KEYS.resource('v1'), HA_KEYS.status('v1'), HA_KEYS.manager, HA_KEYS.rule('r1'), HA_KEYS.maintenance, HA_KEYS.fence('h2', 'p1'),
      CLUSTER_CPU_KEY, MOVE_KEYS.job('m1'), MOVE_KEYS.maintenance('h2'),
    ];
    for (const key of shared) assert.ok(mayWrite(h1, key), `h1 writes ${key}`);
    const families = Object.keys(HA_KEYS).sort();
    assert.deepEqual(families, ['fence', 'fencesOf', 'guarded', 'maintenance', 'manager', 'resource', 'resources', 'rule', 'rules', 'status', 'statuses'], 'a new HA key: decide above who writes it');
  });
});
