/** ferry vm create|start|stop|destroy|show|list|console|migrate, in the habits of virsh and qm. */
import { readFile } from 'node:fs/promises';
import type { HostRecord, NetworkRecord, OwnedVm } from '../../cluster/model.ts';
import type { ClusterMaintenance } from '../../cluster/ha/records.ts';
import { maintenanceLine } from './cluster-state.ts';
import { Cli } from '../context.ts';
import { UsageError, sizeBytes, wholeNumber, parseCommandLine } from '../errors.ts';
import { attemptsText, mib, ms, table } from '../format.ts';
import type { Command } from '../command.ts';
import type { LibvirtImportPlan } from '../libvirt-import.ts';
import type { DryRun, InputBasis } from '../../agent/predict.ts';
import type { CandidateHost } from '../../agent/cpu.ts';
import type { ClusterCpuView } from '../cpu.ts';
import { cpuMisfit } from '../../cluster/cpu.ts';
import type { PolicyName } from '../../migration/policy/policy.ts';
// What only some verbs need (migration, consoles, displays, imports) is loaded by those verbs:
// `ferry vm list` starts without it.

const USAGE = `Usage:
  ferry vm create NAME [--memory MiB] [--vcpus N] [--cpu MODEL [--cpu-passthrough]] [--host HOST] [--memcheck MiB] [--dirty MiB/s]
                  [--disk SIZE[,storage=POOL][,format=qcow2|raw][,peer=HOST]]... [--diskcheck WRITES/s]
      --disk makes a new volume NAME-diskN in POOL (the only pool, when there is one) for each --disk
      (format: qcow2, raw for rbd pools); on a replicated pool the second replica goes to peer=HOST
      (default: the first other host by name).
      --diskcheck runs the guest's disk checker, writing that many checksummed 4 KiB blocks per second.
      --cpu: a versioned QEMU model (Westmere-v1) or an ISA level (x86-64-v2); default: the cluster's model
      (ferry cluster cpu). The VM runs, and moves, only where every feature of it is given (QEMU's
      enforce). host/max pass the host's own CPU through: only with --cpu-passthrough, and the VM then
      moves only between hosts with the same CPU features.
  ferry vm create NAME ... --net NETWORK[,ip=ADDR[/PREFIX]][,mac=MAC]...
      The first NIC is on the host's guest bridge (its address from the cluster's guest range); each --net
      adds one on a named network (see ferry network), up to 3, with a MAC ferry derives from the VM's
      uuid unless given, and the address given (in the network's subnet) configured in the guest.
  ferry vm create NAME --image IMAGE [--disk-size SIZE] [--pool POOL] [--firmware bios|uefi] [--cdrom ISO]
                  [--boot disk|cdrom] [--ssh-key FILE]... [--user-data FILE] [--hostname NAME] [--dhcp | --no-cloud-init]
  ferry vm create NAME --cdrom ISO [--boot cdrom] [--pool POOL] [--firmware bios|uefi] [--disk SIZE]...
      Any OS, booted through firmware: SeaBIOS (default) or UEFI (OVMF; the VM's variable store is a small
      volume that moves with it). The boot disk is made from a disk image (see ferry image): an overlay on
      it in a shared-dir pool, a copy in other pools, grown to --disk-size. --cdrom attaches an ISO (an
      installer): only an ISO in a shared pool lets the VM migrate. A cloud-init NoCloud seed (a small
      disk) gives the guest its hostname, its address from the cluster's guest range (or --dhcp) and the
      --ssh-key public keys; --user-data replaces the default user-data; --no-cloud-init leaves it out.
  ferry vm start|stop|destroy|show NAME   (stop --force kills at once; stop asks the guest agent first,
                                          where the guest runs one, then ACPI; show adds what the agent says)
  ferry vm fsfreeze NAME freeze|thaw|status   freeze the guest's filesystems for a consistent snapshot (guest agent)
  ferry vm list
  ferry vm console NAME [--force] [--log]
      the guest's serial console, interactive (Ctrl-] leaves); it follows the VM when it migrates.
      --force takes over a console someone else has open; --log (or a --json, or no terminal) prints
      what the guest wrote so far instead (--attach: interactive without a terminal, for scripts).
  ferry vm cdrom NAME eject | insert ISO
      changes the ISO in a running VM's CD-ROM drive (the guest sees the tray open and close; a guest's
      tray lock does not stop an eject). An ISO on a host-local pool keeps a VM from migrating: eject it.
  ferry vm vnc NAME [--listen 127.0.0.1:5900]
      the VM's VNC display (its VGA screen; VMs made from images and ISOs have one) on a loopback port of
      this machine, for any VNC viewer; it follows the VM when it migrates (the viewer reconnects). The
      agents serve it as a websocket (GET /v1/vms/NAME/vnc, admin certificate), as noVNC expects.
  ferry vm import --libvirt-xml FILE --pool POOL [--name NAME] [--host HOST] [--dry-run]
      a libvirt domain (virsh dumpxml) as a ferry VM: memory, vCPUs, CPU model, firmware, its disks and
      CD-ROM (uploaded from this machine into POOL), its MAC and uuid, the guest agent channel. Prints
      first what comes over and exactly what does not (and what happens instead); --dry-run stops there.
  ferry vm recover NAME --to HOST [--accept-data-loss]
      boot a VM whose host is gone (lease expired) on HOST, from its disks: shared storage, or HOST's
      replica of a replicated volume. Its memory is lost with its host. Refused from a replica that is
      outdated (the lost host wrote without it) unless --accept-data-loss.
  ferry vm migrate NAME --to HOST [--policy balanced|minimal-downtime|must-finish] [--downtime-limit ms]
                   [--bandwidth MiB/s] [--timeout s] [--allow-postcopy [--no-postcopy-preempt]] [--multifd|--no-multifd] [--verify-memory auto|always|never]
                   [--allow-older-destination] [--no-probe] [--dry-run [--history all|other-vms|none]]
  ferry vm migrate NAME --dry-run   (no --to: which hosts can take it, and why not the others)
      Policies: minimal-downtime keeps the pause short and rolls back rather than pause long;
      balanced (default) allows a longer pause step by step, then throttles the guest;
      must-finish also uses XBZRLE and throttles hard.
      --allow-postcopy lets must-finish switch to post-copy: after that switch the VM's memory is
      split between the two hosts, and a network failure can LOSE THE VM. Off unless given; refused on
      QEMU < 9.0 under TCG (its dirty tracking loses pages). If the link breaks during post-copy, the
      guest waits on the pages still on the source and ferry reconnects the two QEMUs (postcopy
      recovery) once the link is back; if the SOURCE HOST DIES during post-copy, the pages only it
      held are gone: THE VM IS LOST.
      Post-copy's page requests get a channel of their own (postcopy-preempt: an 84 ms blackout instead of
      710 ms in the benchmark, medians of 10); --no-postcopy-preempt turns that off. RAM goes over 2 multifd
      streams by default for minimal-downtime and balanced (30-72% less total time in the benchmark,
      medians of 3, no longer pauses); --no-multifd turns that off, --multifd turns it on for must-finish (replacing XBZRLE;
      not with post-copy).
      --verify-memory compares the guest's RAM on both sides (paused) before switching over and rolls
      back on any difference; it lengthens the pause. auto (default) does it only where the source QEMU
      has a known page-losing defect (QEMU < 9.0 under TCG); always is a diagnostic.
      --allow-older-destination lets the VM move to a host whose QEMU is older than the source's
      (backward migration: best effort in QEMU; a failed load leaves the VM on the source).
      --dry-run without --to lists every host, whether it can take the VM and why not (CPU model,
      memory, maintenance, replicas). With --to, it measures the guest's non-zero memory, its dirty rate and the link, and predicts each
      policy's total time, pause and whether it converges. Nothing moves. It learns the stream's
      throughput and the setup time from this cluster's past migrations (--history all, the default),
      from other VMs' only (other-vms: to judge it on a VM it has not seen), or from none; each input
      says whether it was measured, learned or assumed.
Every command takes --json.`;

