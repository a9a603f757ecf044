/**
 * `ferry node remove HOST`: a host leaves the cluster for good (decommissioned, or its key may be
 * compromised). Its certificate is revoked — every agent refuses it within seconds, though the CA
 * signed it — and its records are forgotten. Refused while anything still lives only there.
 */
import type { AgentContext } from './context.ts';
import { RefusedError, NotFoundError } from './errors.ts';
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
  ctx.log(`host '${name}' removed from the cluster: its certificate (sha256 ${member.fingerprint.slice(0, 16)}…) is revoked`);
  return { removed: name, fingerprint: member.fingerprint };
}
