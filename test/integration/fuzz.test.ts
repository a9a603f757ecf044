/**
 * Every agent route fuzzed (fast-check, a 2-host lab, no VM): each route of the agent's own table
 * (GET /v1/routes, so a new route is fuzzed without a line here) gets requests broken by
 * construction — a path parameter with '/', '..', NUL, control characters, other scripts, 10,000
 * characters or percent-encoding garbage; a body that is no JSON, no object, or an object with a
 * field of the wrong type or value, one missing or one nobody declared; a query broken the same
 * ways; a body over 1 MiB — with the admin's certificate, or a host's for the hosts' routes.
 * Every answer is a 4xx with a JSON {error}, within seconds; after each route the agent still runs
 * and answers /v1/health, and the store holds exactly what it held (but for the keys that change
 * by themselves: leases and the hosts' guard records).
 *
 * The seed is printed; FERRY_FUZZ_SEED=N reproduces a run, FERRY_FUZZ_RUNS=N changes its size.
 */
import assert from 'node:assert/strict';
import https from 'node:https';
import path from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { loadIdentity, type Identity } from '../../src/cluster/pki.ts';
import { accepts, brokenBody, brokenPath, brokenQuery, paramNames, type FuzzRequest, type RouteInput } from '../helpers/fuzz-inputs.ts';
import { useLab } from '../helpers/lab.ts';

const SEED = Number(process.env['FERRY_FUZZ_SEED'] ?? 20261216);
const RUNS = Number(process.env['FERRY_FUZZ_RUNS'] ?? 100);
const REQUEST_TIMEOUT_MS = 15_000;
/** Only the routes whose 'METHOD /pattern' matches (to reproduce one route's failure quickly). */
const ONLY = new RegExp(process.env['FERRY_FUZZ_ROUTES'] ?? '');
/** An answer slower than this is reported (the agent answers a refusal in milliseconds). */
const SLOW_MS = 1000;

interface Answer {
  status: number;
  text: string;
  ms: number;
}

/**
 * One HTTPS request to an agent's unix socket, with a certificate; raw path and bytes, so anything
 * can be sent. A body given as several buffers is written in as many pieces, a moment apart.
 */
function send(agent: https.Agent, socket: string, identity: Identity, method: string, requestPath: string, body?: string | Buffer[], headers: Record<string, string> = {}): Promise<Answer> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        agent, socketPath: socket, method, path: requestPath, servername: 'h1', ca: identity.ca, cert: identity.cert, key: identity.key, timeout: REQUEST_TIMEOUT_MS,
        headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json', 'content-length': typeof body === 'string' ? Buffer.byteLength(body) : Buffer.concat(body).length } : {}) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, ms: Date.now() - t0 }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer to ${method} ${requestPath.slice(0, 200)} within ${REQUEST_TIMEOUT_MS} ms: the agent hangs`)));
    req.on('error', reject);
    if (!Array.isArray(body)) return void req.end(body);
    void (async () => {
      for (const piece of body) {
        req.write(piece);
        await new Promise((r) => setTimeout(r, 50));
      }
      req.end();
    })();
  });
}

/** What the agent answers a refused request: a 4xx with a JSON object whose error says something. */
function assertRefused(answer: Answer, what: string, expected?: number[]): void {
  assert.ok(answer.status >= 400 && answer.status < 500, `${what}: HTTP ${answer.status}, not a 4xx: ${answer.text.slice(0, 500)}`);
  if (expected) assert.ok(expected.includes(answer.status), `${what}: HTTP ${answer.status}, expected ${expected.join(' or ')}: ${answer.text.slice(0, 500)}`);
  let parsed: { error?: unknown };
  try {
    parsed = JSON.parse(answer.text) as { error?: unknown };
  } catch {
    assert.fail(`${what}: the answer is not JSON: ${answer.text.slice(0, 300)}`);
  }
  assert.equal(typeof parsed.error, 'string', `${what}: no error message in ${answer.text.slice(0, 300)}`);
  assert.ok((parsed.error as string).length > 0, `${what}: an empty error message`);
}

/** The store's keys and values, but for those that change by themselves (leased keys: hosts, the HA manager; the hosts' guard records). */
function storeSnapshot(file: string): Map<string, string> {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare('SELECT key, value, lease FROM kv ORDER BY key').all() as Array<{ key: string; value: string; lease: number }>;
    return new Map(rows.filter((r) => r.lease === 0 && !r.key.startsWith('/ferry/ha/guarded/')).map((r) => [r.key, r.value]));
  } finally {
    db.close();
  }
}