export const vmCommand: Command = {
  summary: 'create, start, stop, destroy, list, show and live-migrate VMs',
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({
      args,
      allowPositionals: true,
      options: {
        memory: { type: 'string' }, vcpus: { type: 'string' }, cpu: { type: 'string' }, 'cpu-passthrough': { type: 'boolean' }, host: { type: 'string' }, memcheck: { type: 'string' }, dirty: { type: 'string' },
        disk: { type: 'string', multiple: true }, diskcheck: { type: 'string' }, net: { type: 'string', multiple: true },
        image: { type: 'string' }, 'disk-size': { type: 'string' }, pool: { type: 'string' }, firmware: { type: 'string' }, cdrom: { type: 'string' }, boot: { type: 'string' },
        'ssh-key': { type: 'string', multiple: true }, 'user-data': { type: 'string' }, hostname: { type: 'string' }, dhcp: { type: 'boolean' }, 'no-cloud-init': { type: 'boolean' },
        to: { type: 'string' }, 'downtime-limit': { type: 'string' }, bandwidth: { type: 'string' }, 'no-probe': { type: 'boolean' },
        policy: { type: 'string' }, timeout: { type: 'string' }, 'allow-postcopy': { type: 'boolean' }, 'verify-memory': { type: 'string' }, 'dry-run': { type: 'boolean' }, history: { type: 'string' },
        'allow-older-destination': { type: 'boolean' }, multifd: { type: 'boolean' }, 'no-multifd': { type: 'boolean' }, 'no-postcopy-preempt': { type: 'boolean' },
        'libvirt-xml': { type: 'string' }, name: { type: 'string' },
        listen: { type: 'string' },
        force: { type: 'boolean' }, log: { type: 'boolean' }, attach: { type: 'boolean' }, 'accept-data-loss': { type: 'boolean' }, json: { type: 'boolean' }, context: { type: 'string' },
      },
    });
    const [verb, name] = positionals;
    const json = values.json ?? false;
    const out = (human: string, doc: unknown) => console.log(json ? JSON.stringify(doc, null, 2) : human);
    if (!verb) throw new UsageError(USAGE);
    if (verb !== 'list' && verb !== 'import' && !name) throw new UsageError(`ferry vm ${verb} needs a VM name`);
    const cli = await Cli.load(values.context);

    switch (verb) {
      case 'list': {
        const { vms, clusterMaintenance } = await (await cli.anyAgent()).call<{ vms: OwnedVm[]; clusterMaintenance?: ClusterMaintenance | null }>('GET', '/v1/cluster/vms');
        if (!values.json && clusterMaintenance) console.log(maintenanceLine(clusterMaintenance));
        return out(table(['vm', 'host', 'memory', 'vcpus', 'address', 'token'], vms.map((v) => [v.spec.name, v.owner, `${v.spec.memoryMiB} MiB`, String(v.spec.vcpus), v.ip ?? '-', String(v.token)])), vms);
      }
      case 'create': {
        const memoryMiB = wholeNumber('memory', values.memory) ?? 256;
        const hosts = (await (await cli.anyAgent()).call<{ hosts: (HostRecord & { freeMemoryMiB: number })[] }>('GET', '/v1/cluster/hosts')).hosts;
        // The host with the most memory free among those that run the VM's CPU model (the agent says why, if none does).
        const cpuModel = values.cpu ?? (await (await cli.anyAgent()).call<ClusterCpuView>('GET', '/v1/cluster/cpu')).default.model;
        const misfits = new Map(hosts.map((h) => [h.name, cpuMisfit({ cpuModel }, h)]));
        const runsIt = hosts.filter((h) => !misfits.get(h.name));
        if (!values.host && !runsIt.length && hosts.some((h) => h.cpu))
          throw new UsageError(`no host runs CPU model ${cpuModel}: ${[...misfits.values()].filter(Boolean).join('; ')}; see 'ferry cluster cpu'`);
        const host = values.host ?? [...(runsIt.length ? runsIt : hosts)].sort((a, b) => b.freeMemoryMiB - a.freeMemoryMiB)[0]?.name;
        if (!host) throw new UsageError('no host is up; see ferry node list');
        if (!hosts.some((h) => h.name === host)) throw new UsageError(`unknown or down host '${host}'; hosts up: ${hosts.map((h) => h.name).join(', ')}`);
        const disks = values.disk?.length ? await parseDisks(cli, values.disk) : [];
        const cloudInit = await cloudInitRequest(values);
        const { vm } = await cli.agent(host).call<{ vm: OwnedVm }>(
          'POST',
          '/v1/vms',
          {
            name,
            memoryMiB,
            vcpus: wholeNumber('vcpus', values.vcpus) ?? 1,
            ...(values.cpu ? { cpuModel: values.cpu } : {}),
            ...(values['cpu-passthrough'] ? { cpuPassthrough: true } : {}),
            ...(values.memcheck ? { memcheckMiB: wholeNumber('memcheck', values.memcheck) } : {}),
            ...(values.dirty ? { dirtyMiBps: wholeNumber('dirty', values.dirty) } : {}),
            ...(disks.length ? { disks } : {}),
            ...(values.net?.length ? { nics: values.net.map(parseNic) } : {}),
            ...(values.diskcheck !== undefined ? { diskcheckRate: wholeNumber('diskcheck', values.diskcheck) } : {}),
            ...(values.image ? { image: values.image } : {}),
            ...(values['disk-size'] ? { diskSizeBytes: sizeBytes('disk-size', values['disk-size']) } : {}),
            ...(values.pool ? { pool: values.pool } : {}),
            ...(values.firmware ? { firmware: values.firmware } : {}),
            ...(values.cdrom ? { cdrom: values.cdrom } : {}),
            ...(values.boot ? { boot: values.boot } : {}),
            ...(cloudInit !== undefined ? { cloudInit } : {}),
          },
          // Making a disk from an image copies it in pools without overlays: as long as that copy takes.
          values.image || values.cdrom ? 30 * 60_000 : 180_000,
        );
        const booting = vm.spec.boot.kind === 'firmware' ? `booting from ${vm.spec.boot.order} through ${vm.spec.boot.firmware === 'uefi' ? 'UEFI' : 'SeaBIOS'}` : 'it is running';
        return out(`created ${name} on ${vm.owner} (${vm.spec.memoryMiB} MiB, CPU ${vm.spec.cpuModel}, address ${vm.ip ?? (cloudInit && (cloudInit as { dhcp?: boolean }).dhcp ? 'by DHCP' : 'none')}); ${booting}`, vm);
      }
      case 'show': {
        const vm = await cli.vm(name!);
        // What the guest agent says, where the guest runs one: a short wait, and its absence is said, not hidden.
        const guest = vm.spec.guestAgent
          ? await cli
              .agent(vm.owner)
              .call<GuestReport>('GET', `/v1/vms/${name}/guest`, undefined, 5_000)
              .catch((err: Error) => ({ unavailable: err.message }) as GuestReport)
          : undefined;
        return out(
          [
            `${vm.spec.name}: on ${vm.owner}, ${vm.spec.memoryMiB} MiB, ${vm.spec.vcpus} vCPU, ${vm.spec.cpuModel}, accel ${vm.spec.accel}`,
            `  address ${vm.ip ?? '-'}, MAC ${vm.spec.nics[0]?.mac ?? '-'}, uuid ${vm.spec.uuid}, token ${vm.token}`,
            ...(vm.spec.boot.kind === 'firmware' ? [`  boots from ${vm.spec.boot.order} through ${vm.spec.boot.firmware === 'uefi' ? 'UEFI (OVMF)' : 'SeaBIOS'}`] : []),
            ...(vm.spec.disks ?? []).map(
              (d) => `  ${d.id}: volume ${d.pool}/${d.volume}, ${d.format}, ${mib(d.sizeBytes)}${d.bus === 'pflash' ? ' (UEFI variables)' : ''}${d.image ? ` (from image ${d.image})` : ''}`,
            ),
            ...vm.spec.nics.slice(1).map((n, i) => `  nic${i + 1}: MAC ${n.mac}${n.backend.kind === 'network' ? ` on network ${n.backend.network}` : n.backend.kind === 'bridge' ? ` on bridge ${n.backend.bridge}` : ''}${n.address ? `, address ${n.address}` : ''}`),
            ...(vm.spec.cdrom ? [`  CD-ROM: ${vm.spec.cdrom.medium ? `image ${vm.spec.cdrom.medium.image} (${vm.spec.cdrom.medium.pool}/${vm.spec.cdrom.medium.volume})` : 'empty'}`] : []),
            ...(guest ? [guestLine(guest)] : []),
          ].join('\n'),
          guest ? { ...vm, guest } : vm,
        );
      }
      case 'fsfreeze': {
        const action = positionals[2] ?? 'status';
        const vm = await cli.vm(name!);
        const result = await cli.agent(vm.owner).call<{ action: string; result: number | string }>('POST', `/v1/vms/${name}/guest/fsfreeze`, { action, token: vm.token }, 60_000);
        return out(
          action === 'status' ? `${name}: filesystems ${result.result}` : `${name}: ${result.result} filesystem(s) ${action === 'freeze' ? 'frozen; thaw them with ferry vm fsfreeze ' + name + ' thaw' : 'thawed'}`,
          result,
        );
      }
      case 'start':
      case 'stop':
      case 'destroy': {
        const vm = await cli.vm(name!);
        const agent = cli.agent(vm.owner);
        const body = { token: vm.token, force: values.force ?? false };
        const result = verb === 'destroy' ? await agent.call('DELETE', `/v1/vms/${name}`, body, 120_000) : await agent.call('POST', `/v1/vms/${name}/${verb}`, body, 120_000);
        return out(`${name}: ${verb === 'stop' ? `stopped (${(result as { outcome: string }).outcome})` : verb === 'start' ? 'started' : 'destroyed'} on ${vm.owner}`, result);
      }
      case 'cdrom': {
        const action = positionals[2];
        const image = positionals[3];
        if (action !== 'eject' && action !== 'insert') throw new UsageError('ferry vm cdrom NAME eject | ferry vm cdrom NAME insert ISO');
        if (action === 'insert' && !image) throw new UsageError('ferry vm cdrom NAME insert ISO: name the ISO image (see ferry image list)');
        const vm = await cli.vm(name!);
        const result = await cli.agent(vm.owner).call<{ vm: OwnedVm }>('POST', `/v1/vms/${name}/cdrom`, { token: vm.token, action, ...(image ? { image } : {}) }, 60_000);
        const medium = result.vm.spec.cdrom?.medium;
        return out(`${name}: the CD-ROM ${medium ? `holds image ${medium.image}` : 'is empty'}`, result);
      }
      case 'console': {
        if (!values.log && !json && (process.stdin.isTTY || values.attach)) return (await import('../console.ts')).interactiveConsole(cli, name!, { force: values.force ?? false });
        const vm = await cli.vm(name!);
        const { log } = await cli.agent(vm.owner).call<{ log: string }>('GET', `/v1/vms/${name}/console`);
        return out(log, { log });
      }
      case 'vnc':
        return (await import('../vnc.ts')).forwardDisplay(cli, name!, values.listen ?? '127.0.0.1:5900', json);
      case 'recover': {
        if (!values.to) throw new UsageError('ferry vm recover NAME --to HOST: say which host takes the VM over');
        const { vm } = await cli.agent(values.to).call<{ vm: OwnedVm }>('POST', `/v1/vms/${name}/recover`, values['accept-data-loss'] ? { acceptDataLoss: true } : {}, 120_000);
        return out(`${name}: recovered on ${vm.owner}, booted from its disks`, { vm });
      }
      case 'migrate':
        return migrateVm(cli, name!, values, json);
      case 'import':
        return importLibvirt(cli, values, json);
      default:
        throw new UsageError(USAGE);
    }
  },
};

