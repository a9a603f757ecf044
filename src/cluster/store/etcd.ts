/**
 * The etcd v3 store, spoken through etcd's JSON gateway (/v3/...) over
 * HTTP(S): no gRPC dependency. Endpoints are tried in order, so a three-member
 * cluster keeps answering while one member is down. With https endpoints the
 * client presents its certificate (etcd's --client-cert-auth) and checks the
 * members' against the cluster CA.
 */
import http from 'node:http';
import https from 'node:https';
import type { Identity } from '../pki.ts';
import { performance } from 'node:perf_hooks';
import { LeaseExpiredError, StoreNoQuorumError, StoreUnavailableError, type Compare, type KeyValue, type Op, type Store, type TxnResult, type WatchEvent } from './types.ts';

interface EtcdKv {
  key: string;
  value?: string;
  create_revision?: string;
  mod_revision?: string;
  lease?: string;
}

interface Header {
  header?: { revision?: string };
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined) => (s ? Buffer.from(s, 'base64').toString('utf8') : '');

/** The key just after every key with this prefix, etcd's range_end for a prefix. */
function prefixEnd(prefix: string): string {
  const bytes = Buffer.from(prefix, 'utf8');
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i]! < 0xff) {
      const end = bytes.subarray(0, i + 1);
      end[i]!++;
      return end.toString('base64');
    }
  }
  return Buffer.from([0]).toString('base64');
}

function toKv(kv: EtcdKv): KeyValue {
  return {
    key: unb64(kv.key),
    value: unb64(kv.value),
    createRevision: Number(kv.create_revision ?? 0),
    modRevision: Number(kv.mod_revision ?? 0),
    lease: kv.lease && kv.lease !== '0' ? kv.lease : '',
  };
}

function toRequestOp(op: Op): Record<string, unknown> {
  return op.type === 'put'
    ? { request_put: { key: b64(op.key), value: b64(op.value), ...(op.lease ? { lease: op.lease } : {}) } }
    : { request_delete_range: { key: b64(op.key) } };
}

/** How long a request waits for a leader when no member has one (an election takes about an election timeout, 1 s by default). */
const LEADER_WAIT_MS = 3000;
const LEADER_RETRY_MS = 100;

/** How long a member's own status or member list may take (local answers, no leader involved). */
const STATUS_TIMEOUT_MS = 1000;
/** A lease renewal's request timeout: renewals come every third of the lease, and one that hangs must not use up the next. */
const KEEPALIVE_TIMEOUT_MS = 1500;

/**
 * Why one member did not answer a request: its etcd does not run, it has no leader, or anything
 * else (a timeout, an error). `at`: when it was asked (performance.now()).
 */
interface MemberFailure {
  endpoint: string;
  kind: 'refused' | 'no-leader' | 'other';
  message: string;
  at: number;
}

interface CallOptions {
  /** As this client's etcd user (default); false for the login itself. */
  authenticated?: boolean;
  /** How long to keep asking while no member has a leader (an election may be under way). */
  leaderWaitMs?: number;
  timeoutMs?: number;
}

/** An etcd user and password (etcd's RBAC: etcd-auth.ts). */
export interface EtcdCredentials {
  user: string;
  password: string;
}

/** etcd refused the caller's permissions on a key: the message names what. */
export class StorePermissionError extends Error {
  override name = 'StorePermissionError';
}

export class EtcdStore implements Store {
  readonly kind = 'etcd' as const;
  private readonly watches = new Set<AbortController>();
  /** The auth token for `credentials`, asked for on first use and again when etcd forgets it (it expires after idle minutes). */
  private token: Promise<string> | undefined;

  /**
   * endpoints: http(s)://host:port of each member; tls: the client identity for https endpoints;
   * credentials: the etcd user this client acts as, where the cluster runs etcd with RBAC.
   */
  constructor(readonly endpoints: string[], private readonly requestTimeoutMs = 5000, private readonly tls?: Identity, private readonly credentials?: EtcdCredentials) {
    if (!endpoints.length) throw new StoreUnavailableError('no etcd endpoints given');
    if (endpoints.some((e) => e.startsWith('https:')) && !tls) throw new StoreUnavailableError('https etcd endpoints need a client certificate');
  }

