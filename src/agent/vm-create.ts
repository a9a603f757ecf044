/**
 * `ferry vm create`: from a request to a running VM. Two kinds of VM:
 * - ferry's own test guest, booted straight from its kernel (the address on its command line);
 * - any OS, booted through firmware (SeaBIOS or UEFI) from a disk made from an image, or from an
 *   ISO in its CD-ROM drive, configured by a cloud-init seed.
 * The spec is checked before anything is made; then the volumes, the record, and the start. A
 * failure at any step removes every volume made and the record: nothing half-made stays behind.
 */
import crypto from 'node:crypto';
import type { OwnedVm, StoredVolume } from '../cluster/model.ts';
import { newestCommonMachineType } from '../cluster/compatibility.ts';
import { SEED_BYTES, validateCloudInit, type CloudInitConfig, type GuestNetworkConfig } from '../qemu/cloud-init.ts';
import { requireUefi } from '../qemu/firmware.ts';
import { guestBoot, guestImage } from '../qemu/guest-image.ts';
import { MAX_NICS, UEFI_VARS_BYTES, macFor, makeVmSpec, type BootSpec, type CdromSpec, type DiskSpec, type NicSpec, type VolumeFormat } from '../qemu/spec.ts';
import { inSubnet, networkProblems, parseCidr } from './networks.ts';
import { defaultFormat, type StoragePoolConfig } from '../storage/types.ts';
import type { ClusterConfig } from './config.ts';
import { requireRoom, storageCatalog, type AgentContext } from './context.ts';
import { defaultCpuModel, readClusterCpuModel } from '../cluster/cpu.ts';
import { RefusedError } from './errors.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';
import { isoMedium, makeDiskFromImage, makeSeed, makeUefiVars, readyImage } from './images.ts';
import { createVolume, removeVolume } from './storage-routes.ts';
import { BOOLEAN, fields, HOST, IMAGE, listOf, NETWORK, oneOf, POOL, text, VM, whole } from './request-schema.ts';

const MAC = { type: 'string', pattern: '^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$', description: 'a MAC address like 52:54:00:12:34:56' } as const;
const BYTES = whole(0, Number.MAX_SAFE_INTEGER, 'a number of bytes');

/**
 * What `ferry vm create` (and `vm import`, the quake demo, the lab's demo VM) sends. The shapes and
 * the grammar of each field; makeVmSpec and the checks below judge the values together.
 */
