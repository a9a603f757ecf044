/**
 * A client of an agent's API: HTTPS with this node's (or the admin's)
 * certificate, to a URL or to the agent's unix socket.
 */
import { createReadStream } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import tls, { type PeerCertificate } from 'node:tls';
import type WebSocket from 'ws';
import type { Identity } from '../cluster/pki.ts';
import { ApiError } from './errors.ts';

export interface AgentEndpoint {
  url: string;
  /** Preferred when set and reachable: the agent's unix socket on this machine. */
  socket?: string;
  /** The host name the agent's certificate carries. */
  name: string;
}

export class AgentUnreachableError extends Error {
  override name = 'AgentUnreachableError';
}

/** An agent's answer that refused an upgrade (a console, a display), as the ApiError it carries. */
async function refusalOf(res: IncomingMessage): Promise<ApiError> {
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk;
  let message = `HTTP ${res.statusCode}`;
  try {
    message = (JSON.parse(text) as { error?: string }).error ?? message;
  } catch {
    /* not JSON: the status says enough */
  }
  return new ApiError(res.statusCode ?? 500, message);
}

export class AgentClient {
  /** `extraHeaders`: sent with every call (a REST API user's credential a host forwards, api/server.ts). */
  constructor(
    readonly endpoint: AgentEndpoint,
    private readonly identity: Identity,
    private readonly timeoutMs = 30_000,
    private readonly extraHeaders: Record<string, string> = {},
  ) {}

