/**
 * `ferry node remove HOST`: a host leaves the cluster for good (decommissioned, or its key may be
 * compromised). Its certificate is revoked — every agent refuses it within seconds, though the CA
 * signed it — and its records are forgotten. Refused while anything still lives only there.
 */
import type { RevokedCertificate } from '../cluster/model.ts';
import type { Caller } from './authz.ts';
import type { AgentContext } from './context.ts';
import { RefusedError, NotFoundError } from './errors.ts';
import { liftFencesOf } from './storage-fencing.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';

export async function removeHost(ctx: AgentContext, name: string, reason: string): Promise<{ removed: string; fingerprint: string }> {
  if (!NAME_PATTERN.test(name)) throw new RefusedError(`'${name}' is not a host name: a host name must ${NAME_RULE}`);
  const member = await ctx.state.member(name);
  if (!member) throw new NotFoundError(`no host '${name}' has joined this cluster (or it was removed already); see 'ferry node list'`);
  const owned = (await ctx.state.vms()).filter((v) => v.owner === name).map((v) => v.spec.name);
  if (owned.length)
    throw new RefusedError(`host '${name}' still owns ${owned.map((v) => `'${v}'`).join(', ')}: migrate them away (ferry vm migrate VM --to HOST) or destroy them first`);
  const kept = (await ctx.state.volumes()).filter((v) => v.host === name || v.replicas?.includes(name)).map((v) => `${v.pool}/${v.name}`);
  if (kept.length) throw new RefusedError(`host '${name}' still keeps volumes ${kept.join(', ')} (a local volume or a replica): move or delete them first`);
  await ctx.state.removeHost(member, reason);
  await ctx.revocations.refresh();
  // Gone for good: a machine that comes at its address later is not to find itself blocklisted.
  await liftFencesOf(ctx, name);
  ctx.log(`host '${name}' removed from the cluster: its certificate (sha256 ${member.fingerprint.slice(0, 16)}…) is revoked`);
  return { removed: name, fingerprint: member.fingerprint };
}

/**
 * Revokes an admin certificate by its fingerprint (`ferry cert renew-admin` revokes the one it
 * replaced). Never the caller's own: the admin would lock itself out. A host's certificate goes with
 * `ferry node remove`, or when the host runs with a renewed one.
 */
export async function revokeAdminCertificate(ctx: AgentContext, caller: Caller, fingerprint: string, reason: string): Promise<RevokedCertificate> {
  if (!/^[0-9a-f]{64}$/.test(fingerprint)) throw new RefusedError(`'${fingerprint}' is not a SHA-256 fingerprint (64 lower-case hex digits)`);
  if (fingerprint === caller.fingerprint) throw new RefusedError('that is the certificate this request came with: revoking it would lock the admin out; renew first (ferry cert renew-admin), then revoke the old one with the new one');
  const hosts = await ctx.state.members();
  const host = hosts.find((m) => m.fingerprint === fingerprint);
  if (host) throw new RefusedError(`that is host '${host.name}''s certificate: remove the host (ferry node remove ${host.name}) or join it again to renew it`);
  const entry: RevokedCertificate = { fingerprint, name: 'admin', revokedAt: new Date().toISOString(), reason };
  await ctx.state.revokeCertificate(entry);
  await ctx.revocations.refresh();
  ctx.log(`an admin certificate (sha256 ${fingerprint.slice(0, 16)}…) is revoked: ${reason}`);
  return entry;
}
