/**
 * The REST API of a 3-host lab, as a script or a browser uses it, through each host's API socket
 * (what `ferry ui` forwards): users and tokens made with the CLI; no answer without a credential;
 * a login session's cookie (HttpOnly, Secure, SameSite=Strict) and its CSRF token; bad input refused
 * with a message; a viewer refused a migration; the OpenAPI document against the app's routes; a live
 * migration started through a host that is not the VM's (the user's credential forwarded to its
 * host), followed on the event stream, recorded with who asked; the guest still answering from the
 * same boot; Prometheus metrics that parse and move.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { describe, it } from 'node:test';
import { buildApi } from '../../src/api/server.ts';
import type { AgentContext } from '../../src/agent/context.ts';
import { qemuPidsOf } from '../../src/lab/lab.ts';
import { useLab } from '../helpers/lab.ts';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: Record<string, unknown>;
}

/** One request to a host's REST API through its unix socket. */
function request(socket: string, method: string, url: string, options: { headers?: Record<string, string>; body?: unknown } = {}): Promise<Answer> {
  const body = options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: url, headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...options.headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(text) as Record<string, unknown>;
        } catch {
          /* metrics are text */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Prometheus' text format, line by line: a sample is NAME{LABELS} VALUE; anything else is a comment. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    samples.set(m[1]!, Number(m[2]));
  }
  return samples;
}