/** --disk SIZE[,storage=POOL][,format=F], each into { sizeBytes, pool, format }. */
async function parseDisks(cli: Cli, specs: string[]): Promise<{ sizeBytes: number; pool: string; format?: string; peer?: string }[]> {
  const { pools } = await (await cli.anyAgent()).call<{ pools: { name: string; type: string }[] }>('GET', '/v1/cluster/storage');
  return specs.map((spec) => {
    const [size, ...options] = spec.split(',');
    const opts = Object.fromEntries(options.map((o) => o.split('=', 2) as [string, string]));
    for (const key of Object.keys(opts))
      if (key !== 'storage' && key !== 'format' && key !== 'peer') throw new UsageError(`--disk ${spec}: unknown option '${key}' (storage=POOL, format=qcow2|raw, peer=HOST)`);
    const pool = opts['storage'] ?? (pools.length === 1 ? pools[0]!.name : undefined);
    if (!pool) throw new UsageError(`--disk ${spec}: say which pool with storage=NAME (pools: ${pools.map((p) => p.name).join(', ') || "none; add one with 'ferry storage add'"})`);
    if (!pools.some((p) => p.name === pool)) throw new UsageError(`--disk ${spec}: no storage pool '${pool}' (pools: ${pools.map((p) => p.name).join(', ') || 'none'})`);
    const format = opts['format'];
    if (format !== undefined && format !== 'qcow2' && format !== 'raw') throw new UsageError(`--disk ${spec}: format must be qcow2 or raw`);
    const peer = opts['peer'];
    if (peer !== undefined && pools.find((p) => p.name === pool)?.type !== 'replicated') throw new UsageError(`--disk ${spec}: peer=HOST is for replicated pools`);
    return { sizeBytes: sizeBytes('disk', size ?? ''), pool, ...(format ? { format } : {}), ...(peer ? { peer } : {}) };
  });
}

