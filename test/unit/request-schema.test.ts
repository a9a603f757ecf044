/** The agent's request schemas: every route declares them, they compile, and a refusal names the field and what is wrong. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { routes } from '../../src/agent/routes.ts';
import { compileRoutes, routeTable } from '../../src/agent/server.ts';
import { compilePart, fields, HOST, InvalidRequestError, oneOf, pathParams, TOKEN, VM, whole } from '../../src/agent/request-schema.ts';
import type { AgentContext } from '../../src/agent/context.ts';
import { migrationParams } from '../../src/agent/validate.ts';

/** The route table as an agent builds it (the handlers are never called here). */
function table() {
  const ctx = { state: { store: {} }, node: { name: 'h1' }, runtime: {}, log: () => undefined } as unknown as AgentContext;
  return routeTable(routes(ctx, {} as never, {} as never));
}

const refusal = (message: RegExp) => (err: unknown) => {
  assert.ok(err instanceof InvalidRequestError, String(err));
  assert.equal(err.status, 400);
  assert.match(err.message, message);
  return true;
};

describe('agent request schemas', () => {
  it('every route declares its path and its body (or query), and they compile', () => {
    const all = table();
    assert.ok(all.length >= 70, `${all.length} routes`);
    const compiled = compileRoutes(all);
    for (const r of compiled) assert.ok(r.stream ? r.checkQuery : r.checkBody, `${r.method} ${r.pattern}`);
    assert.equal(new Set(all.map((r) => `${r.method} ${r.pattern}`)).size, all.length, 'no route twice');
  });

  it("a params schema that misses one of the pattern's parameters is refused when the table is built", () => {
    assert.throws(
      () => compileRoutes([{ method: 'GET', pattern: '/v1/x/:name/:id', who: 'admin', input: { params: pathParams({ name: VM }), body: fields({}) }, handler: async () => ({}) }]),
      /params schema declares name, its pattern has name, id/,
    );
  });

  it('says which field is wrong, and what it must be', () => {
    const body = compilePart('body', fields({ to: HOST, token: TOKEN, policy: oneOf(['a', 'b']), parallel: whole(1, 16) }, ['to']));
    assert.throws(() => body({ token: 1 }), refusal(/^body\/to is missing \(a host name: names start with a letter/));
    assert.throws(() => body({ to: 'h/../1' }), refusal(/^body\/to: "h\/..\/1" is not a host name: names start with a letter and use only a-z, 0-9 and '-'/));
    assert.throws(() => body({ to: 'h1', extra: 1 }), refusal(/^body: "extra" is not a field of this request \(it takes to, token, policy, parallel\)/));
    assert.throws(() => body({ to: 'h1', policy: 'c' }), refusal(/^body\/policy: "c" is not one of a, b/));
    assert.throws(() => body({ to: 'h1', parallel: 17 }), refusal(/^body\/parallel: 17 is not a whole number from 1 to 16/));
    assert.throws(() => body({ to: 'h1', token: '3' }), refusal(/^body\/token: "3" is not a VM's fencing token/));
    assert.throws(() => body([]), refusal(/^the request's body must be a JSON object/));
    body({ to: 'h1', token: 3, policy: 'a', parallel: 2 });
  });

  it('quotes a bad value short and escaped: NUL, control characters, 10,000 characters', () => {
    const path = compilePart('path', pathParams({ name: VM }));
    assert.throws(() => path({ name: 'a\u0000b' }), refusal(/^path\/name: "a\\u0000b" is not a VM name/));
    assert.throws(() => path({ name: 'a\nb\u001b[31m' }), refusal(/^path\/name: "a\\nb\\u001b\[31m" is not a VM name/));
    assert.throws(() => path({ name: 'x'.repeat(10_000) }), (err: unknown) => err instanceof InvalidRequestError && err.message.length < 200);
  });

  it('regression: a field nested 100,000 deep crashed the refusal (Maximum call stack size exceeded)', () => {
    const body = compilePart('body', fields({ to: HOST }));
    assert.throws(() => body(JSON.parse(`{"to":${'['.repeat(100_000)}${']'.repeat(100_000)}}`)), refusal(/^body\/to: an array nested too deep to show is not a host name/));
    assert.throws(() => migrationParams(JSON.parse(`{"policy":${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}}`)), /migration parameter policy=an object nested too deep to show: must be one of/);
  });
});