function routeRegex(pattern: string): RegExp {
  return new RegExp('^' + pattern.replace(/:(\w+)/g, '([^/]+)') + '$');
}

describe('every agent route fuzzed (2-host lab)', () => {
  // Two hosts (the least a lab has); nothing but the agents runs.
  const suite = useLab('fuzz', ['--hosts', '2']);
  let admin: Identity;
  let host: Identity;
  let socket: string;
  let table: RouteInput[];
  const agents = { admin: new https.Agent({ keepAlive: true, maxSockets: 1 }), host: new https.Agent({ keepAlive: true, maxSockets: 1 }) };

  /** A request as the route's caller: a host's certificate (h2's, asking h1) for the hosts' routes, else the admin's. */
  const call = (route: RouteInput, method: string, requestPath: string, body?: string) =>
    route.who === 'host' ? send(agents.host, socket, host, method, requestPath, body) : send(agents.admin, socket, admin, method, requestPath, body);

  /**
   * Whether a path could reach a route with parameters its schema takes: the URL's '.' and '..'
   * segments (and their %2e spellings) are resolved before routing, so a broken parameter could
   * turn into another, valid, path. Such a request is never sent.
   */
  const couldAct = (method: string, requestPath: string): boolean => {
    const pathname = new URL(requestPath, 'https://agent').pathname;
    return table.some((r) => {
      const m = r.method === method ? routeRegex(r.pattern).exec(pathname) : null;
      if (!m) return false;
      try {
        return accepts(r.input.params, Object.fromEntries(paramNames(r.pattern).map((n, i) => [n, decodeURIComponent(m[i + 1]!)])));
      } catch {
        return false;
      }
    });
  };

  it(`sends every route requests broken by construction: always a 4xx with a message, the agent alive, the store unchanged (seed ${SEED})`, async (t) => {
    console.log(`fuzz seed ${SEED}, ${RUNS} runs per route and kind (FERRY_FUZZ_SEED=${SEED} reproduces)`);
    t.diagnostic(`seed ${SEED}`);
    admin = await loadIdentity(path.join(suite.dir, 'admin'));
    host = await loadIdentity(path.join(suite.dir, 'hosts', 'h2', 'cert'));
    socket = path.join(suite.dir, 'hosts', 'h1', 'agent.sock');
    const agentPid = suite.lab.hosts.find((h) => h.name === 'h1')!.pid!;
    const store = path.join(suite.dir, 'state.db');
    const listed = await send(agents.admin, socket, admin, 'GET', '/v1/routes');
    assert.equal(listed.status, 200, listed.text);
    table = (JSON.parse(listed.text) as { routes: RouteInput[] }).routes;
    assert.ok(table.length >= 70, `the agent lists ${table.length} routes`);

    const before = storeSnapshot(store);
    const t0 = Date.now();
    let requests = 0;
    for (const [index, route] of table.entries()) {
      const name = `${route.method} ${route.pattern}`;
      if (!ONLY.test(name)) continue;
      const routeStarted = Date.now();
      const kinds: Array<[string, fc.Arbitrary<FuzzRequest>]> = [
        ...(paramNames(route.pattern).length ? [['path', brokenPath(route)] as [string, fc.Arbitrary<FuzzRequest>]] : []),
        route.input.query ? ['query', brokenQuery(route)] : ['body', brokenBody(route)],
      ];
      for (const [kind, arbitrary] of kinds) {
        const seed = SEED + index * 10 + (kind === 'path' ? 1 : 2);
        await fc.assert(
          fc.asyncProperty(arbitrary, async (request) => {
            if (request.broken === 'path') fc.pre(!couldAct(route.method, request.path));
            requests++;
            const what = `${name} (${request.broken} broken; seed ${seed}): ${route.method} ${request.path.slice(0, 200)} ${request.body?.slice(0, 200) ?? ''}`;
            try {
              const answer = await call(route, route.method, request.path, request.body);
              if (answer.ms > SLOW_MS) console.log(`slow: ${answer.ms} ms for ${what}`);
              // A broken path is refused as such (400) or reaches no route (404); a broken body or query is refused as such; a request line over 16 KiB is not parsed (431).
              assertRefused(answer, what, request.broken === 'path' ? [400, 404, 431] : [400, 431]);
            } catch (err) {
              // fast-check prints the (long) counterexample; this says what went wrong, first.
              console.error(`FAILED: ${(err as Error).message.slice(0, 2000)}`);
              throw err;
            }
          }),
          { seed, numRuns: RUNS, endOnFailure: true },
        );
      }
      if (!route.input.query) {
        // A body over the limit: refused as too large, before it is parsed.
        const huge = await call(route, route.method, route.pattern.replace(/:(\w+)/g, 'fuzz'), `{"a":"${'x'.repeat(1024 * 1024)}"}`);
        requests++;
        assertRefused(huge, `${name}: a body over 1 MiB`, [400, 413]);
      }
      for (const method of ['PUT', 'PATCH', 'OPTIONS']) {
        // A method no route has: no route (the path's own method is not tried).
        assertRefused(await call(route, method, route.pattern.replace(/:(\w+)/g, 'fuzz'), '{}'), `${method} ${route.pattern}`, [404]);
        requests++;
      }
      process.kill(agentPid, 0); // still running
      const health = await send(agents.admin, socket, admin, 'GET', '/v1/health');
      assert.equal(health.status, 200, `after ${name}, /v1/health: ${health.text}`);
      assert.deepEqual(storeSnapshot(store), before, `after ${name}, the store changed`);
      if (Date.now() - routeStarted > 2000) t.diagnostic(`${name} took ${Date.now() - routeStarted} ms`);
    }
    const seconds = (Date.now() - t0) / 1000;
    t.diagnostic(`${requests} requests to ${table.length} routes in ${seconds.toFixed(1)} s`);
    console.log(`fuzz: ${requests} requests to ${table.length} routes in ${seconds.toFixed(1)} s, seed ${SEED}`);
  });

  it('regression: a field nested 100,000 deep crashed the refusal (500, Maximum call stack size exceeded)', async () => {
    const deep = `{"to":${'['.repeat(100_000)}${']'.repeat(100_000)}}`;
    const answer = await send(agents.admin, socket, admin, 'POST', '/v1/nodes/h2/drain', deep);
    assertRefused(answer, 'drain with a deep "to"', [400]);
    assert.match(answer.text, /body\/to\/0: an array nested too deep to show is not a host name/);
    const params = `{"to":"h2","token":1,"params":{"policy":${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}}}`;
    assertRefused(await send(agents.admin, socket, admin, 'POST', '/v1/vms/fuzz/migrate', params), 'migrate with a deep policy', [404, 409, 422]);
  });

  it('regression: a query field named __proto__ was dropped before the schema saw it (POST /v1/sink?__proto__=1 answered 200)', async () => {
    const answer = await send(agents.host, socket, host, 'POST', '/v1/sink?__proto__=1', 'bytes');
    assertRefused(answer, 'the link probe with a __proto__ query field', [400]);
    assert.match(answer.text, /query: \\"__proto__\\" is not a field of this request/);
  });

  it('regression: a request line over 16 KiB was answered 431 without a JSON error (Node closed it with no body)', async () => {
    const answer = await send(agents.admin, socket, admin, 'GET', `/v1/cluster/vms/${'%C3%A9'.repeat(5000)}`);
    assertRefused(answer, 'a 30 KB path', [431]);
  });

  it('regression: a character split between two pieces of a body was read as two U+FFFD', async () => {
    // {"é":1}, its 'é' (C3 A9) cut in two: the refusal quotes the field as sent.
    const answer = await send(agents.admin, socket, admin, 'POST', '/v1/cluster/balance', [Buffer.from([0x7b, 0x22, 0xc3]), Buffer.from([0xa9, 0x22, 0x3a, 0x31, 0x7d])]);
    assertRefused(answer, 'a split character', [400]);
    assert.match(answer.text, /body: \\"é\\" is not a field of this request/);
  });

  it("refuses a bad VM name on the console's and the display's upgrade, before looking for the VM", async () => {
    for (const [upgrade, route] of [['ferry-console', 'console'], ['websocket', 'vnc']] as const) {
      for (const bad of ['a%2Fb', '%2e%2e%2Fx', 'A', 'a%00b', '%zz', 'x'.repeat(5000)]) {
        const answer = await send(agents.admin, socket, admin, 'GET', `/v1/vms/${bad}/${route}`, undefined, { connection: 'Upgrade', upgrade, 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' });
        assertRefused(answer, `${route} of '${bad.slice(0, 40)}'`, [400]);
      }
    }
  });
});