/** ferry vm import --libvirt-xml: the plan first, then the uploads and the VM. */
async function importLibvirt(cli: Cli, values: { 'libvirt-xml'?: string; name?: string; pool?: string; host?: string; 'dry-run'?: boolean }, json: boolean): Promise<number> {
  const file = values['libvirt-xml'];
  if (!file) throw new UsageError('ferry vm import --libvirt-xml FILE --pool POOL (FILE: what virsh dumpxml printed)');
  const xml = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(`--libvirt-xml ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
  });
  let plan: LibvirtImportPlan;
  try {
    plan = (await import('../libvirt-import.ts')).planLibvirtImport(xml, values.name);
  } catch (err) {
    throw new UsageError(`${file}: ${(err as Error).message}`);
  }
  const say = (line: string) => !json && console.log(line);
  say(`${plan.name}: ${plan.memoryMiB} MiB, ${plan.vcpus} vCPU, ${plan.cpuModel ?? 'qemu64'}, ${plan.firmware === 'uefi' ? 'UEFI' : 'SeaBIOS'}, boots from ${plan.boot}${plan.uuid ? `, uuid ${plan.uuid}` : ''}${plan.nics[0]?.mac ? `, MAC ${plan.nics[0].mac}` : ''}${plan.guestAgent ? ', guest agent channel' : ''}`);
  for (const [i, disk] of plan.disks.entries()) say(`  disk${i} <- ${disk.file} (${disk.format}, was ${disk.target})`);
  if (plan.cdrom) say(`  CD-ROM <- ${plan.cdrom}`);
  const { networks } = await (await cli.anyAgent()).call<{ networks: NetworkRecord[] }>('GET', '/v1/cluster/networks');
  const moreNics = (await import('../libvirt-import.ts')).mapImportedNics(plan.nics, networks);
  for (const nic of moreNics.nics) say(`  NIC ${nic.mac ?? ''} -> network ${nic.network}`);
  plan.notCarried.push(...moreNics.unmatched);
  say(plan.notCarried.length ? 'not carried over:' : 'everything comes over');
  for (const line of plan.notCarried) say(`  - ${line}`);
  if (values['dry-run']) {
    if (json) console.log(JSON.stringify(plan, null, 2));
    return 0;
  }
  if (!values.pool) throw new UsageError('--pool POOL: where the imported disks go; see ferry storage list');
  const host = values.host ?? cli.context.agents[0]?.name;
  if (!host) throw new UsageError('the cluster has no hosts');
  const images: string[] = [];
  // An import that fails half-way removes the images it uploaded: it can be run again as it was.
  const removeUploaded = async () => {
    for (const image of images) await cli.agent(host).call('DELETE', `/v1/images/${image}`, {}, 120_000).catch(() => undefined);
  };
  let cdrom: string | undefined;
  let vm: OwnedVm;
  try {
    for (const [i, disk] of plan.disks.entries()) {
      const image = await (await import('./image.ts')).uploadImage(cli, host, `${plan.name}-import-disk${i}`, disk.file, values.pool);
      say(`  uploaded ${disk.file} as image ${image.name}`);
      images.push(image.name);
    }
    if (plan.cdrom) images.push((cdrom = (await (await import('./image.ts')).uploadImage(cli, host, `${plan.name}-import-cdrom`, plan.cdrom, values.pool)).name));
    ({ vm } = await cli.agent(host).call<{ vm: OwnedVm }>(
    'POST',
    '/v1/vms',
    {
      name: plan.name, memoryMiB: plan.memoryMiB, vcpus: plan.vcpus, pool: values.pool, firmware: plan.firmware, boot: plan.boot, cloudInit: false,
      ...(plan.uuid ? { uuid: plan.uuid } : {}), ...(plan.nics[0]?.mac ? { mac: plan.nics[0].mac } : {}), ...(moreNics.nics.length ? { nics: moreNics.nics } : {}), ...(plan.cpuModel ? { cpuModel: plan.cpuModel } : {}),
      ...(images[0] ? { image: images[0] } : {}),
      ...(images.length > 1 ? { disks: images.slice(1).map((image) => ({ pool: values.pool, image, sizeBytes: 0 })) } : {}),
      ...(cdrom ? { cdrom } : {}),
    },
    30 * 60_000,
  ));
  } catch (err) {
    await removeUploaded();
    throw err;
  }
  say(`imported ${plan.name} on ${vm.owner}; it is booting (ferry vm console ${plan.name})`);
  if (json) console.log(JSON.stringify({ plan, vm }, null, 2));
  return 0;
}

interface GuestReport {
  os?: { name?: string; version?: string; kernel?: string };
  interfaces?: { name: string; mac?: string; addresses: string[] }[];
  unavailable?: string;
}

function guestLine(guest: GuestReport): string {
  if (guest.unavailable) return `  guest agent: not answering (${guest.unavailable})`;
  const addresses = (guest.interfaces ?? []).map((i) => `${i.name} ${i.addresses.join(' ') || '-'}`).join(', ');
  return `  guest agent: ${guest.os?.name ?? 'unknown OS'}${guest.os?.kernel ? `, kernel ${guest.os.kernel}` : ''}; ${addresses || 'no interfaces'}`;
}

/** `--net NETWORK[,ip=ADDR[/PREFIX]][,mac=MAC]` as a NIC request. */
function parseNic(text: string): { network: string; ip?: string; mac?: string } {
  const [network, ...options] = text.split(',');
  const nic: { network: string; ip?: string; mac?: string } = { network: network! };
  for (const option of options) {
    const [key, value] = option.split('=', 2);
    if ((key !== 'ip' && key !== 'mac') || !value) throw new UsageError(`--net ${text}: '${option}' is not ip=ADDR[/PREFIX] or mac=MAC`);
    nic[key] = value;
  }
  if (!network) throw new UsageError(`--net ${text}: name the network first (see ferry network list)`);
  return nic;
}

/** The cloud-init part of a create request: false when turned off, undefined for the defaults. */
async function cloudInitRequest(values: { 'ssh-key'?: string[]; 'user-data'?: string; hostname?: string; dhcp?: boolean; 'no-cloud-init'?: boolean }): Promise<Record<string, unknown> | false | undefined> {
  const asked = Boolean(values['ssh-key']?.length || values['user-data'] || values.hostname || values.dhcp);
  if (values['no-cloud-init']) {
    if (asked) throw new UsageError('--no-cloud-init leaves the seed out: --ssh-key, --user-data, --hostname and --dhcp need it');
    return false;
  }
  if (!asked) return undefined;
  const read = async (flag: string, file: string) =>
    readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new UsageError(`--${flag} ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    });
  const sshKeys: string[] = [];
  for (const file of values['ssh-key'] ?? []) sshKeys.push(...(await read('ssh-key', file)).split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
  return {
    sshKeys,
    ...(values['user-data'] ? { userData: await read('user-data', values['user-data']) } : {}),
    ...(values.hostname ? { hostname: values.hostname } : {}),
    ...(values.dhcp ? { dhcp: true } : {}),
  };
}

