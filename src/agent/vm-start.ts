/** Starting a VM on the host that owns it: the admin's `ferry vm start`, or the HA manager's request. */
import type { OwnedVm } from '../cluster/model.ts';
import { requireUefi } from '../qemu/firmware.ts';
import { storageCatalog, type AgentContext } from './context.ts';
import { RefusedError } from './errors.ts';

/**
 * Starts a VM this host owns. The record says `running` first (a replica's host serves the disk to a
 * VM that is meant to run), and `stopped` again if QEMU would not start.
 */
export async function startOwnVm(ctx: AgentContext, vm: OwnedVm): Promise<void> {
  const { runtime, node, state } = ctx;
  const name = vm.spec.name;
  if (runtime.get(name)) throw new RefusedError(`'${name}' is already running on ${node.name}`);
  if (vm.spec.boot.kind === 'firmware' && vm.spec.boot.firmware === 'uefi') requireUefi(node.name);
  let current = vm;
  if (vm.desired !== 'running') {
    const token = await state.updateVm(vm, { desired: 'running' });
    if (token === undefined) throw new RefusedError(`'${name}' changed while being started; try again`);
    current = { ...vm, desired: 'running', token };
  }
  try {
    await ctx.replication.beforeStart(vm.spec);
    await runtime.start(vm.spec, (await storageCatalog(ctx)).attach(vm.spec));
  } catch (err) {
    await state.updateVm(current, { desired: 'stopped' }).catch(() => undefined);
    throw err;
  }
}
