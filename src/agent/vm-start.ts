/** Starting and stopping a VM on the host that owns it: the admin's `ferry vm start|stop`, or the HA manager's request. */
import { HaRecords } from '../cluster/ha/records.ts';
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
  // Always a compare-and-swap right before QEMU starts, even when the record says running already:
  // if another host took the VM over meanwhile (this host was thought dead), this one loses it here.
  const token = await state.updateVm(vm, { desired: 'running' });
  if (token === undefined) throw new RefusedError(`'${name}' changed while being started (another host may have taken it over); see 'ferry vm show ${name}'`);
  const current = { ...vm, desired: 'running' as const, token };
  try {
    await ctx.replication.beforeStart(vm.spec);
    await runtime.start(vm.spec, (await storageCatalog(ctx)).attach(vm.spec));
    await ctx.guard?.();
  } catch (err) {
    await state.updateVm(current, { desired: 'stopped' }).catch(() => undefined);
    throw err;
  }
}

/** Stops a VM running here (ACPI power-down, or killed with `force`), and the record says it is meant to be stopped. */
export async function stopOwnVm(ctx: AgentContext, vm: OwnedVm, force: boolean): Promise<string> {
  const outcome = await ctx.runtime.stop(vm.spec.name, force);
  // Stopped on purpose: the HA manager and a restarted agent leave it stopped.
  await ctx.state.updateVm(vm, { desired: 'stopped' });
  return outcome;
}

/**
 * An HA VM asked to be `started` is not stopped by hand (the manager would start it again), nor one
 * asked to be `stopped` started: the admin changes the request instead, as with Proxmox's ha-manager.
 */
export async function refuseIfHaDecides(ctx: AgentContext, name: string, what: 'start' | 'stop'): Promise<void> {
  const resource = await new HaRecords(ctx.state.store).resource(name);
  if (!resource) return;
  if (what === 'stop' && resource.request === 'started')
    throw new RefusedError(`'${name}' is under HA, asked to be started: the manager would start it again; stop it with 'ferry ha set ${name} --state stopped'`);
  if (what === 'start' && resource.request === 'stopped')
    throw new RefusedError(`'${name}' is under HA, asked to be stopped; start it with 'ferry ha set ${name} --state started'`);
}