async function migrateVm(
  cli: Cli,
  name: string,
  values: { to?: string; 'downtime-limit'?: string; bandwidth?: string; 'no-probe'?: boolean; policy?: string; timeout?: string; 'allow-postcopy'?: boolean; 'verify-memory'?: string; 'dry-run'?: boolean; history?: string; 'allow-older-destination'?: boolean; multifd?: boolean; 'no-multifd'?: boolean; 'no-postcopy-preempt'?: boolean },
  json: boolean,
): Promise<number> {
  if (!values.to && values['dry-run']) return listCandidates(cli, name, json);
  if (!values.to) throw new UsageError("ferry vm migrate needs --to HOST ('ferry vm migrate NAME --dry-run' lists the hosts that can take it)");
  if (values['dry-run']) return predictVm(cli, name, values.to, values.history ?? 'all', json);
  if (values.history) throw new UsageError('--history goes with --dry-run');
  const downtimeLimit = wholeNumber('downtime-limit', values['downtime-limit']);
  const bandwidth = wholeNumber('bandwidth', values.bandwidth);
  const timeout = wholeNumber('timeout', values.timeout);
  const { POLICY_NAMES } = await import('../../migration/policy/policy.ts');
  if (values.policy !== undefined && !POLICY_NAMES.includes(values.policy as PolicyName))
    throw new UsageError(`--policy ${values.policy}: choose one of ${POLICY_NAMES.join(', ')}`);
  if (values['allow-postcopy'] && values.policy !== 'must-finish') throw new UsageError('--allow-postcopy goes with --policy must-finish');
  if (values['no-postcopy-preempt'] && !values['allow-postcopy']) throw new UsageError('--no-postcopy-preempt goes with --allow-postcopy');
  if (values.multifd && values['no-multifd']) throw new UsageError('--multifd and --no-multifd contradict each other; give one');
  if (values.multifd && values['allow-postcopy']) throw new UsageError('--multifd and --allow-postcopy cannot be combined (QEMU 10); choose one');
  const verify = values['verify-memory'];
  if (verify !== undefined && verify !== 'auto' && verify !== 'always' && verify !== 'never')
    throw new UsageError(`--verify-memory ${verify}: choose auto, always or never`);
  const params = {
    ...(values.policy ? { policy: values.policy as PolicyName } : {}),
    ...(downtimeLimit ? { downtimeLimitMs: downtimeLimit } : {}),
    ...(bandwidth ? { maxBandwidth: bandwidth * 2 ** 20 } : {}),
    ...(timeout ? { performTimeoutMs: timeout * 1000 } : {}),
    ...(values['allow-postcopy'] ? { allowPostcopy: true } : {}),
    ...(verify ? { verifyMemory: verify as 'auto' | 'always' | 'never' } : {}),
    ...(values['allow-older-destination'] ? { allowOlderDestination: true } : {}),
    ...(values.multifd ? { multifd: true } : values['no-multifd'] ? { multifd: false } : {}),
    ...(values['no-postcopy-preempt'] ? { postcopyPreempt: false } : {}),
  };
  if (values['allow-postcopy'] && !json)
    console.error('warning: post-copy allowed: if the network fails after the switch to post-copy, the VM can be lost.');
  const { ProgressDisplay, progressLine } = await import('../progress.ts');
  const display = new ProgressDisplay();
  const doc = await (await import('../migrate.ts')).migrateWithProbe(cli, name, values.to, {
    params,
    probe: !values['no-probe'],
    onProgress: json ? undefined : (from, progress) => display.update(progressLine(`${name} ${from}→${values.to}:`, progress)),
  });
  display.clear();
  if (json) console.log(JSON.stringify(doc, null, 2));
  else if (doc.status === 'completed')
    console.log(
      `migrated ${name} ${doc.from} → ${doc.to}: total ${ms(doc.totalMs)}, QEMU downtime ${ms(doc.downtimeMs)}, ` +
        `client blackout ${doc.blackoutMs !== null ? `${ms(doc.blackoutMs)} (${doc.packetsLost} of ${doc.packetsSent} packets lost)` : 'not measured'}, ${mib(doc.bytes)} in ${doc.rounds} rounds` +
        (doc.diskBytes ? `, disks copied: ${mib(doc.diskBytes)}` : doc.disks.length ? ', disks on shared storage' : '') +
        `; ${attemptsText(doc.attempts, doc.earlierAttempts)}` +
        (doc.attempts !== null && doc.attempts > 1 ? `, ${ms(doc.totalMsAllAttempts)} in all` : ''),
    );
  else console.error(`ferry: migration of ${name} failed${doc.attempts !== null && doc.attempts > 1 ? ` (${attemptsText(doc.attempts, doc.earlierAttempts)})` : ''}: ${doc.error}`);
  if (!json) for (const warning of doc.warnings) console.error(`warning: ${warning}`);
  return doc.status === 'completed' ? 0 : 1;
}

