/**
 * The agent's HTTPS API. Mutual TLS: a client without a certificate from the
 * cluster CA does not get past the handshake. Routes are small; the work is
 * in runtime.ts, incoming.ts and source-migration.ts.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { UpgradeRefusedError } from './console.ts';
import { StorageError } from '../storage/errors.ts';
import { chmod, rm } from 'node:fs/promises';
import type { TLSSocket } from 'node:tls';
import { MigrationRefusedError } from '../migration/errors.ts';
import { InvalidVmSpecError } from '../qemu/errors.ts';
import { FirmwareMissingError } from '../qemu/firmware.ts';
import { ApiError, NotFoundError } from './errors.ts';
import { StoreUnavailableError } from '../cluster/store/types.ts';
import type { AgentContext } from './context.ts';
import { authorize, callerOf, type Access, type Caller } from './authz.ts';
import { UserError, UserRecords, type ApiUser } from '../cluster/users.ts';
import { compilePart, InvalidRequestError, NOTHING, pathParams, VM, type JsonInput, type StreamInput } from './request-schema.ts';

export type Handler = (params: Record<string, string>, body: Record<string, unknown>, caller: Caller) => Promise<unknown>;

/** A route that reads its body itself (an image upload: a stream of bytes, not JSON); the query carries its parameters. */
export type StreamHandler = (params: Record<string, string>, request: IncomingMessage, caller: Caller, query: Record<string, string>) => Promise<unknown>;

interface RouteBase {
  method: 'GET' | 'POST' | 'DELETE';
  pattern: string;
  /** Which roles may call it (authz.ts); checked before the handler runs. */
  who: Access;
}

/** A route with a JSON body (read and bounded by the server), both its path and its body checked against its schemas. */
export interface JsonRoute extends RouteBase {
  input: JsonInput;
  handler: Handler;
  stream?: never;
}

/** A route that reads its own body; its path and its query are checked against its schemas. */
export interface StreamRoute extends RouteBase {
  input: StreamInput;
  stream: StreamHandler;
  handler?: never;
}

export type Route = JsonRoute | StreamRoute;

/** What the route table says of a route (GET /v1/routes): enough for a client, or a fuzzer, to know what it takes. */
export interface RouteDescription {
  method: Route['method'];
  pattern: string;
  who: Access;
  input: JsonInput | StreamInput;
}

export function compileRoutes(routes: Route[]) {
  return routes.map((r) => {
    const names: string[] = [];
    const regex = new RegExp('^' + r.pattern.replace(/:(\w+)/g, (_, n: string) => (names.push(n), '([^/]+)')) + '$');
    const declared = Object.keys((r.input.params as { properties?: object }).properties ?? {});
    if (declared.sort().join() !== [...names].sort().join()) throw new Error(`${r.method} ${r.pattern}: its params schema declares ${declared.join(', ') || 'none'}, its pattern has ${names.join(', ') || 'none'}`);
    const checkParams = compilePart('path', r.input.params);
    const checkBody = 'body' in r.input ? compilePart('body', r.input.body) : undefined;
    const checkQuery = 'query' in r.input ? compilePart('query', r.input.query) : undefined;
    return { ...r, regex, names, checkParams, checkBody, checkQuery };
  });
}

/** The largest JSON body a route accepts (a VM spec with its disks is a few KiB). */
const MAX_BODY_BYTES = 1024 * 1024;
/** The largest link probe (predict.ts sends 16 MiB). */
const MAX_SINK_BYTES = 64 * 1024 * 1024;

/** A JSON body must arrive within this (uploads, which stream, are bounded by the idle timeout instead). */
const BODY_TIMEOUT_MS = 60_000;

