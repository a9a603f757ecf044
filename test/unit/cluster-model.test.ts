/** The cluster model on a real SQLite store: what must be exclusive is. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ClusterState, KEYS } from '../../src/cluster/model.ts';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { makeVmSpec } from '../../src/qemu/spec.ts';

describe('cluster model', () => {
  let dir: string;
  let store: SqliteStore;
  let state: ClusterState;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-model-'));
    store = new SqliteStore(path.join(dir, 'state.db'));
    state = new ClusterState(store);
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  const spec = (name: string) => makeVmSpec({ name, boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: '' } });

  it('reads a VM recorded with the CD-ROM shape of before empty drives: its ISO is the medium', async () => {
    const old = { ...spec('o1'), boot: { kind: 'firmware', firmware: 'bios', order: 'cdrom' }, cdrom: { image: 'd-i', pool: 'shared', volume: 'image-d-i', sizeBytes: 2048 } };
    await store.put(KEYS.vm('o1'), JSON.stringify({ spec: old, owner: 'h1', desired: 'running' }));
    const vm = await state.vm('o1');
    assert.deepEqual(vm?.spec.cdrom, { medium: { image: 'd-i', pool: 'shared', volume: 'image-d-i', sizeBytes: 2048 } });
    assert.deepEqual((await state.vms()).find((v) => v.spec.name === 'o1')?.spec.cdrom?.medium?.image, 'd-i');
    await store.delete(KEYS.vm('o1'));
  });

  it('two VMs created at once never get the same guest address; deleting a VM frees it', async () => {
    const results = await Promise.all(['a1', 'a2'].map((name) => state.createVm({ spec: spec(name), owner: 'h1', desired: 'running', ip: '10.80.0.100' })));
    assert.equal(results.filter((t) => t !== undefined).length, 1, 'exactly one create may win the address');
    assert.equal(await state.addressTaken('10.80.0.100'), true);
    const winner = (await state.vms())[0]!;
    assert.equal(await state.deleteVm(winner), true);
    assert.equal(await state.addressTaken('10.80.0.100'), false);
  });

  it('two volumes never hold the same place (iSCSI LUN) of a pool', async () => {
    const made = await Promise.all(['v1', 'v2'].map((name) => state.createVolume({ pool: 'san', name, format: 'raw', sizeBytes: 2 ** 20, location: '3' })));
    assert.deepEqual(made.filter(Boolean).length, 1);
    const volume = (await state.volumes())[0]!;
    assert.equal(await state.deleteVolume(volume), true);
    assert.equal(await state.createVolume({ pool: 'san', name: 'v3', format: 'raw', sizeBytes: 2 ** 20, location: '3' }), true, 'a freed place can be taken again');
  });
});
