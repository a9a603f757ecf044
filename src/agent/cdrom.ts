/**
 * `ferry vm cdrom NAME eject|insert ISO`: changes the medium in a running VM's CD-ROM drive (the
 * drive itself stays: the VM's device set, and so its migration stream, do not change). After an
 * install, ejecting an ISO kept on a host-local pool is what lets the VM migrate.
 *
 * QEMU first, then the store: if the store refuses (the VM changed meanwhile), the medium QEMU had
 * is put back, so the stored spec and the running QEMU never disagree about the medium.
 */
import type { OwnedVm } from '../cluster/model.ts';
import { makeVmSpec, type IsoMedium } from '../qemu/spec.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import { storageCatalog, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';
import { isoMedium, readyImage } from './images.ts';

export type CdromChange = { action: 'eject' } | { action: 'insert'; image: string };

export function parseCdromChange(body: Record<string, unknown>): CdromChange {
  const action = String(body['action'] ?? '');
  if (action === 'eject') return { action };
  if (action !== 'insert') throw new RefusedError(`CD-ROM action '${action}' must be eject or insert`);
  const image = String(body['image'] ?? '');
  if (!NAME_PATTERN.test(image)) throw new RefusedError(`'${image}' is not an image name: names ${NAME_RULE}; see 'ferry image list'`);
  return { action, image };
}

export async function changeCdrom(ctx: AgentContext, vm: OwnedVm, change: CdromChange): Promise<OwnedVm> {
  const name = vm.spec.name;
  const instance = ctx.runtime.require(name);
  if (!instance.spec.cdrom) throw new RefusedError(`'${name}' has no CD-ROM drive (a VM created with --cdrom has one)`);
  if (await ctx.state.migration(name)) throw new RefusedError(`'${name}' is migrating; change its CD-ROM when the migration is over`);
  const before = instance.spec.cdrom.medium;
  if (change.action === 'eject' && !before) throw new RefusedError(`the CD-ROM drive of '${name}' is empty already`);
  const storage = await storageCatalog(ctx);
  let medium: IsoMedium | undefined;
  if (change.action === 'insert') {
    medium = isoMedium(await readyImage(ctx, change.image, 'iso'));
  }
  // A pool this host cannot reach is refused by isoBlockdev, before the drive is touched.
  const load = (m: IsoMedium | undefined) => instance.changeCdrom(m && { medium: m, blockdev: storage.isoBlockdev(m) });
  try {
    await load(medium);
  } catch (err) {
    // QEMU refused half-way: the medium it had goes back in, so the store (unchanged) is right again.
    await load(before).catch((again: Error) => ctx.log(`${name}: could not put the CD-ROM's medium back after a failed change: ${again.message}`));
    await ctx.runtime.record(instance, 'running');
    throw new RefusedError(`QEMU refused to change the CD-ROM of '${name}' (${(err as Error).message}); ${instance.spec.cdrom?.medium?.image === before?.image ? 'the medium is as it was' : `the drive now holds ${instance.spec.cdrom?.medium ? `image ${instance.spec.cdrom.medium.image}` : 'nothing'} — change it again`}`);
  }
  const spec = makeVmSpec({ ...vm.spec, cdrom: medium ? { medium } : {} });
  const token = await ctx.state.updateVm(vm, { spec });
  if (token === undefined) {
    await load(before).catch((err: Error) => ctx.log(`${name}: could not put the CD-ROM's medium back after a refused change: ${err.message}`));
    throw new RefusedError(`'${name}' changed while its CD-ROM was being changed (a migration or another change); the medium is as it was — try again`);
  }
  await ctx.runtime.record(instance, 'running');
  ctx.log(`${name}: CD-ROM ${medium ? `now holds image ${medium.image}` : `ejected (was image ${before!.image})`}`);
  return (await ctx.state.vm(name))!;
}
