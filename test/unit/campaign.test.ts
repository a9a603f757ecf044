/** The fault campaign's plan and tables (src/lab/migration-campaign.ts): its seed decides everything it draws. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CampaignVm } from '../../src/lab/checker.ts';
import { drawPlans, FAULT_KIND_NAMES, faultMomentTable, faultOutcomeTable, MIGRATION_FAULTS, type MigrationFaultOutcome } from '../../src/lab/migration-campaign.ts';
import { SeededRandom } from '../../src/lab/seeded-random.ts';

const VMS: CampaignVm[] = [
  { name: 'c-ram', kind: 'ram', ip: '10.0.0.1' },
  { name: 'c-local', kind: 'local-disk', ip: '10.0.0.2' },
  { name: 'c-repl', kind: 'replicated', ip: '10.0.0.3', replicaHosts: ['h1', 'h2'] },
  { name: 'c-shared', kind: 'shared', ip: '10.0.0.4' },
];

describe('fault campaign plan', () => {
  it('the same seed draws the same faults, VMs, moments and outages; another seed does not', () => {
    const a = drawPlans(100, 100, FAULT_KIND_NAMES, VMS);
    assert.deepEqual(drawPlans(100, 100, FAULT_KIND_NAMES, VMS), a);
    assert.notDeepEqual(drawPlans(101, 100, FAULT_KIND_NAMES, VMS), a);
  });

  it('draws every fault kind and every VM kind over 100 faults, each fault only on the VMs it applies to', () => {
    const plans = drawPlans(100, 100, FAULT_KIND_NAMES, VMS);
    assert.deepEqual(new Set(plans.map((p) => p.kind)), new Set(FAULT_KIND_NAMES));
    assert.deepEqual(new Set(plans.map((p) => p.vm.kind)), new Set(VMS.map((v) => v.kind)));
    for (const p of plans) assert.ok(MIGRATION_FAULTS[p.kind].appliesTo.includes(p.vm.kind), `${p.kind} on ${p.vm.kind}`);
    for (const p of plans) assert.ok(p.delayMs >= 0 && p.delayMs <= 5000);
  });

  it('the generator stays in [0, 1) and its integers in range', () => {
    const rng = new SeededRandom(7);
    for (let i = 0; i < 10_000; i++) {
      const x = rng.next();
      assert.ok(x >= 0 && x < 1);
      const n = rng.int(2, 5);
      assert.ok(Number.isInteger(n) && n >= 2 && n <= 5);
    }
  });
});

describe('fault campaign tables', () => {
  const outcome = (kind: MigrationFaultOutcome['kind'], moment: MigrationFaultOutcome['moment'], migration: MigrationFaultOutcome['migration'], findings: MigrationFaultOutcome['findings'] = []): MigrationFaultOutcome => ({
    index: 1, kind, vm: 'c-ram', vmKind: 'ram', from: 'h1', to: 'h2', bandwidthMiBps: null, delayMs: 0, moment, migration, endedOn: 'h1', restarted: false, settled: true, findings, seconds: 1,
  });
  const outcomes = [
    outcome('cut-link', 'perform', 'rolled-back'),
    outcome('cut-link', 'ended', 'succeeded'),
    outcome('kill-source-agent', 'perform', 'succeeded', [{ what: 'leftover', detail: 'tap ft1 on h2 belongs to no QEMU there' }]),
  ];

  it('counts faults by kind and moment, with totals', () => {
    const [header, ...rows] = faultMomentTable(outcomes);
    assert.deepEqual(header, ['fault \\ moment', 'perform', 'ended', 'all']);
    assert.deepEqual(rows, [
      ['kill-source-agent', '1', '', '1'],
      ['cut-link', '1', '1', '2'],
      ['all', '2', '1', '3'],
    ]);
  });

  it('counts outcomes and findings by kind: a leftover is a leftover, not a lost VM', () => {
    const [header, ...rows] = faultOutcomeTable(outcomes);
    const col = (name: string) => header!.indexOf(name);
    const all = rows.at(-1)!;
    assert.equal(all[col('faults')], '3');
    assert.equal(all[col('moved')], '2');
    assert.equal(all[col('rolled back')], '1');
    assert.equal(all[col('leftovers')], '1');
    assert.equal(all[col('VMs lost')], '0');
  });
});