  private authToken(): Promise<string> | undefined {
    if (!this.credentials) return undefined;
    this.token ??= this.call<{ token?: string }>('/v3/auth/authenticate', { name: this.credentials.user, password: this.credentials.password }, { authenticated: false }).then(
      (res) => {
        if (!res.token) throw new StorePermissionError(`etcd gave no token to user '${this.credentials!.user}'`);
        return res.token;
      },
      (err: Error) => {
        this.token = undefined;
        throw err;
      },
    );
    return this.token;
  }

  /**
   * POSTs JSON; resolves with the status and the response stream. Unless `anyMember`, the member
   * must have a leader (etcd's "hasleader" metadata, which its JSON gateway takes as a
   * Grpc-Metadata- header): one without answers "no leader" at once instead of holding the request
   * until it times out, and a watch on it ends when it loses its leader.
   */
  private post(url: string, body: unknown, options: { timeoutMs?: number; signal?: AbortSignal; token?: string; anyMember?: boolean }): Promise<http.IncomingMessage> {
    const target = new URL(url);
    const payload = JSON.stringify(body);
    const secure = target.protocol === 'https:';
    return new Promise((resolve, reject) => {
      const req = (secure ? https : http).request(
        {
          method: 'POST',
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(payload),
            ...(options.anyMember ? {} : { 'grpc-metadata-hasleader': 'true' }),
            ...(options.token ? { authorization: options.token } : {}),
          },
          ...(secure && this.tls ? { ca: this.tls.ca, cert: this.tls.cert, key: this.tls.key } : {}),
          ...(options.timeoutMs ? { timeout: options.timeoutMs } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
        },
        resolve,
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${options.timeoutMs} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /**
   * Asks the members in order until one answers. When none does and none could (each refused the
   * connection or has no leader), an election may be under way: asked again for up to
   * `leaderWaitMs`, then it is a StoreNoQuorumError.
   */
  private async call<T>(path: string, body: unknown, options: CallOptions = {}): Promise<T> {
    const { authenticated = true, leaderWaitMs = LEADER_WAIT_MS, timeoutMs = this.requestTimeoutMs } = options;
    const waitUntil = performance.now() + leaderWaitMs;
    for (;;) {
      const outcome = await this.askMembers<T>(path, body, authenticated, timeoutMs);
      if ('answer' in outcome) return outcome.answer;
      const { failures } = outcome;
      if (failures.some((f) => f.kind === 'other'))
        throw new StoreUnavailableError(`no etcd member answered ${path}: ${failures.map((f) => `${f.endpoint}: ${f.message}`).join('; ')}`);
      if (performance.now() < waitUntil) {
        await new Promise((r) => setTimeout(r, LEADER_RETRY_MS));
        continue;
      }
      throw await this.noQuorum(failures);
    }
  }

  /** One round over the members: the first answer, or why each failed. */
  private async askMembers<T>(path: string, body: unknown, authenticated: boolean, timeoutMs: number): Promise<{ answer: T } | { failures: MemberFailure[] }> {
    const failures: MemberFailure[] = [];
    // etcd forgets a token (idle minutes, a member restarted): a new one is asked for, and the
    // request tried again on the same member, once; everything else is as for any request.
    let refreshed = false;
    for (let i = 0; i < this.endpoints.length; i++) {
      const endpoint = this.endpoints[i]!;
      const at = performance.now();
      try {
        const token = authenticated ? await this.authToken() : undefined;
        const res = await this.post(`${endpoint}${path}`, body, { timeoutMs, ...(token ? { token } : {}) });
        let text = '';
        for await (const chunk of res) text += chunk;
        const json = JSON.parse(text) as T & { error?: string | { message?: string }; message?: string; code?: number };
        if ((res.statusCode ?? 500) >= 400) {
          // A streaming call (lease keepalive) nests its error: {"error":{"message":...}}.
          const nested = typeof json.error === 'object' ? json.error?.message : json.error;
          const message = json.message ?? nested ?? `HTTP ${res.statusCode}`;
          if (/lease not found|requested lease not found/.test(message)) throw new LeaseExpiredError((body as { ID?: string; lease?: string }).ID ?? (body as { lease?: string }).lease ?? '');
          if (/invalid auth token/.test(message) && token && !refreshed) {
            refreshed = true;
            this.token = undefined;
            i--;
            continue;
          }
          if (/permission denied|user name is empty|authentication failed|not capable/.test(message)) throw this.refusal(path, message);
          // "etcdserver: no leader" and friends: another member may answer.
          failures.push(/no leader/.test(message) ? { endpoint, kind: 'no-leader', message, at } : await this.otherFailure(endpoint, message, at));
          continue;
        }
        return { answer: json };
      } catch (err) {
        // The token's own request went round the members already.
        if (err instanceof LeaseExpiredError || err instanceof StorePermissionError || err instanceof StoreUnavailableError) throw err;
        const message = (err as Error).message;
        failures.push((err as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? { endpoint, kind: 'refused', message, at } : await this.otherFailure(endpoint, message, at));
      }
    }
    return { failures };
  }

  /**
   * A member that did not answer in time, or answered with another error, may have lost its leader
   * only just: a member notices that an election timeout after the leader's last heartbeat, and
   * until then holds requests for the leader. Its status (a local answer) says.
   */
  private async otherFailure(endpoint: string, message: string, at: number): Promise<MemberFailure> {
    const asked = performance.now();
    try {
      const res = await this.post(`${endpoint}/v3/maintenance/status`, {}, { timeoutMs: STATUS_TIMEOUT_MS, anyMember: true });
      let text = '';
      for await (const chunk of res) text += chunk;
      const { leader } = JSON.parse(text) as { leader?: string };
      if ((res.statusCode ?? 500) < 400 && (!leader || leader === '0')) return { endpoint, kind: 'no-leader', message: `${message}; it has no leader`, at: asked };
    } catch {
      /* no status either: nothing is known of it */
    }
    return { endpoint, kind: 'other', message, at };
  }

  /**
   * The error for a round in which no member had a leader or ran at all. It tells hosts that no quorum
   * can exist since the round's first look only when a member without a leader listed exactly the
   * members this client knows: a member this client does not know of might be in a quorum it cannot see.
   */
  private async noQuorum(failures: MemberFailure[]): Promise<StoreNoQuorumError> {
    const leaderless = failures.filter((f) => f.kind === 'no-leader').map((f) => f.endpoint);
    const stopped = failures.filter((f) => f.kind === 'refused').map((f) => f.endpoint);
    const total = this.endpoints.length;
    const needed = Math.floor(total / 2) + 1;
    const confirmed = leaderless.length > 0 && (await this.knowsAllMembers(leaderless[0]!));
    const runs = leaderless.length ? `${leaderless.length} runs, without a leader (${leaderless.join(', ')})` : 'none runs';
    return new StoreNoQuorumError(
      `the store has no quorum: etcd needs ${needed} of its ${total} members to agree on any change, and ${runs}; ` +
        `${stopped.length ? `not running (connection refused): ${stopped.join(', ')}. ` : ''}` +
        'Nothing in the cluster can change until a majority of the etcd members runs again: start the stopped members (each on its own data directory)' +
        (confirmed ? '; running VMs keep running meanwhile' : ''),
      confirmed ? Math.min(...failures.map((f) => f.at)) : undefined,
    );
  }

  /** Whether the member at `endpoint` lists exactly this client's endpoints as the cluster's members (a local answer: no leader needed). */
  private async knowsAllMembers(endpoint: string): Promise<boolean> {
    try {
      const res = await this.post(`${endpoint}/v3/cluster/member/list`, {}, { timeoutMs: STATUS_TIMEOUT_MS, anyMember: true });
      let text = '';
      for await (const chunk of res) text += chunk;
      if ((res.statusCode ?? 500) >= 400) return false;
      const { members = [] } = JSON.parse(text) as { members?: Array<{ clientURLs?: string[] }> };
      const norm = (u: string) => u.replace(/\/+$/, '');
      const listed = members.map((m) => (m.clientURLs ?? []).map(norm));
      return listed.length === this.endpoints.length && this.endpoints.every((e) => listed.some((urls) => urls.includes(norm(e))));
    } catch {
      return false;
    }
  }

  /** Any etcd v3 JSON API call as this client's user (the RBAC administration in etcd-auth.ts). */
  rpc<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.call<T>(path, body);
  }

  /** A refusal of etcd's RBAC, saying who was refused (another member would refuse it too). */
  private refusal(path: string, message: string): StorePermissionError {
    const who = this.credentials ? `etcd user '${this.credentials.user}'` : 'a client without an etcd user (this cluster runs etcd with RBAC: each host has its user)';
    return new StorePermissionError(`the store refused ${path} to ${who}: ${message}`);
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.call<{ kvs?: EtcdKv[] }>('/v3/kv/range', { key: b64(key) });
    return res.kvs?.[0] && toKv(res.kvs[0]);
  }

  async list(prefix: string): Promise<KeyValue[]> {
    const res = await this.call<{ kvs?: EtcdKv[] }>('/v3/kv/range', { key: b64(prefix), range_end: prefixEnd(prefix) });
    return (res.kvs ?? []).map(toKv);
  }

  async put(key: string, value: string, options: { lease?: string } = {}): Promise<number> {
    const res = await this.call<Header>('/v3/kv/put', { key: b64(key), value: b64(value), ...(options.lease ? { lease: options.lease } : {}) });
    return Number(res.header?.revision ?? 0);
  }

  async delete(key: string): Promise<number> {
    const res = await this.call<Header>('/v3/kv/deleterange', { key: b64(key) });
    return Number(res.header?.revision ?? 0);
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    const res = await this.call<Header & { succeeded?: boolean }>('/v3/kv/txn', {
      compare: compares.map((c) => ({ key: b64(c.key), target: 'MOD', result: 'EQUAL', mod_revision: String(c.modRevision) })),
      success: success.map(toRequestOp),
      failure: failure.map(toRequestOp),
    });
    return { succeeded: res.succeeded === true, revision: Number(res.header?.revision ?? 0) };
  }

  watch(prefix: string, onEvent: (event: WatchEvent) => void, afterRevision?: number): () => void {
    const abort = new AbortController();
    this.watches.add(abort);
    let after = afterRevision;
    const loop = async () => {
      while (!abort.signal.aborted) {
        for (const endpoint of this.endpoints) {
          if (abort.signal.aborted) return;
          try {
            after ??= await this.revision();
            const token = await this.authToken();
            const res = await this.post(
              `${endpoint}/v3/watch`,
              { create_request: { key: b64(prefix), range_end: prefixEnd(prefix), start_revision: String(after + 1) } },
              { signal: abort.signal, ...(token ? { token } : {}) },
            );
            let buffer = '';
            for await (const chunk of res as AsyncIterable<Buffer>) {
              buffer += Buffer.from(chunk).toString('utf8');
              let nl: number;
              while ((nl = buffer.indexOf('\n')) >= 0) {
                const line = buffer.slice(0, nl).trim();
                buffer = buffer.slice(nl + 1);
                if (!line) continue;
                const msg = JSON.parse(line) as { result?: { events?: { type?: string; kv: EtcdKv }[] } };
                for (const e of msg.result?.events ?? []) {
                  const kv = toKv(e.kv);
                  after = kv.modRevision;
                  onEvent({ type: e.type === 'DELETE' ? 'delete' : 'put', key: kv.key, value: e.type === 'DELETE' ? null : kv.value, modRevision: kv.modRevision });
                }
              }
            }
          } catch {
            /* member gone or watch closed: try the next member (with a fresh token: an expired one ends a watch too) */
            if (this.credentials) this.token = undefined;
          }
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    void loop();
    return () => {
      abort.abort();
      this.watches.delete(abort);
    };
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    const res = await this.call<{ ID: string }>('/v3/lease/grant', { TTL: ttlSeconds });
    return res.ID;
  }

  async keepAlive(lease: string): Promise<number> {
    // Not held up waiting for a leader: a renewal that fails is tried again at the next interval, and
    // the agent must learn at once that no quorum exists (agent.ts keeps its guests running then).
    const res = await this.call<{ result?: { TTL?: string } }>('/v3/lease/keepalive', { ID: lease }, { leaderWaitMs: 0, timeoutMs: KEEPALIVE_TIMEOUT_MS });
    const ttl = Number(res.result?.TTL ?? 0);
    if (ttl <= 0) throw new LeaseExpiredError(lease);
    return ttl;
  }

  async revokeLease(lease: string): Promise<void> {
    try {
      await this.call('/v3/lease/revoke', { ID: lease });
    } catch (err) {
      if (!(err instanceof LeaseExpiredError)) throw err;
    }
  }

  async revision(): Promise<number> {
    // Any read answers with the store's revision in its header; one key under /ferry/, which every
    // ferry user may read (a host's etcd user may read nothing outside it).
    const res = await this.call<Header>('/v3/kv/range', { key: b64('/ferry/'), count_only: true });
    return Number(res.header?.revision ?? 0);
  }

  async close(): Promise<void> {
    for (const w of this.watches) w.abort();
    this.watches.clear();
  }
}