  call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    return this.request<T>(method, path, body === undefined ? undefined : JSON.stringify(body), timeoutMs);
  }

  /** Sends raw bytes (the link measurement) and returns the agent's JSON answer. */
  send<T>(path: string, bytes: Buffer, timeoutMs = this.timeoutMs): Promise<T> {
    return this.request<T>('POST', path, bytes, timeoutMs);
  }

  /** Streams a file as the body of a POST (an image import); `onSent` hears how many bytes went. */
  upload<T>(path: string, file: string, bytes: number, onSent?: (bytes: number) => void, timeoutMs = 30 * 60_000): Promise<T> {
    return this.request<T>('POST', path, { file, bytes, ...(onSent ? { onSent } : {}) }, timeoutMs);
  }

  /** Opens a VM's serial console (an upgraded connection: bytes both ways until either end closes). */
  openConsole(vm: string, force = false, timeoutMs = 10_000): Promise<Duplex> {
    const url = this.endpoint.socket ? undefined : new URL(this.endpoint.url);
    return new Promise<Duplex>((resolve, reject) => {
      const req = https.request({
        method: 'GET',
        path: `/v1/vms/${encodeURIComponent(vm)}/console${force ? '?force=1' : ''}`,
        ...(url ? { host: url.hostname, port: url.port } : { socketPath: this.endpoint.socket }),
        ...this.tlsOptions(),
        headers: { connection: 'Upgrade', upgrade: 'ferry-console' },
        timeout: timeoutMs,
      });
      req.on('upgrade', (_res, socket, head) => {
        socket.setTimeout(0);
        if (head.length) socket.unshift(head);
        resolve(socket);
      });
      req.on('response', (res) => void refusalOf(res).then(reject));
      req.on('timeout', () => req.destroy(new AgentUnreachableError(`agent ${this.endpoint.name} did not open the console of '${vm}' within ${timeoutMs} ms`)));
      req.on('error', (err) => reject(err instanceof AgentUnreachableError ? err : new AgentUnreachableError(`cannot reach the agent of ${this.endpoint.name}: ${err.message}`)));
      req.end();
    });
  }

  /**
   * Opens a VM's VNC display: a websocket whose binary messages are the RFB protocol's bytes. Over
   * the agent's unix socket when there is one (TLS all the same), else its address.
   */
  async openDisplay(vm: string, timeoutMs = 10_000): Promise<WebSocket> {
    const tlsOptions = this.tlsOptions();
    const socketPath = this.endpoint.socket;
    const url = socketPath ? `wss://${this.endpoint.name}/v1/vms/${encodeURIComponent(vm)}/vnc` : `${this.endpoint.url.replace(/^https:/, 'wss:')}/v1/vms/${encodeURIComponent(vm)}/vnc`;
    const { default: WebSocketClient } = await import('ws'); // loaded for a display only: every other command starts without it
    return new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocketClient(url, 'binary', {
        ...tlsOptions,
        handshakeTimeout: timeoutMs,
        perMessageDeflate: false,
        ...(socketPath ? { createConnection: () => tls.connect({ ...tlsOptions, path: socketPath }) } : {}),
      });
      ws.once('open', () => resolve(ws));
      ws.once('unexpected-response', (_req, res) => void refusalOf(res).then(reject));
      ws.once('error', (err) => reject(new AgentUnreachableError(`cannot open the VNC display of '${vm}' on ${this.endpoint.name}: ${err.message}`)));
    });
  }

  private tlsOptions() {
    return {
      servername: this.endpoint.name,
      ca: this.identity.ca,
      cert: this.identity.cert,
      key: this.identity.key,
      // An agent is a host: its certificate must say so (OU=host), under the host's name. An admin
      // or store certificate that carries a host's name does not pass as that host.
      checkServerIdentity: (_host: string, cert: PeerCertificate) =>
        cert.subject?.CN === this.endpoint.name && cert.subject?.OU === 'host'
          ? undefined
          : new Error(`the agent presented '${cert.subject?.CN}' (role ${cert.subject?.OU ?? 'none'}), expected host '${this.endpoint.name}'`),
    };
  }

  private request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, payload: string | Buffer | FileBody | undefined, timeoutMs: number): Promise<T> {
    const url = this.endpoint.socket ? undefined : new URL(this.endpoint.url);
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        {
          method,
          path,
          ...(url ? { host: url.hostname, port: url.port } : { socketPath: this.endpoint.socket }),
          ...this.tlsOptions(),
          headers: {
            ...this.extraHeaders,
            ...(payload
              ? { 'content-type': typeof payload === 'string' ? 'application/json' : 'application/octet-stream', 'content-length': isFile(payload) ? payload.bytes : Buffer.byteLength(payload) }
              : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => {
            let json: unknown;
            try {
              json = text ? JSON.parse(text) : {};
            } catch {
              return reject(new ApiError(res.statusCode ?? 500, `agent ${this.endpoint.name} sent a non-JSON answer: ${text.slice(0, 200)}`));
            }
            if ((res.statusCode ?? 500) >= 400) reject(new ApiError(res.statusCode ?? 500, (json as { error?: string }).error ?? `HTTP ${res.statusCode}`));
            else resolve(json as T);
          });
        },
      );
      req.on('timeout', () =>
        req.destroy(new AgentUnreachableError(`agent ${this.endpoint.name} did not answer ${method} ${path} within ${timeoutMs} ms${req.reusedSocket ? ' (on a kept-alive connection)' : ''}`)),
      );
      req.on('error', (err) =>
        reject(err instanceof AgentUnreachableError ? err : new AgentUnreachableError(`cannot reach the agent of ${this.endpoint.name} (${this.endpoint.socket ?? this.endpoint.url}): ${err.message}`)),
      );
      if (!isFile(payload)) return req.end(payload);
      let sent = 0;
      const stream = createReadStream(payload.file);
      stream.on('data', (chunk) => {
        sent += chunk.length;
        payload.onSent?.(sent);
      });
      stream.on('error', (err) => req.destroy(err));
      stream.pipe(req);
    });
  }
}

interface FileBody {
  file: string;
  bytes: number;
  onSent?: (bytes: number) => void;
}

function isFile(payload: string | Buffer | FileBody | undefined): payload is FileBody {
  return typeof payload === 'object' && !Buffer.isBuffer(payload);
}
