/** The allow-list and the migration parameters' checks, without a server (the lab's authz suite tries them through real agents). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authorize, ForbiddenError, requireSourceHost } from '../../src/agent/authz.ts';
import { migrationParams } from '../../src/agent/validate.ts';
import { RefusedError } from '../../src/agent/errors.ts';

describe('authorize', () => {
  const admin = { role: 'admin', name: 'admin', fingerprint: 'aa' } as const;
  const h3 = { role: 'host', name: 'h3', fingerprint: 'bb' } as const;

  it('lets each role call its routes and no others', () => {
    assert.doesNotThrow(() => authorize('admin', admin, 'POST /v1/vms'));
    assert.doesNotThrow(() => authorize('host', h3, 'POST /v1/incoming'));
    assert.doesNotThrow(() => authorize('admin-or-host', h3, 'GET /v1/health'));
    assert.throws(() => authorize('admin', h3, 'POST /v1/vms/:name/stop'), (e) => e instanceof ForbiddenError && e.status === 403 && /is for the admin; host 'h3' may not call it/.test(e.message));
    assert.throws(() => authorize('host', admin, 'POST /v1/incoming'), /is for the cluster's hosts; the admin may not call it/);
  });

  it('a host acting for a REST API user: operator routes for operators and admins only, no other route at all', () => {
    const as = (role: 'viewer' | 'operator' | 'admin') => ({ ...h3, user: { name: 'u1', role, via: 'token' as const } });
    assert.doesNotThrow(() => authorize('operator', admin, 'POST /v1/vms/:name/migrate'));
    assert.doesNotThrow(() => authorize('operator', as('operator'), 'POST /v1/vms/:name/migrate'));
    assert.doesNotThrow(() => authorize('operator', as('admin'), 'POST /v1/vms/:name/migrate'));
    assert.throws(() => authorize('operator', as('viewer'), 'POST /v1/vms/:name/migrate'), /for the admin and for operators; user 'u1' \(viewer\) may not call it/);
    assert.throws(() => authorize('operator', h3, 'POST /v1/vms/:name/migrate'), /host 'h3' on its own may not call it/);
    assert.throws(() => authorize('admin', as('admin'), 'POST /v1/vms'), /not open to API users/);
    assert.throws(() => authorize('host', as('admin'), 'POST /v1/incoming'), /not open to API users/, 'a forwarded user never borrows the host\'s own rights');
  });

  it("a migration's host-to-host routes answer its source only", () => {
    assert.doesNotThrow(() => requireSourceHost({ role: 'host', name: 'h1', fingerprint: 'cc' }, 'h1', 'incoming migration m'));
    assert.throws(() => requireSourceHost(h3, 'h1', 'incoming migration m'), /belongs to a migration from 'h1'; host 'h3' may not act on it/);
    assert.throws(() => requireSourceHost(admin, 'h1', 'incoming migration m'), /the admin may not act on it/);
  });
});

describe('migrationParams', () => {
  it('passes known parameters of the right type and range', () => {
    const p = { policy: 'must-finish', maxBandwidth: 8 * 2 ** 20, allowPostcopy: true, performTimeoutMs: 5000, multifd: false };
    assert.deepEqual(migrationParams(p), p);
    assert.deepEqual(migrationParams(undefined), {});
    assert.deepEqual(migrationParams({ maxBandwidth: 'unlimited' }), { maxBandwidth: 'unlimited' });
  });

  it('refuses what is unknown, mistyped or out of range, saying which and why', () => {
    const refused = (value: unknown, message: RegExp) => assert.throws(() => migrationParams(value), (e) => e instanceof RefusedError && message.test(e.message));
    refused({ progressIntervalMs: 0 }, /progressIntervalMs=0: must be a whole number from 50 to 10000/);
    refused({ maxBandwidth: -1 }, /maxBandwidth=-1: must be a number of bytes per second, or 'unlimited'/);
    refused({ allowPostcopy: 'yes' }, /allowPostcopy="yes": must be true or false/);
    refused({ romfile: 'x' }, /unknown migration parameter 'romfile'/);
    refused([1], /params must be an object/);
  });
});