/** `ferry vm migrate NAME --dry-run` without --to: every host, whether it can take the VM and why not. */
async function listCandidates(cli: Cli, name: string, json: boolean): Promise<number> {
  const result = await (await cli.anyAgent()).call<{ vm: string; from: string; cpuModel: string; hosts: CandidateHost[] }>('GET', `/v1/vms/${encodeURIComponent(name)}/candidates`);
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  console.log(`${name} on ${result.from}, CPU model ${result.cpuModel}: where a live migration could take it (dry run, nothing measured or moved; --to HOST predicts one)`);
  const width = Math.max(4, ...result.hosts.map((h) => h.host.length));
  for (const h of result.hosts) console.log(`  ${h.host.padEnd(width)}  ${h.ok ? 'yes' : `no: ${h.reasons.join('; ')}`}`);
  return 0;
}

async function predictVm(cli: Cli, name: string, to: string, history: string, json: boolean): Promise<number> {
  const vm = await cli.vm(name);
  cli.agent(to);
  const { HISTORY_CHOICES } = await import('../../agent/predict.ts');
  if (!(HISTORY_CHOICES as readonly string[]).includes(history)) throw new UsageError(`--history ${history}: choose one of ${HISTORY_CHOICES.join(', ')}`);
  const result = await cli.agent(vm.owner).call<DryRun>('POST', `/v1/vms/${name}/predict`, { to, history }, 120_000);
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  const m = result.inputs;
  const label = (b: InputBasis) => (b.basis === 'measured' ? 'measured' : b.basis === 'learned' ? `learned from ${b.from} migrations` : 'ASSUMED');
  console.log(
    `${name} ${result.from} → ${result.to} (dry run, nothing moved): ${mib(m.nonZeroBytes)} of ${mib(m.guestBytes)} not zero, ` +
      `dirtied at ${mib(m.dirtyRateBytesPerSec)}/s, link ${mib(m.linkBytesPerSec)}/s [${label(result.basis.linkBytesPerSec)}]` +
      (result.link?.achievedBytesPerSec ? ` (probe ${mib(result.link.probedBytesPerSec)}/s, past migrations ${mib(result.link.achievedBytesPerSec)}/s)` : '') +
      `, setup ~${ms(m.setupMs)} [${label(result.basis.setupMs)}]` +
      (m.diskCopyBytes ? `, ${mib(m.diskCopyBytes)} of disk to copy first` : ''),
  );
  console.log(`learned from ${result.history.migrations} past migrations (history: ${result.history.choice}${result.history.vms.length ? `; VMs ${result.history.vms.join(', ')}` : ''})`);
  for (const [input, b] of Object.entries(result.basis)) if (b.basis === 'assumed') console.log(`assumed: ${input} = ${m[input as keyof typeof m]} (${b.why})`);
  for (const problem of result.destinationProblems ?? []) console.log(`a real migration would be refused: ${problem}`);
  const can = result.candidates.filter((c) => c.ok).map((c) => c.host);
  console.log(`hosts that can take ${name}: ${can.length ? can.join(', ') : 'none'} (ferry vm migrate ${name} --dry-run: why not the others)`);
  console.log(
    table(
      ['policy', 'converges', 'total', 'pause', 'rounds', 'note'],
      result.predictions.map((p) => [p.policy, p.converges ? 'yes' : 'NO', ms(p.totalMs), ms(p.downtimeMs), String(p.rounds), p.reason ?? (p.steps.length ? `${p.steps.length} policy steps` : '')]),
    ),
  );
  return 0;
}
