/**
 * The REST API for people and scripts, served by every agent (as each Proxmox node serves its API):
 * on its own HTTPS port with the host's certificate from the cluster CA, and on a unix socket that
 * only the agent's user reaches (`ferry ui` forwards localhost to it). fastify validates every
 * body, parameter and query against the route's JSON schema; @fastify/swagger serves the OpenAPI
 * document made from the same schemas.
 *
 * Authentication: an API token (`Authorization: Bearer ferry_…`, `ferry token create`) or a login
 * session (a Secure, HttpOnly, SameSite=Strict cookie; a change made with it must echo the session's
 * CSRF token in `x-csrf-token`). Nothing but the login answers without one. Each route names the
 * least role it needs (cluster/users.ts): viewer reads, operator acts, admin manages users.
 *
 * What only a VM's own host can do (migrate it, cancel its migration) is forwarded to that host's
 * agent over mutual TLS with this host's certificate and the user's credential, which that agent
 * checks itself (agent/authz.ts, access "operator"); the job records who asked.
 */
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { chmod, rm } from 'node:fs/promises';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import cookie from '@fastify/cookie';
import swagger from '@fastify/swagger';
import fastifyStatic from '@fastify/static';
import { existsSync } from 'node:fs';
import { PROJECT_ROOT } from '../util/project.ts';
import { AgentClient } from '../agent/client.ts';
import type { AgentContext } from '../agent/context.ts';
import { ApiError } from '../agent/errors.ts';
import { StoreUnavailableError } from '../cluster/store/types.ts';
import { FORWARDED_USER_HEADER } from '../agent/server.ts';
import { HA_REQUESTS, HaRecords } from '../cluster/ha/records.ts';
import type { Job } from '../cluster/model.ts';
import { poolLocation, type StoragePoolConfig } from '../storage/types.ts';
import { hostsTakingNoVm } from '../cluster/moves/records.ts';
import { bestModelOf } from '../cluster/cpu.ts';
import { ROLES, roleAllows, UserError, UserRecords, SESSION_MS, type ApiUser, type Role } from '../cluster/users.ts';
import { JOB_ID_PATTERN, MOVE_JOB_ID_PATTERN, nameSchema } from '../util/names.ts';
import { candidateHosts } from '../agent/cpu.ts';
import { moveRoutes } from '../agent/moves.ts';
import { haRoutes } from '../agent/ha.ts';

declare module 'fastify' {
  interface FastifyRequest {
    user?: ApiUser;
    credential?: string;
  }
  interface FastifyContextConfig {
    /** The least role the route needs; absent: no login needed (the login itself). */
    role?: Role;
  }
}

export const SESSION_COOKIE = 'ferry_session';
/** Proxmox VE's port for its API and web UI. */
export const DEFAULT_API_PORT = 8006;
const NAME = nameSchema();
const nameParams = (key: string) => ({ type: 'object', required: [key], properties: { [key]: NAME }, additionalProperties: false }) as const;
const POLICIES = ['balanced', 'minimal-downtime', 'must-finish'] as const;

export interface ApiServer {
  app: FastifyInstance;
  /** The unix socket the API also listens on. */
  socket: string;
  close(): Promise<void>;
}

/** Beside the agent's own socket where it has one (what a CLI on the machine knows), else in its state directory. */
export function apiSocketPath(node: { socket?: string; stateDir: string }): string {
  return path.join(node.socket ? path.dirname(node.socket) : node.stateDir, 'api.sock');
}