export const VM_CREATE_BODY = fields(
  {
    name: VM,
    memoryMiB: whole(64, 1024 * 1024, 'a whole number of MiB from 64 to 1048576'),
    vcpus: whole(1, 255),
    uuid: { type: 'string', pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', description: 'a UUID' },
    mac: MAC,
    // Checked by requestedIp, whose refusals say what the cluster's guest range is.
    ip: text(64),
    cpuModel: { type: ['string', 'null'], pattern: '^[A-Za-z][A-Za-z0-9._-]{0,63}$', description: "a CPU model name (see ferry cluster cpu), or null for the cluster's" },
    cpuPassthrough: BOOLEAN,
    accel: oneOf(['auto', 'kvm', 'tcg']),
    memcheckMiB: whole(0, 1024 * 1024),
    dirtyMiBps: whole(0, 100_000),
    diskcheckRate: whole(0, 100_000),
    disks: listOf(fields({ sizeBytes: BYTES, pool: POOL, format: oneOf(['qcow2', 'raw']), peer: HOST, image: IMAGE }), 16),
    nics: listOf(fields({ network: NETWORK, ip: text(64), mac: MAC }, ['network']), 16),
    image: IMAGE,
    cdrom: IMAGE,
    boot: oneOf(['kernel', 'disk', 'cdrom']),
    firmware: oneOf(['bios', 'uefi']),
    pool: POOL,
    diskSizeBytes: BYTES,
    cloudInit: {
      anyOf: [{ const: false }, fields({ sshKeys: listOf(text(16 * 1024), 64), userData: text(64 * 1024), hostname: text(253), dhcp: BOOLEAN })],
      description: 'false (no seed) or an object of sshKeys, userData, hostname and dhcp',
    },
  },
  ['name'],
);

interface DiskRequest {
  sizeBytes: number;
  pool: string;
  format?: VolumeFormat;
  /** Replicated pools: the host for the second replica. */
  peer?: string;
  /** Made from this disk image (an imported VM's other disks), at least its size. */
  image?: string;
}

/** A NIC after the first, on a named network (`--net NAME[,ip=ADDR/PREFIX][,mac=MAC]`). */
interface NicRequest {
  network: string;
  ip?: string;
  mac?: string;
}

/** What a firmware-booted VM is made of, as asked. */
interface FirmwareRequest {
  firmware: 'bios' | 'uefi';
  order: 'disk' | 'cdrom';
  /** The pool of its boot disk, variable store and seed. */
  pool: string;
  image?: string;
  diskSizeBytes?: number;
  cdrom?: string;
  /** Absent: no seed. */
  cloudInit?: { sshKeys: string[]; userData?: string; hostname?: string; dhcp: boolean };
}

export async function createVm(ctx: AgentContext, cluster: ClusterConfig, body: Record<string, unknown>): Promise<{ vm: OwnedVm | undefined; job: unknown }> {
  const { state, runtime, node } = ctx;
  const name = String(body['name'] ?? '');
  const memoryMiB = Number(body['memoryMiB'] ?? 256);
  // An imported VM keeps its identity: the uuid and MAC its guest (and its licences, its DHCP leases) know.
  const uuid = body['uuid'] === undefined ? crypto.randomUUID() : String(body['uuid']);
  const pools = await state.pools();
  const firmware = firmwareRequest(body, pools);
  // A guest booted through firmware learns an address from its cloud-init seed only: without one (or with DHCP) ferry gives none.
  const noAddress = firmware !== undefined && (!firmware.cloudInit || firmware.cloudInit.dhcp);
  if (body['ip'] !== undefined && noAddress)
    throw new RefusedError('--ip reaches a guest booted through firmware only through its cloud-init seed; drop --no-cloud-init/--dhcp, or let the guest configure itself');
  const ip = body['ip'] !== undefined ? await requestedIp(ctx, cluster, body['ip']) : noAddress ? undefined : await allocateIp(ctx, cluster);
  const net = cluster.guestNetwork;
  const diskRequests = (body['disks'] as DiskRequest[] | undefined) ?? [];
  const diskcheck = body['diskcheckRate'] !== undefined ? { ratePerSec: Number(body['diskcheckRate']) } : undefined;
  if (diskcheck && !diskRequests.length) throw new RefusedError('diskcheck needs a disk; give the VM one with --disk SIZE');
  if (firmware && (diskcheck || body['memcheckMiB'] !== undefined || body['dirtyMiBps'] !== undefined))
    throw new RefusedError("--memcheck, --dirty and --diskcheck configure ferry's test guest (booted from its kernel); a VM booted from an image runs its own programs");
  // Pinned to a versioned machine type every host provides: the VM can move to any of them, and keeps it across QEMU upgrades.
  const hosts = await state.hosts();
  const machine = newestCommonMachineType(hosts);
  if (!machine && hosts.some((h) => h.qemu)) throw new RefusedError(`the hosts' QEMUs have no q35 machine type in common (${hosts.map((h) => `${h.name}: QEMU ${h.qemu?.version ?? 'unknown'}`).join(', ')}); upgrade the oldest`);
  if (body['cpuModel'] !== undefined && body['cpuModel'] !== null && typeof body['cpuModel'] !== 'string') throw new RefusedError('cpuModel must be a CPU model name (see ferry cluster cpu)');
  if (body['cpuPassthrough'] !== undefined && typeof body['cpuPassthrough'] !== 'boolean') throw new RefusedError('cpuPassthrough must be true or false');
  const cpu = typeof body['cpuModel'] === 'string' ? { model: body['cpuModel'], why: 'as asked' } : defaultCpuModel(hosts, await readClusterCpuModel(state.store));
  const mac = body['mac'] === undefined ? macFor(uuid, 0) : String(body['mac']).toLowerCase();
  const moreNics = await namedNetworkNics(ctx, uuid, body['nics']);

  // The data disks come after the boot disk (disk0) of a VM made from an image.
  const firstData = firmware?.image ? 1 : 0;
  const dataDisks = diskRequests.map((d, i) => diskSpec(name, firstData + i, d, pools));
  let next = firstData + dataDisks.length;
  const seedId = firmware?.cloudInit ? `disk${next++}` : undefined;
  const varsId = firmware?.firmware === 'uefi' ? `disk${next++}` : undefined;
  const cloudInit: CloudInitConfig | undefined = firmware?.cloudInit && {
    instanceId: uuid,
    hostname: firmware.cloudInit.hostname ?? name,
    sshKeys: firmware.cloudInit.sshKeys,
    ...(firmware.cloudInit.userData !== undefined ? { userData: firmware.cloudInit.userData } : {}),
    mac,
    network: ip ? { kind: 'static', address: ip, prefixLength: net?.prefixLength ?? 24, ...(net?.gateway ? { gateway: net.gateway } : {}) } : { kind: 'dhcp' },
    moreNics: moreNics.map((nic) => ({ mac: nic.mac, network: staticOrDhcp(nic.address) })),
  };
  if (cloudInit) validateCloudInit(cloudInit);
  if (firmware?.firmware === 'uefi') requireUefi(node.name);
  const cdromImage = firmware?.cdrom ? await readyImage(ctx, firmware.cdrom, 'iso') : undefined;
  if (firmware?.image) await readyImage(ctx, firmware.image, 'disk');
  const cdrom: CdromSpec | undefined = cdromImage && { medium: isoMedium(cdromImage) };
  const boot: BootSpec = firmware
    ? { kind: 'firmware', firmware: firmware.firmware, order: firmware.order }
    : guestBoot(guestImage(), {
        ...(ip ? { ip: `${ip}/${net?.prefixLength ?? 24}` } : {}),
        moreIps: moreNics.map((nic) => nic.address),
        memcheckMiB: Number(body['memcheckMiB'] ?? Math.min(64, Math.floor(memoryMiB / 4))),
        dirtyMiBps: Number(body['dirtyMiBps'] ?? 0),
        ...(diskcheck ? { diskcheck } : {}),
      });
  const placeholder = (id: string, sizeBytes: number, extra: Partial<DiskSpec> = {}): DiskSpec => ({ id, pool: firmware!.pool, volume: `${name}-${id}`, format: 'raw', sizeBytes, ...extra });
  // The whole spec is checked before anything is made (the firmware's volumes stand in with their final ids).
  const spec = makeVmSpec({
    name,
    uuid,
    memoryMiB,
    ...(machine ? { machine } : {}),
    vcpus: Number(body['vcpus'] ?? 1),
    cpuModel: cpu.model,
    ...(body['cpuPassthrough'] === true ? { cpuPassthrough: true } : {}),
    accel: (body['accel'] as 'auto' | 'tcg' | 'kvm' | undefined) ?? 'auto',
    boot,
    nics: [{ mac, model: 'virtio-net-pci', backend: { kind: 'bridge', bridge: node.bridge } }, ...moreNics],
    disks: [
      ...(firmware?.image ? [placeholder('disk0', 1024 * 1024)] : []),
      ...dataDisks,
      ...(seedId ? [placeholder(seedId, SEED_BYTES)] : []),
      ...(varsId ? [placeholder(varsId, UEFI_VARS_BYTES, { bus: 'pflash' })] : []),
    ],
    ...(cdrom ? { cdrom } : {}),
    // Any OS may run qemu-ga: the channel costs nothing when nobody answers on it. Its screen is on VNC.
    ...(firmware ? { guestAgent: true, display: 'vga' as const } : {}),
  });
  await requireRoom(ctx, node.name, spec, { creating: true });
  const unplaceable = await networkProblems(ctx, spec);
  if (unplaceable.length) throw new RefusedError(`'${name}' cannot be created on ${node.name}: ${unplaceable.join('; ')}`);
  // An imported VM keeps its uuid and MAC: two VMs with one MAC on a bridge would take each other's traffic.
  const macs = spec.nics.map((n) => n.mac);
  const twin = (await state.vms()).find((v) => v.spec.uuid === uuid || v.spec.nics.some((n) => macs.includes(n.mac)));
  if (twin) {
    const shared = twin.spec.uuid === uuid ? `the uuid ${uuid}` : `the MAC ${twin.spec.nics.find((n) => macs.includes(n.mac))!.mac}`;
    throw new RefusedError(`VM '${twin.spec.name}' has ${shared} already; an imported VM must not run twice (destroy one, or import with another --name and without the old identity)`);
  }
  if ((await state.vm(name)) !== undefined) throw new RefusedError(`a VM named '${name}' already exists; choose another name or destroy it first`);

  // Volumes first (each refused if its pool is unreachable from here), so a VM record never names a missing disk.
  const made: StoredVolume[] = [];
  const job = await state.newJob('create', name, node.name);
  const step = (line: string) => job.log.push(`${new Date().toISOString()} ${line}`);
  step(`CPU model ${spec.cpuModel}${spec.cpuPassthrough ? ' (passed through: it moves only to hosts with the same CPU features)' : ''}: ${cpu.why}`);
  try {
    const disks: DiskSpec[] = [];
    if (firmware?.image) {
      step(`making the boot disk from image ${firmware.image}`);
      disks.push(await makeDiskFromImage(ctx, name, 'disk0', { image: firmware.image, pool: firmware.pool, ...(firmware.diskSizeBytes ? { sizeBytes: firmware.diskSizeBytes } : {}) }, made));
    }
    for (const [i, disk] of dataDisks.entries()) {
      const fromImage = diskRequests[i]?.image;
      if (fromImage) {
        step(`making ${disk.id} from image ${fromImage}`);
        disks.push(await makeDiskFromImage(ctx, name, disk.id, { image: fromImage, pool: disk.pool, ...(diskRequests[i]!.sizeBytes ? { sizeBytes: diskRequests[i]!.sizeBytes } : {}) }, made));
        continue;
      }
      const peer = diskRequests[i]?.peer;
      const volume = await createVolume(ctx, { pool: disk.pool, name: disk.volume, format: disk.format, sizeBytes: disk.sizeBytes, vm: name, ...(peer ? { peer } : {}) });
      made.push(volume);
      // Where a driver placed a volume (an iSCSI LUN, the replica hosts) is part of how every host opens it.
      disks.push({ ...disk, ...(volume.location ? { location: volume.location } : {}), ...(volume.replicas ? { replicas: volume.replicas } : {}) });
    }
    if (seedId && cloudInit) {
      step('writing the cloud-init seed');
      disks.push(await makeSeed(ctx, name, seedId, firmware!.pool, cloudInit, made));
    }
    if (varsId) {
      step('making the UEFI variable store');
      disks.push(await makeUefiVars(ctx, name, varsId, firmware!.pool, made));
    }
    spec.disks = disks;
    makeVmSpec(spec); // the real volumes, checked again
    const token = await state.createVm({ spec, owner: node.name, desired: 'running', ...(ip ? { ip } : {}) });
    if (token === undefined) {
      if (ip && (await state.addressTaken(ip))) throw new RefusedError(`the guest address ${ip} was taken by another VM created at the same moment; try again`);
      throw new RefusedError(`a VM named '${name}' already exists; choose another name or destroy it first`);
    }
    try {
      await ctx.replication.beforeStart(spec);
      step(`starting QEMU (${spec.boot.kind === 'firmware' ? `${spec.boot.firmware === 'uefi' ? 'UEFI' : 'SeaBIOS'}, boot from ${spec.boot.order}` : "ferry's guest kernel"})`);
      await runtime.start(spec, (await storageCatalog(ctx)).attach(spec));
    } catch (err) {
      const vm = await state.vm(name);
      if (vm) await state.deleteVm(vm);
      throw err;
    }
    job.state = 'succeeded';
  } catch (err) {
    job.state = 'failed';
    job.error = (err as Error).message;
    for (const v of made.reverse()) await removeVolume(ctx, v).catch(() => undefined); // nothing half-made stays behind
    throw err;
  } finally {
    await state.saveJob(job);
  }
  return { vm: await state.vm(name), job };
}

/** The firmware part of a request, checked; undefined for ferry's kernel-booted guest. */
function firmwareRequest(body: Record<string, unknown>, pools: StoragePoolConfig[]): FirmwareRequest | undefined {
  const image = body['image'] === undefined ? undefined : String(body['image']);
  const cdrom = body['cdrom'] === undefined ? undefined : String(body['cdrom']);
  for (const [flag, value] of [['--image', image], ['--cdrom', cdrom]] as const)
    if (value !== undefined && !NAME_PATTERN.test(value)) throw new RefusedError(`${flag} ${value}: an image name ${NAME_RULE}; see 'ferry image list'`);
  const bootAsked = body['boot'] === undefined ? undefined : String(body['boot']);
  const boot = bootAsked ?? (image ? 'disk' : cdrom ? 'cdrom' : 'kernel');
  if (!['kernel', 'disk', 'cdrom'].includes(boot)) throw new RefusedError(`--boot ${boot}: must be disk, cdrom or kernel`);
  const firmware = String(body['firmware'] ?? 'bios');
  if (firmware !== 'bios' && firmware !== 'uefi') throw new RefusedError(`--firmware ${firmware}: must be bios or uefi`);
  if (boot === 'kernel') {
    if (image || cdrom || body['firmware'] !== undefined || body['cloudInit'] !== undefined)
      throw new RefusedError("--boot kernel starts ferry's own test guest from its kernel: no --image, --cdrom, --firmware or cloud-init");
    return undefined;
  }
  if (boot === 'disk' && !image) throw new RefusedError('--boot disk needs a disk to boot: --image IMAGE (see ferry image list)');
  if (boot === 'cdrom' && !cdrom) throw new RefusedError('--boot cdrom needs an ISO: --cdrom IMAGE (see ferry image list)');
  const pool = body['pool'] !== undefined ? String(body['pool']) : pools.length === 1 ? pools[0]!.name : undefined;
  if (!pool) throw new RefusedError(`say which pool the VM's boot disk${firmware === 'uefi' ? ', UEFI variables' : ''} and seed go in: --pool NAME (pools: ${pools.map((p) => p.name).join(', ') || "none; add one with 'ferry storage add'"})`);
  if (!pools.some((p) => p.name === pool)) throw new RefusedError(`no storage pool '${pool}'; see 'ferry storage list'`);
  const diskSizeBytes = body['diskSizeBytes'] === undefined ? undefined : Number(body['diskSizeBytes']);
  if (diskSizeBytes !== undefined && (!Number.isSafeInteger(diskSizeBytes) || diskSizeBytes < 2 ** 20)) throw new RefusedError(`--disk-size ${body['diskSizeBytes']} must be at least 1 MiB`);
  if (diskSizeBytes !== undefined && !image) throw new RefusedError('--disk-size sizes the boot disk made from --image; give data disks with --disk SIZE');
  const ci = body['cloudInit'];
  let cloudInit: FirmwareRequest['cloudInit'];
  if (ci !== false && ci !== undefined && (typeof ci !== 'object' || ci === null)) throw new RefusedError('cloudInit must be an object or false');
  if (ci !== false && ci !== undefined && typeof ci === 'object' && ci !== null) {
    const c = ci as Record<string, unknown>;
    cloudInit = {
      sshKeys: Array.isArray(c['sshKeys']) ? c['sshKeys'].map(String) : [],
      ...(c['userData'] !== undefined ? { userData: String(c['userData']) } : {}),
      ...(c['hostname'] !== undefined ? { hostname: String(c['hostname']) } : {}),
      dhcp: c['dhcp'] === true,
    };
  } else if (ci === undefined && image) {
    // A VM made from an image gets its address and hostname by cloud-init unless told otherwise.
    cloudInit = { sshKeys: [], dhcp: false };
  }
  return {
    firmware, order: boot as 'disk' | 'cdrom', pool,
    ...(image ? { image } : {}), ...(cdrom ? { cdrom } : {}), ...(diskSizeBytes ? { diskSizeBytes } : {}), ...(cloudInit ? { cloudInit } : {}),
  };
}

function diskSpec(vm: string, index: number, request: DiskRequest, pools: StoragePoolConfig[]): DiskSpec {
  if (!request.pool) throw new RefusedError(`disk ${index} of '${vm}' names no storage pool; add one with 'ferry storage add' and give it as --disk SIZE,storage=NAME`);
  const pool = pools.find((p) => p.name === request.pool);
  if (!pool) throw new RefusedError(`disk ${index} of '${vm}': no storage pool '${request.pool}'; see 'ferry storage list'`);
  if (request.peer !== undefined && pool.type !== 'replicated') throw new RefusedError(`disk ${index} of '${vm}': peer= is for replicated pools; pool '${pool.name}' is ${pool.type}`);
  // A disk from an image takes the image's size (checked when it is made); 1 MiB stands in until then.
  const sizeBytes = request.image !== undefined && !request.sizeBytes ? 1024 * 1024 : Number(request.sizeBytes);
  return { id: `disk${index}`, pool: request.pool, volume: `${vm}-disk${index}`, format: request.format ?? defaultFormat(pool), sizeBytes };
}

/**
 * The NICs on named networks, checked: the network exists, at most MAX_NICS in all, an address lies
 * in the network's subnet and no other VM has it there, a MAC given is not used twice.
 */
async function namedNetworkNics(ctx: AgentContext, uuid: string, value: unknown): Promise<NicSpec[]> {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new RefusedError('nics must be a list of {network, ip?, mac?}');
  if (value.length > MAX_NICS - 1) throw new RefusedError(`${value.length} --net NICs: a VM has at most ${MAX_NICS} NICs, the first on the host's guest bridge`);
  const networks = await ctx.state.networks();
  const vms = await ctx.state.vms();
  return (value as NicRequest[]).map((request, i): NicSpec => {
    const network = networks.find((n) => n.name === String(request?.network));
    if (!network) throw new RefusedError(`--net ${String(request?.network)}: no such network; see 'ferry network list' (add one with 'ferry network add NAME --bridge BR')`);
    const mac = request.mac === undefined ? macFor(uuid, i + 1) : String(request.mac).toLowerCase();
    const nic: NicSpec = { mac, model: 'virtio-net-pci', backend: { kind: 'network', network: network.name } };
    if (request.ip === undefined) return nic;
    const ip = String(request.ip);
    const address = ip.includes('/') ? ip : `${ip}/${network.subnet?.split('/')[1] ?? 24}`;
    if (network.subnet && !inSubnet(address, network.subnet))
      throw new RefusedError(`--net ${network.name},ip=${ip}: not a host address of network ${network.name}'s subnet ${network.subnet}`);
    if (!parseCidr(address)) throw new RefusedError(`--net ${network.name},ip=${ip}: not an IPv4 address with a prefix of 8 to 30 bits, like 10.78.20.5/24`);
    const holder = vms.find((v) => v.spec.nics.some((n) => n.backend.kind === 'network' && n.backend.network === network.name && n.address?.split('/')[0] === address.split('/')[0]));
    if (holder) throw new RefusedError(`--net ${network.name},ip=${ip}: VM '${holder.spec.name}' has this address on network ${network.name}`);
    return { ...nic, address };
  });
}

function staticOrDhcp(address: string | undefined): GuestNetworkConfig {
  if (!address) return { kind: 'dhcp' };
  const [ip, prefix] = address.split('/');
  return { kind: 'static', address: ip!, prefixLength: Number(prefix) };
}

/**
 * A guest address the user asked for: a plain IPv4 address (it goes into the guest's kernel command
 * line), inside the cluster's guest range, and not a host's or another VM's.
 */
async function requestedIp(ctx: AgentContext, cluster: ClusterConfig, value: unknown): Promise<string> {
  const ip = String(value);
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new RefusedError(`guest address '${ip}' is not an IPv4 address like 10.80.0.120`);
  const net = cluster.guestNetwork;
  const last = Number(m[4]);
  if (net && (!ip.startsWith(`${net.prefix}.`) || last < net.first || last > net.last))
    throw new RefusedError(`guest address ${ip} is outside the cluster's guest range ${net.prefix}.${net.first}-${net.last}`);
  if ((await ctx.state.hosts()).some((h) => h.address === ip)) throw new RefusedError(`guest address ${ip} is a host's address`);
  if ((await ctx.state.vms()).some((v) => v.ip === ip) || (await ctx.state.addressTaken(ip))) throw new RefusedError(`guest address ${ip} is taken by another VM`);
  return ip;
}

async function allocateIp(ctx: AgentContext, cluster: ClusterConfig): Promise<string | undefined> {
  const net = cluster.guestNetwork;
  if (!net) return undefined;
  const used = new Set((await ctx.state.vms()).map((v) => v.ip));
  for (let i = net.first; i <= net.last; i++) {
    const ip = `${net.prefix}.${i}`;
    if (!used.has(ip) && !(await ctx.state.addressTaken(ip))) return ip;
  }
  throw new RefusedError(`no free guest address left in ${net.prefix}.${net.first}-${net.last}`);
}