describe('REST API (3-host lab)', () => {
  const suite = useLab('api');
  const cli = suite.cli;
  const socketOf = (host: string) => path.join(suite.dir, 'hosts', host, 'api.sock');
  const tokens: Record<string, string> = {};
  const password = 'correct horse battery staple';
  const bearer = (user: string) => ({ authorization: `Bearer ${tokens[user]}` });

  it('users and tokens from the CLI; nothing answers without a credential', async () => {
    const file = path.join(suite.dir, 'pw');
    await writeFile(file, `${password}\n`, { mode: 0o600 });
    for (const [name, role] of [['alice', 'operator'], ['victor', 'viewer']] as const) {
      const added = await cli('user', 'add', name, '--role', role, '--password-file', file);
      assert.equal(added.code, 0, added.stderr);
      const token = await cli('token', 'create', '--user', name, '--label', 'tests');
      assert.equal(token.code, 0, token.stderr);
      tokens[name] = token.json.token as string;
      assert.match(tokens[name]!, /^ferry_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    }
    await writeFile(path.join(suite.dir, 'short'), 'tiny\n');
    const short = await cli('user', 'add', 'bob', '--role', 'viewer', '--password-file', path.join(suite.dir, 'short'));
    assert.notEqual(short.code, 0);
    assert.match(short.stderr, /at least 12 characters/);
    assert.deepEqual(((await cli('user', 'list')).json.users as Array<{ name: string }>).map((u) => u.name).sort(), ['alice', 'victor']);
    assert.notEqual((await cli('user', 'add', 'alice', '--role', 'admin', '--password-file', file)).code, 0, 'a name is taken once');
    for (const url of ['/api/v1/vms', '/api/v1/hosts', '/api/v1/openapi.json', '/metrics', '/api/v1/events']) {
      const answer = await request(socketOf('h1'), 'GET', url);
      assert.equal(answer.status, 401, `${url} without a credential`);
      assert.match(answer.json['error'] as string, /log in first/);
    }
    const forged = await request(socketOf('h1'), 'GET', '/api/v1/vms', { headers: { authorization: `Bearer ${tokens['alice']!.slice(0, -2)}xx` } });
    assert.equal(forged.status, 401);
    assert.equal((await request(socketOf('h1'), 'GET', '/api/v1/vms', { headers: bearer('victor') })).status, 200);
  });

  it('a login session: cookie flags, CSRF token required on a change, bad input refused with a message', async () => {
    const wrong = await request(socketOf('h2'), 'POST', '/api/v1/session', { body: { user: 'alice', password: 'not it at all' } });
    assert.equal(wrong.status, 401);
    const login = await request(socketOf('h2'), 'POST', '/api/v1/session', { body: { user: 'alice', password } });
    assert.equal(login.status, 200, login.text);
    const setCookie = String(login.headers['set-cookie']);
    assert.match(setCookie, /ferry_session=[A-Za-z0-9_-]{43}/);
    for (const flag of [/HttpOnly/i, /Secure/i, /SameSite=Strict/i]) assert.match(setCookie, flag);
    const cookie = setCookie.split(';')[0]!;
    const csrf = login.json['csrfToken'] as string;
    const me = await request(socketOf('h2'), 'GET', '/api/v1/session', { headers: { cookie } });
    assert.deepEqual([me.json['user'], me.json['role'], me.json['csrfToken']], ['alice', 'operator', csrf]);
    const noCsrf = await request(socketOf('h2'), 'POST', '/api/v1/vms/nosuch/migrate', { headers: { cookie }, body: { to: 'h1' } });
    assert.equal(noCsrf.status, 403);
    assert.match(noCsrf.json['error'] as string, /CSRF token/);
    const withCsrf = { cookie, 'x-csrf-token': csrf };
    for (const [body, why] of [
      [{ to: '../etc' }, /body\/to must match pattern/],
      [{ to: 'h1', policy: 'fastest' }, /body\/policy must be equal to one of the allowed values/],
      [{ to: 'h1', extra: 1 }, /must NOT have additional properties/],
      [{}, /must have required property 'to'/],
      ['{not json', /Body is not valid JSON|Unexpected token/],
    ] as const) {
      const bad = await request(socketOf('h2'), 'POST', '/api/v1/vms/a1/migrate', { headers: withCsrf, body });
      assert.equal(bad.status, 400, `${JSON.stringify(body)}: ${bad.text}`);
      assert.match(bad.json['error'] as string, why);
    }
    const huge = await request(socketOf('h2'), 'POST', '/api/v1/vms/a1/migrate', { headers: withCsrf, body: { to: 'x'.repeat(100_000) } });
    assert.equal(huge.status, 413, 'a body over 64 KiB is refused');
    assert.equal((await request(socketOf('h2'), 'GET', '/api/v1/vms/a%2F..%2Fb', { headers: bearer('victor') })).status, 400);
    const out = await request(socketOf('h2'), 'DELETE', '/api/v1/session', { headers: withCsrf });
    assert.equal(out.status, 200);
    assert.equal((await request(socketOf('h2'), 'GET', '/api/v1/vms', { headers: { cookie } })).status, 401, 'the session ended');
    // Password guessing: 5 failures for a name (through the local socket logins have no address: by name), then even the right password waits a minute.
    const guesses: number[] = [];
    for (let i = 0; i < 5; i++) guesses.push((await request(socketOf('h2'), 'POST', '/api/v1/session', { body: { user: 'victor', password: `guess number ${i}` } })).status);
    assert.deepEqual(guesses, [401, 401, 401, 401, 401]);
    const locked = await request(socketOf('h2'), 'POST', '/api/v1/session', { body: { user: 'victor', password } });
    assert.equal(locked.status, 429);
    assert.match(locked.json['error'] as string, /too many failed logins/);
    assert.match(await readFile(path.join(suite.dir, 'hosts', 'h2', 'agent.log'), 'utf8'), /failed login as 'victor'/);
  });

  it('the OpenAPI document lists exactly the routes the app serves', async () => {
    const doc = await request(socketOf('h1'), 'GET', '/api/v1/openapi.json', { headers: bearer('victor') });
    assert.equal(doc.status, 200);
    const paths = doc.json['paths'] as Record<string, Record<string, unknown>>;
    const documented = Object.entries(paths)
      .flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`))
      .sort();
    // The same app, built here: its routes as fastify registered them (no store is touched to list them).
    const { routes } = await buildApi({ state: { store: {} } } as unknown as AgentContext);
    const served = routes
      .filter((r) => !r.hidden)
      .map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, '{$1}')}`)
      .sort();
    assert.deepEqual(documented, served);
    assert.ok(served.includes('POST /api/v1/vms/{name}/migrate'));
    const migrate = paths['/api/v1/vms/{name}/migrate']!['post'] as { requestBody: { content: Record<string, { schema: { required: string[] } }> } };
    assert.deepEqual(migrate.requestBody.content['application/json']!.schema.required, ['to']);
  });

  it('an operator migrates a VM through another host\'s API: forwarded to its host, followed on the event stream, recorded with who asked; a viewer may not', async () => {
    const created = await cli('vm', 'create', 'a1', '--memory', '128', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    const ip = created.json.ip as string;
    const boot = (await suite.probe.gamesrv(ip)).boot;
    const metricsBefore = parsePrometheus((await request(socketOf('h1'), 'GET', '/metrics', { headers: bearer('victor') })).text);
    assert.equal(metricsBefore.get('ferry_migrations_total{outcome="completed",policy="balanced"}') ?? 0, 0);

    const viewer = await request(socketOf('h3'), 'POST', '/api/v1/vms/a1/migrate', { headers: bearer('victor'), body: { to: 'h2' } });
    assert.equal(viewer.status, 403);
    assert.match(viewer.json['error'] as string, /needs the role operator; user 'victor' is viewer/);

    const candidates = await request(socketOf('h3'), 'GET', '/api/v1/vms/a1/candidates', { headers: bearer('victor') });
    assert.deepEqual((candidates.json['hosts'] as Array<{ host: string; ok: boolean }>).map((h) => [h.host, h.ok]), [['h1', false], ['h2', true], ['h3', true]]);

    // The event stream, opened before the migration.
    const events: Array<{ event: string; data: Record<string, unknown> }> = [];
    const stream = http.request({ socketPath: socketOf('h3'), path: '/api/v1/events', headers: bearer('victor') });
    let ready: () => void;
    const isReady = new Promise<void>((resolve) => (ready = resolve));
    const streamed = new Promise<void>((resolve, reject) => {
      stream.on('response', (res) => {
        assert.equal(res.headers['content-type'], 'text/event-stream');
        let buffer = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffer += chunk;
          let end: number;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = /^event: (\w+)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && data) events.push({ event, data: JSON.parse(data) as Record<string, unknown> });
            if (event === 'ready') ready();
            if (events.some((e) => e.event === 'vm' && e.data['name'] === 'a1' && e.data['host'] === 'h2') && events.some((e) => e.event === 'job' && e.data['vm'] === 'a1' && e.data['state'] === 'succeeded')) resolve();
          }
        });
      });
      stream.on('error', reject);
    });
    stream.end();
    await isReady;

    const started = await request(socketOf('h3'), 'POST', '/api/v1/vms/a1/migrate', { headers: bearer('alice'), body: { to: 'h2' } });
    assert.equal(started.status, 200, started.text);
    const jobId = (started.json['job'] as { id: string }).id;
    await Promise.race([streamed, new Promise((_, reject) => setTimeout(() => reject(new Error(`no end on the event stream: ${JSON.stringify(events)}`)), 90_000))]);
    stream.destroy();
    assert.ok(events.some((e) => e.event === 'job' && e.data['id'] === jobId && e.data['state'] === 'running'), 'its progress was streamed');
    const job = (await request(socketOf('h2'), 'GET', `/api/v1/jobs/${jobId}`, { headers: bearer('victor') })).json['job'] as { state: string; by: string; host: string };
    assert.equal(job.state, 'succeeded');
    assert.equal(job.host, 'h1', 'run by the VM\'s own host');
    assert.equal(job.by, 'alice (operator, through h3)');
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, 'the guest answers from the same boot');
    assert.equal((await qemuPidsOf('a1')).length, 1);

    const metrics = parsePrometheus((await request(socketOf('h1'), 'GET', '/metrics', { headers: bearer('victor') })).text);
    assert.equal(metrics.get('ferry_migrations_total{outcome="completed",policy="balanced"}'), 1);
    assert.equal(metrics.get('ferry_migration_duration_seconds_count{outcome="completed"}'), 1);
    assert.ok((metrics.get('ferry_migration_bytes_total{kind="ram"}') ?? 0) > 1e6);
    assert.ok((metrics.get('ferry_lease_age_seconds') ?? -1) >= 0);
    assert.ok(metrics.has('ferry_store_latency_seconds'));
    const onH2 = parsePrometheus((await request(socketOf('h2'), 'GET', '/metrics', { headers: bearer('victor') })).text);
    assert.equal(onH2.get('ferry_vms{desired="running",running="true"}'), 1, 'h2 owns and runs a1 now');
  });
});
