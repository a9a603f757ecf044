/**
 * The people and scripts that use the REST API and the web UI: users with a role, their passwords
 * (scrypt, memory-hard: 32 MiB per try), API tokens for scripts, and login sessions. Every record is
 * in the store, so any host's API answers for any user; a password, a token and a session id are
 * never stored, only what proves them (a scrypt hash; a SHA-256 of 256 random bits).
 *
 *   /ferry/users/accounts/<name>     a user: role, password hash
 *   /ferry/users/tokens/<id>         an API token: its user, a SHA-256 of its secret
 *   /ferry/users/sessions/<id-hash>  a login session: its user, CSRF token, when it ends
 *
 * Roles: viewer reads everything; operator also acts on VMs, jobs and hosts (migrate, cancel, drain);
 * admin also manages users and tokens.
 *
 * Every host's agent may write these records (any host's API takes a login): as with Proxmox's
 * cluster-wide authkey, a host of the cluster is trusted to say who a user is. A stolen host
 * certificate is removed with `ferry node remove` (its store user goes too, with RBAC).
 */
import { createHash, randomBytes, scrypt as scryptCallback, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import type { Store } from './store/types.ts';

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface UserRecord {
  name: string;
  /** Random, per account: a token or session of a removed user never serves a new user of the same name. */
  uid: string;
  role: Role;
  /** scrypt$N$r$p$salt$hash, base64url. */
  passwordHash: string;
  createdAt: string;
  createdBy: string;
}

export interface TokenRecord {
  id: string;
  user: string;
  uid: string;
  label: string;
  /** SHA-256 of the secret, hex. */
  secretHash: string;
  createdAt: string;
}

export interface SessionRecord {
  user: string;
  uid: string;
  csrfToken: string;
  createdAt: string;
  expiresAt: string;
}

/** Who a request is, once its credential checked out. */
export interface ApiUser {
  name: string;
  role: Role;
  via: 'session' | 'token';
  /** The session's CSRF token (a change by cookie must echo it). */
  csrfToken?: string;
  /** When the session ends. */
  expiresAt?: string;
}

export const USER_PREFIX = '/ferry/users/';
const KEYS = {
  account: (name: string) => `/ferry/users/accounts/${name}`,
  accounts: '/ferry/users/accounts/',
  token: (id: string) => `/ferry/users/tokens/${id}`,
  tokens: '/ferry/users/tokens/',
  session: (idHash: string) => `/ferry/users/sessions/${idHash}`,
  sessions: '/ferry/users/sessions/',
};

const SCRYPT = { N: 2 ** 15, r: 8, p: 1 };
/** A session lasts this long after login (Proxmox's ticket: 2 hours). */
export const SESSION_MS = 2 * 60 * 60 * 1000;
const MIN_PASSWORD = 12;

export class UserError extends Error {
  override name = 'UserError';
}

function scrypt(password: string, salt: Buffer, params: typeof SCRYPT): Promise<Buffer> {
  const options: ScryptOptions = { ...params, maxmem: 128 * params.N * params.r * 2 };
  return new Promise((resolve, reject) => scryptCallback(password, salt, 32, options, (err, key) => (err ? reject(err) : resolve(key))));
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(password, salt, SCRYPT);
  return ['scrypt', SCRYPT.N, SCRYPT.r, SCRYPT.p, salt.toString('base64url'), hash.toString('base64url')].join('$');
}

export async function passwordMatches(password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64url');
  const actual = await scrypt(password, Buffer.from(salt, 'base64url'), { N: Number(n), r: Number(r), p: Number(p) });
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export class UserRecords {
  constructor(private readonly store: Store) {}

  async add(name: string, role: Role, password: string, by: string): Promise<UserRecord> {
    if (!NAME_PATTERN.test(name)) throw new UserError(`'${name}' is not a user name: names ${NAME_RULE}`);
    if (!ROLES.includes(role)) throw new UserError(`role '${role}': choose ${ROLES.join(', ')}`);
    if (typeof password !== 'string' || password.length < MIN_PASSWORD) throw new UserError(`a password has at least ${MIN_PASSWORD} characters`);
    const user: UserRecord = { name, uid: randomBytes(12).toString('hex'), role, passwordHash: await hashPassword(password), createdAt: new Date().toISOString(), createdBy: by };
    const { succeeded } = await this.store.txn([{ key: KEYS.account(name), modRevision: 0 }], [{ type: 'put', key: KEYS.account(name), value: JSON.stringify(user) }]);
    if (!succeeded) throw new UserError(`user '${name}' exists already; remove it first (ferry user remove ${name})`);
    return user;
  }

  async get(name: string): Promise<UserRecord | undefined> {
    if (!NAME_PATTERN.test(name)) return undefined;
    const kv = await this.store.get(KEYS.account(name));
    return kv ? (JSON.parse(kv.value) as UserRecord) : undefined;
  }

  async list(): Promise<UserRecord[]> {
    return (await this.store.list(KEYS.accounts)).map((kv) => JSON.parse(kv.value) as UserRecord);
  }

  /** The user and every token and session of theirs. */
  async remove(name: string): Promise<boolean> {
    if (!(await this.get(name))) return false;
    const tokens = (await this.tokens()).filter((t) => t.user === name);
    const sessions = (await this.store.list(KEYS.sessions)).filter((kv) => (JSON.parse(kv.value) as SessionRecord).user === name);
    await this.store.txn([], [{ type: 'delete', key: KEYS.account(name) }, ...tokens.map((t) => ({ type: 'delete' as const, key: KEYS.token(t.id) })), ...sessions.map((kv) => ({ type: 'delete' as const, key: kv.key }))]);
    return true;
  }

  /** A new token for `user`: its secret is returned once ("ferry_<id>_<secret>") and never stored. */
  async createToken(user: string, label: string): Promise<{ token: string; record: TokenRecord }> {
    const account = await this.store.get(KEYS.account(user));
    if (!NAME_PATTERN.test(user) || !account) throw new UserError(`no user '${user}'; add one with 'ferry user add ${user} --role viewer|operator|admin'`);
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const record: TokenRecord = { id, user, uid: (JSON.parse(account.value) as UserRecord).uid, label: label.slice(0, 100), secretHash: sha256(secret), createdAt: new Date().toISOString() };
    // Only while the account is as read (not removed meanwhile), and never over another token's id.
    const { succeeded } = await this.store.txn(
      [
        { key: KEYS.account(user), modRevision: account.modRevision },
        { key: KEYS.token(id), modRevision: 0 },
      ],
      [{ type: 'put', key: KEYS.token(id), value: JSON.stringify(record) }],
    );
    if (!succeeded) throw new UserError(`user '${user}' changed while its token was made; try again`);
    return { token: `ferry_${id}_${secret}`, record };
  }

  async tokens(): Promise<TokenRecord[]> {
    return (await this.store.list(KEYS.tokens)).map((kv) => JSON.parse(kv.value) as TokenRecord);
  }

  async revokeToken(id: string): Promise<boolean> {
    if (!/^[0-9a-f]{12}$/.test(id)) return false;
    return (await this.store.delete(KEYS.token(id))) > 0;
  }

  /** The user a bearer token stands for, if it is one of ours and its user still exists. */
  async byToken(token: string): Promise<ApiUser | undefined> {
    const m = /^ferry_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
    if (!m) return undefined;
    const kv = await this.store.get(KEYS.token(m[1]!));
    if (!kv) return undefined;
    const record = JSON.parse(kv.value) as TokenRecord;
    if (!timingSafeEqual(Buffer.from(record.secretHash, 'hex'), Buffer.from(sha256(m[2]!), 'hex'))) return undefined;
    const user = await this.get(record.user);
    return user && user.uid === record.uid ? { name: user.name, role: user.role, via: 'token' } : undefined;
  }

  /** A login: the session's id (for the cookie) and CSRF token; undefined when the name or password is wrong. */
  async login(name: string, password: string): Promise<{ sessionId: string; session: SessionRecord; user: UserRecord } | undefined> {
    const user = await this.get(name);
    // The hash is computed for an unknown name too: the answer's time does not tell which names exist.
    const ok = await passwordMatches(password, user?.passwordHash ?? (await dummyHash()));
    if (!user || !ok) return undefined;
    const sessionId = randomBytes(32).toString('base64url');
    const now = Date.now();
    const session: SessionRecord = { user: user.name, uid: user.uid, csrfToken: randomBytes(24).toString('base64url'), createdAt: new Date(now).toISOString(), expiresAt: new Date(now + SESSION_MS).toISOString() };
    await this.store.put(KEYS.session(sha256(sessionId)), JSON.stringify(session));
    await this.dropExpiredSessions(now);
    return { sessionId, session, user };
  }

  async bySession(sessionId: string): Promise<ApiUser | undefined> {
    if (!/^[A-Za-z0-9_-]{43}$/.test(sessionId)) return undefined;
    const kv = await this.store.get(KEYS.session(sha256(sessionId)));
    if (!kv) return undefined;
    const session = JSON.parse(kv.value) as SessionRecord;
    if (Date.parse(session.expiresAt) <= Date.now()) return undefined;
    const user = await this.get(session.user);
    return user && user.uid === session.uid ? { name: user.name, role: user.role, via: 'session', csrfToken: session.csrfToken, expiresAt: session.expiresAt } : undefined;
  }

  async logout(sessionId: string): Promise<void> {
    if (/^[A-Za-z0-9_-]{43}$/.test(sessionId)) await this.store.delete(KEYS.session(sha256(sessionId)));
  }

  private async dropExpiredSessions(now: number): Promise<void> {
    const gone = (await this.store.list(KEYS.sessions)).filter((kv) => Date.parse((JSON.parse(kv.value) as SessionRecord).expiresAt) <= now);
    if (gone.length) await this.store.txn([], gone.map((kv) => ({ type: 'delete' as const, key: kv.key })));
  }
}

let dummy: Promise<string> | undefined;
function dummyHash(): Promise<string> {
  dummy ??= hashPassword(randomBytes(16).toString('hex'));
  return dummy;
}

/** Whether `role` may do what `needed` may. */
export function roleAllows(role: Role, needed: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}
