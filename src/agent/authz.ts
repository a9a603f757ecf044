/**
 * Authorization by identity. Every certificate of the cluster CA names a role in its subject's OU
 * (cluster/pki.ts) and a name in its CN; every route says which roles may call it, and the routes
 * that act for a host (an incoming migration) also check which host calls. A host's certificate is
 * not a master key: it drives only the host-to-host routes, and those only for its own migrations.
 *
 *   admin  the administrator's CLI: every user-facing route (VMs, jobs, storage, the cluster's
 *          records); no host-to-host route.
 *   host   another host's agent: the destination side of a migration it is the source of
 *          (/v1/incoming...), the link probe (/v1/sink); nothing that starts, stops or changes a VM.
 *   store  an etcd member: nothing on an agent.
 *   user   a REST API user (cluster/users.ts) whose credential a host forwards with its own
 *          certificate: only the routes marked operator, and only with a role of operator or admin.
 *          The credential is checked against the store, which every host may write: a host is
 *          trusted to say who an API user is (as Proxmox's nodes share one authkey), not more.
 */
import type { TLSSocket } from 'node:tls';
import { ApiError } from './errors.ts';
import { fingerprintOf, type RevocationList } from './revocation.ts';
import { roleAllows, type ApiUser } from '../cluster/users.ts';

export interface Caller {
  role: 'admin' | 'host';
  /** The certificate's CN: the host's name, or 'admin'. */
  name: string;
  /** SHA-256 of the certificate (revocation.ts). */
  fingerprint: string;
  /** A REST API user a host acts for (its credential sent along and checked here, api/server.ts). */
  user?: ApiUser;
}

/**
 * Who may call a route. operator: the admin's certificate, or a host's that acts for a REST API user
 * of role operator or admin (the web UI's migrate and cancel, forwarded to the VM's host).
 */
export type Access = 'admin' | 'host' | 'admin-or-host' | 'operator';

/** Who made a change, for the job's record: the admin, or the API user and the host that forwarded it. */
export function callerName(caller: Caller): string {
  return caller.user ? `${caller.user.name} (${caller.user.role}, through ${caller.name})` : caller.name;
}

/** The caller is known, and may not do this. */
export class ForbiddenError extends ApiError {
  override name = 'ForbiddenError';
  constructor(message: string) {
    super(403, message);
  }
}

/** The caller's role and name, from the certificate the TLS handshake verified; refused if it was revoked. */
export function callerOf(socket: TLSSocket, revocations: RevocationList): Caller {
  const certificate = socket.getPeerCertificate();
  const subject = certificate?.subject as { OU?: string | string[]; CN?: string | string[] } | undefined;
  const one = (v: string | string[] | undefined) => (Array.isArray(v) ? undefined : v); // two OUs or CNs: ambiguous, refused
  const role = one(subject?.OU);
  const name = one(subject?.CN);
  if (!name) throw new ForbiddenError('the client certificate has no single CN; issue it with ferry init or ferry join');
  const fingerprint = fingerprintOf(certificate);
  const revoked = revocations.check(fingerprint);
  if (revoked) throw new ForbiddenError(`the certificate of '${revoked.name}' was revoked at ${revoked.revokedAt} (${revoked.reason})`);
  if (role === 'admin' || role === 'host') return { role, name, fingerprint };
  if (role === 'store') throw new ForbiddenError(`'${name}' holds a store member's certificate: store members may not call agents`);
  throw new ForbiddenError(
    `the certificate of '${name}' names no role (OU=admin or OU=host); it was issued before roles existed or outside ferry — issue a new one with ferry join (a host) or ferry init (the admin)`,
  );
}

/** Whether `caller` may call a route with this access; a ForbiddenError that says who may, if not. */
export function authorize(access: Access, caller: Caller, route: string): void {
  if (access === 'operator') {
    if (caller.role === 'admin' || (caller.role === 'host' && caller.user && roleAllows(caller.user.role, 'operator'))) return;
    const who = caller.user ? `user '${caller.user.name}' (${caller.user.role})` : caller.role === 'host' ? `host '${caller.name}' on its own` : 'this caller';
    throw new ForbiddenError(`${route} is for the admin and for operators; ${who} may not call it`);
  }
  if (caller.user) throw new ForbiddenError(`${route} is not open to API users; user '${caller.user.name}' may not call it`);
  if (access === 'admin-or-host' || access === caller.role) return;
  const who = caller.role === 'host' ? `host '${caller.name}'` : 'the admin';
  throw new ForbiddenError(`${route} is for ${access === 'admin' ? 'the admin' : "the cluster's hosts"}; ${who} may not call it`);
}

/** For the host-to-host routes that act on one migration: only its source host. */
export function requireSourceHost(caller: Caller, source: string, what: string): void {
  if (caller.role !== 'host' || caller.name !== source)
    throw new ForbiddenError(`${what} belongs to a migration from '${source}'; ${caller.role === 'host' ? `host '${caller.name}'` : 'the admin'} may not act on it`);
}
