/**
 * Job and migration records against a real store (SQLite in a temporary directory): what the fault
 * campaign's kill-store-member at perform found — a progress write that arrived after the final one
 * left a completed migration's job reading 'running' for ever.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ClusterState, type InFlightMigration } from '../../src/cluster/model.ts';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';

describe('job and migration records', () => {
  let dir: string;
  let store: SqliteStore;
  let state: ClusterState;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-jobs-'));
    store = new SqliteStore(path.join(dir, 'state.db'));
    state = new ClusterState(store);
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('regression kill-store-member at perform: a late progress write never overwrites the final state', async () => {
    const job = await state.newJob('migrate', 'vm1', 'h1');
    const progress = { ...job, progress: { phase: 'perform' as const, elapsedMs: 100 } };
    assert.equal(await state.saveJobProgress(progress), true, 'progress is written while the job runs');
    await state.saveJob({ ...job, state: 'succeeded' });
    // The progress write that was under way when the store member died, arriving last.
    assert.equal(await state.saveJobProgress({ ...progress, progress: { phase: 'perform', elapsedMs: 200 } }), false);
    assert.equal((await state.job(job.id))?.state, 'succeeded');
  });

  it('a progress write over a record it did not read loses (another writer came between)', async () => {
    const job = await state.newJob('migrate', 'vm2', 'h1');
    const raced = store.get.bind(store);
    // The record changes between the read and the write: the compare-and-swap must fail, not overwrite.
    store.get = async (key) => {
      const read = await raced(key);
      await state.saveJob({ ...job, state: 'failed', error: 'cancelled' });
      store.get = raced;
      return read;
    };
    assert.equal(await state.saveJobProgress({ ...job, progress: { phase: 'perform', elapsedMs: 1 } }), false);
    assert.equal((await state.job(job.id))?.state, 'failed');
  });

  it('ending a migration by its id leaves a newer migration of the same VM alone (a retried end)', async () => {
    const first: InFlightMigration = { id: 'm1', vm: 'vm3', source: 'h1', destination: 'h2', token: 1, jobId: 'j1', startedAt: new Date().toISOString() };
    assert.equal(await state.beginMigration(first), true);
    await state.endMigration('vm3', 'm1');
    assert.equal(await state.migration('vm3'), undefined);
    const second = { ...first, id: 'm2', jobId: 'j2' };
    assert.equal(await state.beginMigration(second), true);
    await state.endMigration('vm3', 'm1'); // the first migration's end, tried again after it had succeeded
    assert.equal((await state.migration('vm3'))?.id, 'm2');
  });
});