/** Builds the app (routes, schemas, auth); `listen` then serves it on HTTPS and the unix socket. */
export async function buildApi(
  ctx: AgentContext,
  tls?: { key: string; cert: string },
): Promise<{ app: FastifyInstance; servers: Array<http.Server | https.Server>; routes: Array<{ method: string; url: string; hidden: boolean }> }> {
  const servers: Array<http.Server | https.Server> = [];
  const routes: Array<{ method: string; url: string; hidden: boolean }> = [];
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } },
    serverFactory: (handler) => {
      const local = http.createServer(handler);
      servers.push(local);
      if (tls) {
        const secure = https.createServer({ key: tls.key, cert: tls.cert, handshakeTimeout: 10_000 }, handler);
        // As the agent's own API: a flood of connections is closed, a slow client does not hold one.
        secure.maxConnections = 256;
        secure.headersTimeout = 10_000;
        secure.requestTimeout = 30_000;
        servers.push(secure);
        return secure;
      }
      return local;
    },
  });
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) if (method !== 'HEAD') routes.push({ method, url: route.url, hidden: Boolean((route.schema as { hide?: boolean } | undefined)?.hide) });
  });
  const users = new UserRecords(ctx.state.store);
  const state = ctx.state;
  const logins = new LoginLimiter();
  const events = new EventBroadcaster(ctx, users);
  app.addHook('onClose', async () => events.closeAll());

  await app.register(cookie);
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'ferry REST API', version: '1', description: 'Hosts, VMs, storage, jobs, HA and live migration of a ferry cluster.' },
      components: {
        securitySchemes: {
          token: { type: 'http', scheme: 'bearer', description: "An API token: 'ferry token create --user NAME'" },
          session: { type: 'apiKey', in: 'cookie', name: SESSION_COOKIE, description: 'A login session (POST /api/v1/session); changes also send x-csrf-token' },
        },
      },
      security: [{ token: [] }, { session: [] }],
    },
  });

  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, request, reply) => {
    if (err.validation) return reply.status(400).send({ error: `bad request: ${err.message}`, kind: 'ValidationError' });
    const status = err instanceof ApiError ? err.status : err instanceof UserError ? 400 : err instanceof StoreUnavailableError ? 503 : (err.statusCode ?? 500);
    // 503: the store (or a host) cannot serve now, and the message says why and what to do.
    if (status >= 500 && status !== 503) {
      ctx.log(`REST API error in ${request.method} ${request.url}: ${err.stack}`);
      return reply.status(status).send({ error: `internal error on ${ctx.node.name} (its agent's log has the details)`, kind: 'InternalError' });
    }
    return reply.status(status).send({ error: err.message, kind: err.name });
  });
  app.setNotFoundHandler((request, reply) => reply.status(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}`, kind: 'NotFoundError' }));

  // Who calls, before any route runs: a token or a session; a change by cookie must echo its CSRF token.
  app.addHook('onRequest', async (request) => {
    const role = request.routeOptions.config.role;
    if (!role) return;
    const auth = request.headers.authorization;
    if (auth) {
      const token = /^Bearer (\S+)$/.exec(auth)?.[1];
      request.user = token ? await users.byToken(token) : undefined;
      if (!request.user) throw new ApiError(401, 'the API token is not valid (revoked, or its user removed); create one with ferry token create');
      request.credential = token;
    } else {
      const session = request.cookies[SESSION_COOKIE];
      request.user = session ? await users.bySession(session) : undefined;
      if (!request.user) throw new ApiError(401, 'log in first (POST /api/v1/session), or send an API token (Authorization: Bearer ...)');
      if (request.method !== 'GET' && !sameSecret(request.headers['x-csrf-token'], request.user.csrfToken))
        throw new ApiError(403, 'a change made with a session cookie must send its CSRF token in x-csrf-token (GET /api/v1/session gives it)');
      request.credential = session;
    }
    if (!roleAllows(request.user.role, role)) throw new ApiError(403, `this needs the role ${role}; user '${request.user.name}' is ${request.user.role}`);
  });

  /** The VM's host's agent, asked with this host's certificate on behalf of the request's user. */
  const ownerAgent = async (request: FastifyRequest, host: string) => {
    const record = await state.host(host);
    if (!record) throw new ApiError(409, `host '${host}' is down (no live lease): what only it can do must wait until it is back`);
    return new AgentClient({ url: record.url, name: record.name }, ctx.identity, 30_000, { [FORWARDED_USER_HEADER]: request.credential! });
  };
  const requireVm = async (name: string) => {
    const vm = await state.vm(name);
    if (!vm) throw new ApiError(404, `no VM named '${name}'`);
    return vm;
  };
  const viewer = { config: { role: 'viewer' as const } };
  const operator = { config: { role: 'operator' as const } };
  const admin = { config: { role: 'admin' as const } };

  app.post(
    '/api/v1/session',
    {
      schema: {
        summary: 'Log in: a session cookie (2 hours) and its CSRF token',
        security: [],
        body: { type: 'object', required: ['user', 'password'], properties: { user: NAME, password: { type: 'string', minLength: 1, maxLength: 1024 } }, additionalProperties: false },
      },
    },
    async (request, reply) => {
      const { user, password } = request.body as { user: string; password: string };
      const login = await logins.attempt(user, request.socket.remoteAddress, () => users.login(user, password));
      if (!login) {
        ctx.log(`REST API: failed login as '${user}' from ${request.socket.remoteAddress ?? 'the local socket'}`);
        throw new ApiError(401, 'wrong user name or password');
      }
      reply.setCookie(SESSION_COOKIE, login.sessionId, { httpOnly: true, secure: true, sameSite: 'strict', path: '/', maxAge: SESSION_MS / 1000 });
      ctx.log(`REST API: ${user} (${login.user.role}) logged in`);
      return { user: login.user.name, role: login.user.role, csrfToken: login.session.csrfToken, expiresAt: login.session.expiresAt };
    },
  );
  app.get('/api/v1/session', { ...viewer, schema: { summary: 'Who the caller is (and the CSRF token of its session)' } }, async (request) => ({
    user: request.user!.name,
    role: request.user!.role,
    via: request.user!.via,
    ...(request.user!.csrfToken ? { csrfToken: request.user!.csrfToken } : {}),
  }));
  app.delete('/api/v1/session', { ...viewer, schema: { summary: 'Log out' } }, async (request, reply) => {
    if (request.user!.via === 'session') await users.logout(request.credential!);
    reply.clearCookie(SESSION_COOKIE, { path: '/' });
    return { loggedOut: true };
  });

  app.get('/api/v1/hosts', { ...viewer, schema: { summary: 'Hosts: state, memory, QEMU, CPU, maintenance' } }, async () => {
    const [hosts, members, vms, noVm] = await Promise.all([state.hosts(), state.members(), state.vms(), hostsTakingNoVm(state.store)]);
    const used = new Map<string, number>();
    for (const v of vms) used.set(v.owner, (used.get(v.owner) ?? 0) + v.spec.memoryMiB);
    const up = new Set(hosts.map((h) => h.name));
    return {
      hosts: [
        ...hosts.map((h) => ({
          name: h.name,
          state: 'up',
          address: h.address,
          memoryMiB: h.memoryMiB,
          freeMemoryMiB: h.memoryMiB - (used.get(h.name) ?? 0),
          vms: vms.filter((v) => v.owner === h.name).length,
          startedAt: h.startedAt,
          qemu: h.qemu?.version ?? null,
          cpu: h.cpu ? { accel: h.cpu.accel, features: h.cpu.features.length, restriction: h.cpu.restriction ?? null, best: bestModelOf(h)?.name ?? null } : null,
          takesNoVm: noVm.get(h.name) ?? null,
        })),
        ...members.filter((m) => !up.has(m.name)).map((m) => ({ name: m.name, state: 'down', address: m.address ?? null, vms: vms.filter((v) => v.owner === m.name).length })),
      ],
    };
  });
  app.get('/api/v1/vms', { ...viewer, schema: { summary: 'VMs: host, state, HA state' } }, async () => {
    const [vms, statuses, migrations] = await Promise.all([state.vms(), new HaRecords(state.store).statuses(), state.migrations()]);
    const ha = new Map(statuses.map((s) => [s.vm, s]));
    const moving = new Map(migrations.map((m) => [m.vm, m]));
    return {
      vms: vms.map((v) => ({
        name: v.spec.name,
        host: v.owner,
        desired: v.desired,
        memoryMiB: v.spec.memoryMiB,
        vcpus: v.spec.vcpus,
        cpuModel: v.spec.cpuModel,
        ip: v.ip ?? null,
        ha: ha.get(v.spec.name) ? { actual: ha.get(v.spec.name)!.actual, reason: ha.get(v.spec.name)!.reason ?? null } : null,
        migrating: moving.get(v.spec.name) ? { to: moving.get(v.spec.name)!.destination, job: moving.get(v.spec.name)!.jobId } : null,
      })),
    };
  });
  app.get('/api/v1/vms/:name', { ...viewer, schema: { summary: 'One VM: its record, its migration in flight, its jobs', params: nameParams('name') } }, async (request) => {
    const { name } = request.params as { name: string };
    const vm = await requireVm(name);
    const jobs = (await state.jobs()).filter((j) => j.vm === name).slice(-20);
    const ha = new HaRecords(state.store);
    const [resource, status] = await Promise.all([ha.resource(name), ha.status(name)]);
    return { vm, migration: (await state.migration(name)) ?? null, jobs, ha: resource ? { resource, status: status ?? null } : null };
  });
  app.get('/api/v1/vms/:name/candidates', { ...viewer, schema: { summary: 'Every host as a live-migration destination: can it take the VM, and why not', params: nameParams('name') } }, async (request) => {
    const { name } = request.params as { name: string };
    await requireVm(name);
    return candidateHosts(ctx, name);
  });
  app.post(
    '/api/v1/vms/:name/migrate',
    {
      ...operator,
      schema: {
        summary: 'Live-migrate a VM (dryRun: predict each policy, nothing moves); answers with the job to follow',
        params: nameParams('name'),
        body: {
          type: 'object',
          required: ['to'],
          properties: {
            to: NAME,
            policy: { type: 'string', enum: POLICIES },
            bandwidthMiBps: { type: 'integer', minimum: 1, maximum: 100_000, description: 'Cap on the migration stream (MiB/s); default: none' },
            dryRun: { type: 'boolean' },
          },
          additionalProperties: false,
        },
      },
    },
    async (request) => {
      const { name } = request.params as { name: string };
      const { to, policy, bandwidthMiBps, dryRun } = request.body as { to: string; policy?: string; bandwidthMiBps?: number; dryRun?: boolean };
      const vm = await requireVm(name);
      const agent = await ownerAgent(request, vm.owner);
      if (dryRun) return { dryRun: await agent.call('POST', `/v1/vms/${name}/predict`, { to }, 120_000) };
      ctx.log(`REST API: ${request.user!.name} migrates ${name} from ${vm.owner} to ${to}`);
      const params = { ...(policy ? { policy } : {}), ...(bandwidthMiBps ? { maxBandwidth: bandwidthMiBps * 2 ** 20 } : {}) };
      return agent.call('POST', `/v1/vms/${name}/migrate`, { to, token: vm.token, params });
    },
  );

  app.get('/api/v1/jobs', { ...viewer, schema: { summary: 'Jobs, newest last' } }, async () => ({ jobs: await state.jobs() }));
  const jobParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', pattern: JOB_ID_PATTERN.source } }, additionalProperties: false } as const;
  app.get('/api/v1/jobs/:id', { ...viewer, schema: { summary: 'One job: its progress and log', params: jobParams } }, async (request) => {
    const job = await state.job((request.params as { id: string }).id);
    if (!job) throw new ApiError(404, `no job ${(request.params as { id: string }).id}`);
    return { job };
  });
  app.post('/api/v1/jobs/:id/cancel', { ...operator, schema: { summary: 'Cancel a migration under way: it rolls back, the VM stays on its source', params: jobParams } }, async (request) => {
    const job = await state.job((request.params as { id: string }).id);
    if (!job) throw new ApiError(404, `no job ${(request.params as { id: string }).id}`);
    if (job.kind !== 'migrate' || job.state !== 'running') throw new ApiError(409, `job ${job.id} is a ${job.kind} job, ${job.state}: only a running migration is cancelled here`);
    return (await ownerAgent(request, job.host)).call('POST', `/v1/jobs/${job.id}/cancel`, {});
  });

  // Drains, maintenance, their jobs and HA: the agent's own handlers (agent/moves.ts, ha.ts), run here
  // as a forwarded call for the user (the REST layer checked the role; the records name the user).
  const agentRoutes = [...moveRoutes(ctx), ...haRoutes(ctx)];
  const agentRoute = (method: string, pattern: string) => {
    const route = agentRoutes.find((r) => r.method === method && r.pattern === pattern);
    if (!route?.handler) throw new Error(`the agent has no ${method} ${pattern}`);
    return (request: FastifyRequest, params: Record<string, string>, body: Record<string, unknown> = {}) =>
      // As a forwarded call: this host acting for the user, whose role the REST layer checked (these
      // handlers read only the caller's name, for the records: 'alice (operator, through h1)').
      route.handler(params, body, { role: 'host', name: ctx.node.name, fingerprint: '', user: request.user! });
  };
  const drain = agentRoute('POST', '/v1/nodes/:host/drain');
  const maintenance = agentRoute('POST', '/v1/nodes/:host/maintenance');
  const cancelMove = agentRoute('POST', '/v1/moves/:id/cancel');
  const listMoves = agentRoute('GET', '/v1/moves');
  const PARALLEL = { type: 'integer', minimum: 1, maximum: 16 } as const;
  app.post(
    '/api/v1/nodes/:host/drain',
    {
      ...operator,
      schema: {
        summary: "Drain a host: its running VMs leave it by live migration (dryRun: the plan only); answers with the move job",
        params: nameParams('host'),
        body: {
          type: 'object',
          properties: { dryRun: { type: 'boolean' }, to: { type: 'array', items: NAME, maxItems: 64 }, parallel: PARALLEL, policy: { type: 'string', enum: POLICIES } },
          additionalProperties: false,
        },
      },
    },
    async (request) => drain(request, request.params as { host: string }, (request.body ?? {}) as Record<string, unknown>),
  );
  app.post(
    '/api/v1/nodes/:host/maintenance',
    {
      ...operator,
      schema: {
        summary: 'Maintenance on (no new VM; drained) or off (its VMs come back)',
        params: nameParams('host'),
        body: { type: 'object', required: ['on'], properties: { on: { type: 'boolean' }, parallel: PARALLEL }, additionalProperties: false },
      },
    },
    async (request) => maintenance(request, request.params as { host: string }, request.body as Record<string, unknown>),
  );
  app.get('/api/v1/moves', { ...viewer, schema: { summary: 'Move jobs (drains, returns, balances) with each VM\'s progress, and the hosts in maintenance' } }, async (request) => listMoves(request, {}));
  app.post(
    '/api/v1/moves/:id/cancel',
    {
      ...operator,
      schema: { summary: 'Cancel a move job: the migrations under way roll back, no more start', params: { type: 'object', required: ['id'], properties: { id: { type: 'string', pattern: MOVE_JOB_ID_PATTERN.source } }, additionalProperties: false } },
    },
    async (request) => cancelMove(request, request.params as { id: string }),
  );

  // A VM under HA: put it there or change what is asked of it (started, stopped, disabled, ignored), or take it out.
  const addHa = agentRoute('POST', '/v1/ha/resources');
  const setHa = agentRoute('POST', '/v1/ha/resources/:vm');
  const removeHa = agentRoute('DELETE', '/v1/ha/resources/:vm');
  app.post(
    '/api/v1/vms/:name/ha',
    {
      ...operator,
      schema: {
        summary: 'Put a VM under HA, or change what HA keeps it at (started, stopped, disabled, ignored)',
        params: nameParams('name'),
        body: { type: 'object', required: ['request'], properties: { request: { type: 'string', enum: HA_REQUESTS } }, additionalProperties: false },
      },
    },
    async (request) => {
      const { name } = request.params as { name: string };
      const { request: wanted } = request.body as { request: string };
      ctx.log(`REST API: ${request.user!.name} sets HA of ${name} to ${wanted}`);
      return (await new HaRecords(state.store).resource(name)) ? setHa(request, { vm: name }, { request: wanted }) : addHa(request, {}, { vm: name, request: wanted });
    },
  );
  app.delete('/api/v1/vms/:name/ha', { ...operator, schema: { summary: 'Take a VM out of HA (it runs on, unguarded)', params: nameParams('name') } }, async (request) => {
    const { name } = request.params as { name: string };
    ctx.log(`REST API: ${request.user!.name} takes ${name} out of HA`);
    return removeHa(request, { vm: name });
  });

  app.get('/api/v1/storage', { ...viewer, schema: { summary: 'Storage pools (where each is, which hosts reach it) and volumes' } }, async () => ({
    pools: (await state.pools()).map((p) => ({ ...p, location: poolLocation(p), reachedFrom: reachOf(p.type) })),
    volumes: await state.volumes(),
  }));
  app.get('/api/v1/ha', { ...viewer, schema: { summary: 'HA: resources, their states, rules, the manager, cluster maintenance' } }, async () => {
    const ha = new HaRecords(state.store);
    const [resources, statuses, rules, manager, maintenance] = await Promise.all([ha.resources(), ha.statuses(), ha.rules(), ha.manager(), ha.maintenance()]);
    return { resources, statuses, rules, manager: manager ?? null, maintenance: maintenance ?? null };
  });

  // Live events: a job's progress and state, a VM's host and state, as they change (Server-Sent Events).
  app.get('/api/v1/events', { ...viewer, schema: { summary: 'Server-Sent Events: job (progress, state) and vm (host, desired) as they change' } }, async (request, reply) => {
    events.open(request, reply);
  });

  app.get('/api/v1/users', { ...admin, schema: { summary: 'Users and their roles' } }, async () => ({
    users: (await users.list()).map(({ passwordHash: _hash, ...u }) => u),
  }));
  app.post(
    '/api/v1/users',
    {
      ...admin,
      schema: {
        summary: 'Add a user',
        body: { type: 'object', required: ['name', 'role', 'password'], properties: { name: NAME, role: { type: 'string', enum: ROLES }, password: { type: 'string', minLength: 12, maxLength: 1024 } }, additionalProperties: false },
      },
    },
    async (request) => {
      const { name, role, password } = request.body as { name: string; role: Role; password: string };
      const { passwordHash: _hash, ...user } = await users.add(name, role, password, request.user!.name);
      return { user };
    },
  );
  app.delete('/api/v1/users/:name', { ...admin, schema: { summary: 'Remove a user, with their tokens and sessions', params: nameParams('name') } }, async (request) => {
    const { name } = request.params as { name: string };
    if (!(await users.remove(name))) throw new ApiError(404, `no user '${name}'`);
    return { removed: name };
  });

  // The web UI's files (ui/dist, made by scripts/build.mjs): its login page must load before anyone logs in.
  const ui = path.join(PROJECT_ROOT, 'ui', 'dist');
  if (existsSync(ui)) await app.register(fastifyStatic, { root: ui, prefix: '/', schemaHide: true, maxAge: 0 });
  else app.get('/', { schema: { hide: true } }, async () => ({ error: 'the web UI is not built here: run node scripts/build.mjs' }));

  app.get('/api/v1/openapi.json', { ...viewer, schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { ...viewer, schema: { summary: 'Prometheus metrics of this agent' } }, async (_request, reply) => {
    if (!ctx.metrics) throw new ApiError(503, 'metrics are not kept by this agent');
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
  return { app, servers, routes };
}

/** Serves the API on `port` (HTTPS, this host's certificate) and on the unix socket. */
export async function serveApi(ctx: AgentContext, port: number): Promise<ApiServer> {
  const [key, cert] = await Promise.all([readFile(path.join(ctx.node.certDir, 'key.pem'), 'utf8'), readFile(path.join(ctx.node.certDir, 'cert.pem'), 'utf8')]);
  const { app, servers } = await buildApi(ctx, { key, cert });
  await app.ready();
  const socket = apiSocketPath(ctx.node);
  await rm(socket, { force: true });
  const [local, secure] = servers as [http.Server, https.Server];
  await new Promise<void>((resolve, reject) => secure.once('error', reject).listen(port, ctx.node.address, () => resolve()));
  await new Promise<void>((resolve, reject) => local.once('error', reject).listen(socket, () => resolve()));
  await chmod(socket, 0o600);
  return {
    app,
    socket,
    async close() {
      for (const s of servers) s.close();
      await app.close();
    },
  };
}

/** Which hosts reach a pool's volumes, in words. */
function reachOf(type: StoragePoolConfig['type']): string {
  if (type === 'local') return "each host its own (a VM's disks are copied when it moves)";
  if (type === 'replicated') return 'the two hosts of each volume (its replicas)';
  return 'every host';
}

function sameSecret(given: unknown, expected: string | undefined): boolean {
  if (typeof given !== 'string' || !expected) return false;
  const [a, b] = [Buffer.from(given), Buffer.from(expected)];
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Logins cost a 32 MiB scrypt each: at most two at once (more wait, a few; beyond that 429), and a
 * name — or a remote address — that failed 5 times in 5 minutes waits a minute (429): the agent's
 * own work (lease renewals) shares the machine. Logins through the local socket (`ferry ui`) have no
 * address of their own and are limited by name only.
 */
class LoginLimiter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  /** Failure times per name or address, oldest key first; only keys with a recent failure are kept. */
  private readonly failures = new Map<string, number[]>();

  async attempt<T>(user: string, ip: string | undefined, login: () => Promise<T | undefined>): Promise<T | undefined> {
    const keys = [`u:${user}`, ...(ip ? [`a:${ip}`] : [])];
    const now = Date.now();
    for (const key of keys) {
      const recent = this.recent(key, now);
      if (recent.length >= 5 && now - recent[recent.length - 1]! < 60_000) throw new ApiError(429, 'too many failed logins; wait a minute and try again');
    }
    if (this.running >= 2) {
      if (this.waiting.length >= 8) throw new ApiError(429, 'too many logins at once; try again in a moment');
      await new Promise<void>((resolve) => this.waiting.push(resolve)); // the slot is handed over, still counted
    } else this.running++;
    try {
      const result = await login();
      if (!result) for (const key of keys) this.fail(key);
      return result;
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  private recent(key: string, now: number): number[] {
    const recent = (this.failures.get(key) ?? []).filter((t) => now - t < 5 * 60_000);
    if (recent.length) this.failures.set(key, recent);
    else this.failures.delete(key);
    return recent;
  }

  private fail(key: string): void {
    const times = [...(this.failures.get(key) ?? []), Date.now()];
    this.failures.delete(key); // re-inserted last: the map stays oldest first
    this.failures.set(key, times);
    while (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value!);
  }
}

interface EventStream {
  reply: FastifyReply;
  user: ApiUser;
  credential: string;
  checkedAt: number;
  /** Its snapshot and 'ready' are written: from now on it gets every change. */
  ready: boolean;
}

/**
 * The event stream: one poll of the store every 500 ms for the whole agent, its changes written to
 * every open stream; each stream's credential checked again every 10 s (a logout, a removed user, a
 * revoked token or an expired session ends it); at most 8 streams per user.
 */
class EventBroadcaster {
  private readonly streams = new Set<EventStream>();
  private readonly seen = new Map<string, string>();
  /** The first poll only learns what is there. */
  private primed = false;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;

  constructor(
    private readonly ctx: AgentContext,
    private readonly users: UserRecords,
  ) {}

  open(request: FastifyRequest, reply: FastifyReply): void {
    const user = request.user!;
    if ([...this.streams].filter((s) => s.user.name === user.name).length >= 8) throw new ApiError(429, `user '${user.name}' has 8 event streams open already; close one`);
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    const stream: EventStream = { reply, user, credential: request.credential!, checkedAt: Date.now(), ready: false };
    this.streams.add(stream);
    reply.raw.on('close', () => this.drop(stream));
    this.timer ??= setInterval(() => void this.poll(), 500);
    // A poll first (what is known is current), then the jobs running now, then 'ready': no change after it is missed.
    void (async () => {
      await this.poll();
      for (const job of (await this.ctx.state.jobs()).filter((j) => j.state === 'running')) reply.raw.write(`event: job\ndata: ${jobView(job)}\n\n`);
      reply.raw.write('event: ready\ndata: {}\n\n');
      stream.ready = true;
    })().catch((err: Error) => this.ctx.log(`REST API event stream: ${err.message}`));
  }

  closeAll(): void {
    for (const s of this.streams) s.reply.raw.end();
    this.streams.clear();
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private drop(stream: EventStream): void {
    this.streams.delete(stream);
    if (!this.streams.size) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** One poll at a time; a caller during one waits for it. */
  private poll(): Promise<void> {
    this.polling ??= this.pollOnce().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async pollOnce(): Promise<void> {
    try {
      const [jobs, vms] = await Promise.all([this.ctx.state.jobs(), this.ctx.state.vms()]);
      const lines: string[] = [];
      const note = (key: string, kind: string, view: string) => {
        if (this.seen.get(key) !== view && this.primed) lines.push(`event: ${kind}\ndata: ${view}\n\n`);
        this.seen.set(key, view);
      };
      for (const job of jobs) note(`job:${job.id}`, 'job', jobView(job));
      for (const vm of vms) note(`vm:${vm.spec.name}`, 'vm', JSON.stringify({ name: vm.spec.name, host: vm.owner, desired: vm.desired }));
      this.primed = true;
      const now = Date.now();
      for (const s of [...this.streams]) {
        if (!s.ready) continue;
        // A client that does not read is not written to without end: dropped.
        if (s.reply.raw.writableLength > 1024 * 1024) {
          s.reply.raw.destroy();
          this.drop(s);
          continue;
        }
        for (const line of lines) s.reply.raw.write(line);
        if (now - s.checkedAt > 10_000) {
          s.checkedAt = now;
          const still = await (s.user.via === 'token' ? this.users.byToken(s.credential) : this.users.bySession(s.credential)).catch(() => s.user); // a store hiccup keeps it, checked again later
          if (!still || still.role !== s.user.role) {
            s.reply.raw.end('event: end\ndata: {"reason":"the credential is no longer valid"}\n\n');
            this.drop(s);
          }
        }
      }
    } catch (err) {
      this.ctx.log(`REST API event stream: ${(err as Error).message}`);
    }
  }
}

function jobView(job: Job): string {
  return JSON.stringify({ id: job.id, kind: job.kind, vm: job.vm, host: job.host, state: job.state, progress: job.progress ?? null, updatedAt: job.updatedAt });
}

export type { FastifyReply };