/** The JSON body: an object, or nothing (read as {}); any other JSON value is the caller's mistake. */
async function readBody(req: IncomingMessage): Promise<unknown> {
  // Bytes first, decoded once: a character split between two chunks stays whole.
  const chunks: Buffer[] = [];
  let bytes = 0;
  const timer = setTimeout(() => req.destroy(new ApiError(408, `the request body did not arrive within ${BODY_TIMEOUT_MS / 1000} s`)), BODY_TIMEOUT_MS);
  try {
    for await (const chunk of req) {
      bytes += (chunk as Buffer).length;
      if (bytes > MAX_BODY_BYTES) throw new ApiError(413, `the request body is larger than ${MAX_BODY_BYTES / 1024} KiB`);
      chunks.push(chunk as Buffer);
    }
  } finally {
    clearTimeout(timer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new InvalidRequestError('the request body is not JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidRequestError(`the request body must be a JSON object, not ${Array.isArray(body) ? 'an array' : body === null ? 'null' : `a ${typeof body}`}`);
  return body;
}

/** A stream route's query as one value per name; a name given twice is ambiguous, refused. */
function queryOf(search: URLSearchParams): Record<string, string> {
  const query: Record<string, string> = {};
  for (const [key, value] of search) {
    if (Object.hasOwn(query, key)) throw new InvalidRequestError(`query: ${JSON.stringify(key).slice(0, 60)} is given twice`);
    // Defined, not assigned: '__proto__=x' is a field the schema refuses, not a prototype to set (and lose).
    Object.defineProperty(query, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return query;
}

/**
 * A request Node's HTTP parser refuses before any route sees it (its request line and headers over
 * 16 KiB, a malformed request line, headers too slow): answered like every other refusal, a JSON
 * {error}, then the connection closed (Node's own answer has no body).
 */
function answerUnparsable(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (!socket.writable || err.code === 'ECONNRESET') return void socket.destroy();
  const [status, message] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'the request line and headers are larger than 16 KiB']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'the request headers did not arrive in time']
        : [400, `the request is not valid HTTP (${err.code ?? err.message})`];
  const body = JSON.stringify({ error: message, kind: 'InvalidRequestError' });
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** The request's URL; a request-target that is no URL (an absolute form like 'http://[') is the caller's mistake. */
function requestUrl(req: IncomingMessage): URL {
  try {
    return new URL(req.url ?? '/', 'https://agent');
  } catch {
    throw new InvalidRequestError(`${JSON.stringify(req.url ?? '').slice(0, 80)} is not a request path`);
  }
}

/** The console's and the display's path: the VM's name. */
const checkUpgradeParams = compilePart('path', pathParams({ name: VM }));

/** A path segment, decoded; a malformed escape is the caller's mistake (400), not the agent's. */
function decodeParam(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new InvalidRequestError(`${JSON.stringify(segment).slice(0, 80)} in the path is not valid percent-encoding`);
  }
}

function statusOf(err: unknown): number {
  if (err instanceof ApiError) return err.status;
  if (err instanceof MigrationRefusedError || err instanceof InvalidVmSpecError || err instanceof StorageError || err instanceof FirmwareMissingError || err instanceof UserError) return 422;
  if (err instanceof StoreUnavailableError) return 503; // its message says why and what to do (no quorum, a full disk, a lock)
  return 500;
}

/** Open connections per listener; more are closed at once (a flood of handshakes cannot exhaust the agent). */
const MAX_CONNECTIONS = 256;

/** A request that takes longer than this is written to the log. */
const SLOW_REQUEST_MS = 5_000;

/** A REST API user's credential that a host forwards (api/server.ts), checked against the store here. */
export const FORWARDED_USER_HEADER = 'x-ferry-user-credential';

async function forwardedUser(ctx: AgentContext, credential: string): Promise<ApiUser> {
  const users = new UserRecords(ctx.state.store);
  const user = credential.startsWith('ferry_') ? await users.byToken(credential) : await users.bySession(credential);
  if (!user) throw new ApiError(401, 'the forwarded user credential is not valid (expired, revoked, or its user removed); log in again');
  return user;
}

/** The routes every agent has besides its own: the link probe's far end, and the table itself. */
function builtinRoutes(table: () => RouteDescription[]): Route[] {
  return [
    {
      // The far end of a link measurement (predict.ts): take the bytes, say how many.
      method: 'POST',
      pattern: '/v1/sink',
      who: 'host',
      input: { params: NOTHING, query: NOTHING },
      stream: async (_params, req) => {
        let bytes = 0;
        for await (const chunk of req) {
          bytes += (chunk as Buffer).length;
          if (bytes > MAX_SINK_BYTES) throw new ApiError(413, `a link probe is at most ${MAX_SINK_BYTES / 2 ** 20} MiB`);
        }
        return { bytes };
      },
    },
    { method: 'GET', pattern: '/v1/routes', who: 'admin-or-host', input: { params: NOTHING, body: NOTHING }, handler: async () => ({ routes: table() }) },
  ];
}

/** The full route table of an agent: `routes` and the built-in ones, as GET /v1/routes lists them. */
export function routeTable(routes: Route[]): Route[] {
  const all: Route[] = [...routes, ...builtinRoutes(() => all.map(({ method, pattern, who, input }) => ({ method, pattern, who, input })))];
  return all;
}

export async function serve(ctx: AgentContext, routes: Route[]): Promise<https.Server[]> {
  const table = compileRoutes(routeTable(routes));
  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      if (!(req.socket as TLSSocket).authorized) throw new ApiError(401, 'a client certificate from the cluster CA is required');
      const caller = callerOf(req.socket as TLSSocket, ctx.revocations);
      const url = requestUrl(req);
      for (const r of table) {
        const m = r.method === req.method ? r.regex.exec(url.pathname) : null;
        if (!m) continue;
        const forwarded = req.headers[FORWARDED_USER_HEADER];
        if (typeof forwarded === 'string' && caller.role === 'host') caller.user = await forwardedUser(ctx, forwarded);
        authorize(r.who, caller, `${r.method} ${r.pattern}`);
        // Checked before the handler runs, the path first: a bad name is refused before its body is read.
        const params = Object.fromEntries(r.names.map((n, i) => [n, decodeParam(m[i + 1]!)]));
        r.checkParams(params);
        const t0 = performance.now();
        let answer: unknown;
        if (r.stream) {
          const query = queryOf(url.searchParams);
          r.checkQuery!(query);
          answer = await r.stream(params, req, caller, query);
        } else {
          const body = await readBody(req);
          r.checkBody!(body);
          answer = await r.handler(params, body as Record<string, unknown>, caller);
        }
        const ms = performance.now() - t0;
        // Some requests wait by design (a boot, a migration); for the others, a caller that gave up
        // after 10-30 s finds why in this log.
        if (ms > SLOW_REQUEST_MS) ctx.log(`request ${req.method} ${url.pathname} took ${Math.round(ms)} ms`);
        return send(200, answer ?? {});
      }
      throw new NotFoundError(`no route ${req.method} ${url.pathname}`);
    } catch (err) {
      // A body refused before it was read (an upload whose name is taken) drains, so the answer reaches the client.
      if (!req.readableEnded) req.resume();
      const status = statusOf(err);
      if (status >= 500) ctx.log(`error in ${req.method} ${req.url}: ${(err as Error).stack}`);
      send(status, { error: (err as Error).message, kind: (err as Error).name });
    }
  };
  // The routes that become byte streams (HTTP Upgrade), for admins only: the serial console
  // (`ferry vm console`, Upgrade: ferry-console) and the VNC display (a websocket).
  const onUpgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Node takes its own error listener off an upgraded socket: a peer's reset must not become an uncaught error.
    socket.on('error', () => socket.destroy());
    const refuse = (status: number, message: string) => {
      const body = JSON.stringify({ error: message });
      socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    };
    try {
      if (!(req.socket as TLSSocket).authorized) throw new ApiError(401, 'a client certificate from the cluster CA is required');
      const caller = callerOf(req.socket as TLSSocket, ctx.revocations);
      const url = requestUrl(req);
      const m = /^\/v1\/vms\/([^/]+)\/(console|vnc)$/.exec(url.pathname);
      const who = `${caller.name} (${req.socket.remoteAddress ?? 'local socket'})`;
      if (m && req.method === 'GET' && m[2] === 'console' && req.headers.upgrade === 'ferry-console') {
        authorize('admin', caller, 'GET /v1/vms/:name/console');
        checkUpgradeParams({ name: decodeParam(m[1]!) });
        await ctx.consoles.attach(decodeParam(m[1]!), socket, head, who, url.searchParams.get('force') === '1');
      } else if (m && req.method === 'GET' && m[2] === 'vnc') {
        authorize('admin', caller, 'GET /v1/vms/:name/vnc');
        checkUpgradeParams({ name: decodeParam(m[1]!) });
        await ctx.displays.attach(decodeParam(m[1]!), req, socket, head, who);
      } else {
        throw new NotFoundError(`no upgradable route ${req.method} ${url.pathname}`);
      }
    } catch (err) {
      refuse(err instanceof UpgradeRefusedError || err instanceof ApiError ? err.status : 500, (err as Error).message);
    }
  };
  // Bounded before authentication too: a handshake must finish in 10 s, a request's headers arrive in
  // 10 s, a JSON body in 60 s (readBody); an upload streams for as long as it moves (its route stops
  // one that stalls). Answers may take longer: a boot, a migration's long poll.
  const tls = {
    key: ctx.identity.key, cert: ctx.identity.cert, ca: ctx.identity.ca, requestCert: true, rejectUnauthorized: true,
    handshakeTimeout: 10_000, headersTimeout: 10_000, requestTimeout: 0,
  };
  const servers: https.Server[] = [];
  const listen = (server: https.Server, target: { port: number; host: string } | { path: string }) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(target, () => resolve());
    });
  const tcp = https.createServer(tls, (req, res) => void onRequest(req, res));
  tcp.maxConnections = MAX_CONNECTIONS;
  tcp.on('clientError', answerUnparsable);
  tcp.on('upgrade', (req, socket, head) => void onUpgrade(req, socket, head));
  await listen(tcp, { port: ctx.node.port, host: ctx.node.address });
  servers.push(tcp);
  if (ctx.node.socket) {
    await rm(ctx.node.socket, { force: true });
    const local = https.createServer(tls, (req, res) => void onRequest(req, res));
    local.maxConnections = MAX_CONNECTIONS;
    local.on('clientError', answerUnparsable);
    local.on('upgrade', (req, socket, head) => void onUpgrade(req, socket, head));
    await listen(local, { path: ctx.node.socket });
    await chmod(ctx.node.socket, 0o600); // only its owner connects (TLS checks the rest), as the REST API's api.sock
    servers.push(local);
  }
  return servers;
}
