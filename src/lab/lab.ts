/**
 * The lab: many hosts on one machine. Each host is a network namespace with
 * its own agent and a bridge for its guests; a switch namespace joins the
 * hosts' bridges into one L2 segment (so a guest keeps its address wherever it
 * runs); a client namespace holds the probe. Everything made is written to
 * lab.json, and `down` removes exactly that.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { NfsServer } from './nfs-server.ts';
import { IscsiServer } from './iscsi-server.ts';
import { CephCluster } from './ceph-cluster.ts';
import path from 'node:path';
import { AgentClient, type AgentEndpoint } from '../agent/client.ts';
import { readJson, writeJson, type ClusterConfig, type NodeConfig, type StoreConfig } from '../agent/config.ts';
import type { CpuRestriction } from '../cluster/cpu.ts';
import { createCa, issueCertificate, issueStoreClientCertificate, loadIdentity } from '../cluster/pki.ts';
import { storeUserArgv } from '../cluster/store/etcd-auth.ts';
import { EtcdCluster, type EtcdMemberSpec } from '../cluster/store/etcd-cluster.ts';
import { FAULT_FILE_ENV, type FaultAction, type FaultPoint } from '../agent/faults.ts';
import { createBridge, createNetns, deleteNetns, ip, linkExists, netnsExists } from '../net/netns.ts';
import { run } from '../util/exec.ts';
import { PROJECT_ROOT } from '../qemu/guest-image.ts';

import { DEFAULT_LAB_DIR, type CliContext } from './defaults.ts';

export { DEFAULT_LAB_DIR, type CliContext };
const SUBNET = '10.80.0';
/**
 * More addresses of the client namespace, for a game client that asks a real Quake 3 server more
 * than once a second (the server answers each address once a second; Probe.startQuake3Stream).
 */
export const CLIENT_QUERY_ADDRESSES = [60, 61, 62, 63, 64, 65, 66, 67, 68].map((a) => `${SUBNET}.${a}`);

export interface LabHost {
  name: string;
  netns: string;
  address: string;
  config: string;
  pid?: number;
  /** The host's watchdog (`ferry watchdog --kill-guests`): a process apart from the host's, in the root namespace. */
  watchdogPid?: number;
}

export interface LabRecord {
  dir: string;
  prefix: string;
  store: 'sqlite' | 'etcd';
  switchNetns: string;
  clientNetns: string;
  clientAddress: string;
  storeNetns?: string;
  etcdPids: number[];
  /** Storage servers' namespace (`--storage`), at SAN_ADDRESS, and what runs there. */
  sanNetns?: string;
  storage?: LabStorage[];
  hosts: LabHost[];
  createdAt: string;
  /** Set once everything is up; a record without it is a lab whose `up` was interrupted. */
  complete?: boolean;
}


export class LabError extends Error {
  override name = 'LabError';
}

export async function readLab(dir = DEFAULT_LAB_DIR): Promise<LabRecord | undefined> {
  return existsSync(path.join(dir, 'lab.json')) ? readJson<LabRecord>(path.join(dir, 'lab.json'), 'lab record') : undefined;
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Storage servers the lab can run for the shared-storage drivers. */
export type LabStorage = 'nfs' | 'iscsi' | 'rbd';
export const LAB_STORAGE: readonly LabStorage[] = ['nfs', 'iscsi', 'rbd'];
const SAN_ADDRESS = `${SUBNET}.8`;

export interface LabOptions {
  dir?: string;
  hosts?: number;
  store?: 'sqlite' | 'etcd';
  /** Storage servers to run in the lab's storage namespace, each added as a pool of that name. */
  storage?: LabStorage[];
  /** Namespace name prefix, so that tests can run a lab beside a user's. */
  prefix?: string;
  memoryMiBPerHost?: number;
  /** Hosts that advertise less of their CPU (node.json "cpu"): an "older" host on one machine. */
  cpuRestrictions?: Record<string, CpuRestriction>;
  log?: (line: string) => void;
}

export async function labUp(options: LabOptions = {}): Promise<LabRecord> {
  const dir = options.dir ?? DEFAULT_LAB_DIR;
  const log = options.log ?? (() => undefined);
  const existing = await readLab(dir);
  if (existing && !existing.complete) await labDown(dir); // an interrupted `up`: start over
  else if (existing) {
    for (const h of existing.hosts) {
      if (!alive(h.watchdogPid)) await startWatchdog(existing, h.name);
      if (!alive(h.pid)) await startAgent(existing, h.name);
    }
    // `--storage` on a running lab adds the servers it does not run yet.
    const missing = (options.storage ?? []).filter((kind) => !existing.storage?.includes(kind));
    if (missing.length) await startStorageServers(existing, missing, () => writeJson(path.join(dir, 'lab.json'), existing), log);
    return existing;
  }
  const hostCount = options.hosts ?? 3;
  if (!Number.isInteger(hostCount) || hostCount < 2 || hostCount > 9) throw new LabError(`--hosts ${hostCount}: a lab has 2 to 9 hosts`);
  const store = options.store ?? 'sqlite';
  const prefix = options.prefix ?? process.env['FERRY_LAB_PREFIX'] ?? 'ferry-lab';
  const lab: LabRecord = {
    dir,
    prefix,
    store,
    switchNetns: `${prefix}-sw`,
    clientNetns: `${prefix}-client`,
    clientAddress: `${SUBNET}.2`,
    etcdPids: [],
    hosts: [],
    createdAt: new Date().toISOString(),
  };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const save = () => writeJson(path.join(dir, 'lab.json'), lab);
  try {
    // Switch and client first: written down before anything else is made.
    await save();
    await createNetns(lab.switchNetns);
    await createBridge(lab.switchNetns, 'sw0');
    await createBridge(lab.switchNetns, 'sw1');
    await plug(lab, lab.clientNetns, 'c0', `${lab.clientAddress}/24`, false);
    await plug(lab, lab.clientNetns, 'c1', `${SECOND_SEGMENT}.1/24`, false, 'sw1');
    for (const address of CLIENT_QUERY_ADDRESSES) await ip(lab.clientNetns, 'addr', 'add', `${address}/24`, 'dev', 'c0');
    log(`switch ${lab.switchNetns}, client ${lab.clientNetns} (${lab.clientAddress})`);

    const clusterDir = path.join(dir, 'cluster');
    await createCa(clusterDir, prefix);
    let storeConfig: StoreConfig = { kind: 'sqlite', path: path.join(dir, 'state.db') };
    if (store === 'etcd') {
      lab.storeNetns = `${prefix}-store`;
      await save();
      await plug(lab, lab.storeNetns, 'st0', `${SUBNET}.5/24`, false);
      for (const a of [6, 7]) await ip(lab.storeNetns, 'addr', 'add', `${SUBNET}.${a}/24`, 'dev', 'st0');
      const logFd = openSync(path.join(dir, 'etcd.log'), 'a');
      // Each member gets a certificate of the cluster CA: clients and peers must present one too.
      // All members share the store namespace, so a peer may connect from any of its addresses: name them all.
      const storeAddresses = [5, 6, 7].map((a) => `${SUBNET}.${a}`);
      for (const i of [1, 2, 3]) await issueCertificate(clusterDir, path.join(dir, 'etcd', `tls${i}`), { name: `etcd${i}`, role: 'store', addresses: storeAddresses });
      const cluster = await EtcdCluster.start(etcdSpecs(lab), path.join(dir, 'etcd'), 30_000, logFd);
      lab.etcdPids = cluster.members.map((m) => m.pid!).filter(Boolean);
      storeConfig = { kind: 'etcd', endpoints: cluster.endpoints, rbac: true };
      await save();
      log(`etcd: 3 members at ${cluster.endpoints.join(', ')}`);
    }
    const clusterConfig: ClusterConfig = {
      name: prefix,
      store: storeConfig,
      guestNetwork: { prefix: SUBNET, prefixLength: 24, first: 100, last: 199 },
    };
    await writeJson(path.join(clusterDir, 'cluster.json'), clusterConfig);
    await issueCertificate(clusterDir, path.join(dir, 'admin'), { name: 'admin', role: 'admin' });
    // etcd with RBAC, as `ferry join` sets it up: root's password stays in the cluster directory, each
    // host gets a user of its own. Done from the store's namespace: etcd is reached only from there.
    const storeUser = (...args: string[]) => run('ip', ['netns', 'exec', lab.storeNetns!, ...storeUserArgv(...args, '--cluster-dir', clusterDir, '--admin-dir', path.join(dir, 'admin'))]);
    if (storeConfig.kind === 'etcd') {
      await issueStoreClientCertificate(clusterDir, path.join(dir, 'admin'), 'admin');
      await storeUser('enable');
    }

    for (let i = 1; i <= hostCount; i++) {
      const name = `h${i}`;
      const host: LabHost = { name, netns: `${prefix}-${name}`, address: `${SUBNET}.${10 + i}`, config: path.join(dir, 'hosts', name, 'node.json') };
      lab.hosts.push(host);
      await save();
      await plug(lab, host.netns, 'up0', undefined, true);
      await createBridge(host.netns, 'br0', `${host.address}/24`);
      await ip(host.netns, 'link', 'set', 'up0', 'master', 'br0', 'up');
      // A second guest segment, without host addresses: for named networks (`ferry network add NAME --bridge br1`).
      await plug(lab, host.netns, 'up1', undefined, true, 'sw1');
      await createBridge(host.netns, 'br1');
      await ip(host.netns, 'link', 'set', 'up1', 'master', 'br1', 'up');
      const hostDir = path.join(dir, 'hosts', name);
      await issueCertificate(clusterDir, path.join(hostDir, 'cert'), { name, role: 'host', addresses: [host.address] });
      if (storeConfig.kind === 'etcd') {
        await issueStoreClientCertificate(clusterDir, path.join(hostDir, 'cert'), name);
        await storeUser('add', name, '--cert-dir', path.join(hostDir, 'cert'));
      }
      const node: NodeConfig = {
        name,
        clusterDir,
        certDir: path.join(hostDir, 'cert'),
        address: host.address,
        port: 7443,
        socket: path.join(hostDir, 'agent.sock'),
        runDir: path.join(hostDir, 'run'),
        stateDir: path.join(hostDir, 'state'),
        netns: host.netns,
        bridge: 'br0',
        memoryMiB: options.memoryMiBPerHost ?? 2048,
        leaseTtlSeconds: 10,
        watchdog: { socket: path.join(hostDir, 'watchdog.sock') },
        ...(options.cpuRestrictions?.[name] ? { cpu: options.cpuRestrictions[name] } : {}),
      };
      await writeJson(host.config, node);
      await startWatchdog(lab, name);
      await startAgent(lab, name);
      log(`host ${name}: namespace ${host.netns}, address ${host.address}, agent pid ${host.pid}`);
    }
    await addLabStorage(lab, log);
    if (options.storage?.length) await startStorageServers(lab, options.storage, save, log);
    await writeJson(path.join(dir, 'context.json'), labContext(lab));
    lab.complete = true;
    await save();
    return lab;
  } catch (err) {
    await labDown(dir).catch(() => undefined);
    throw err;
  }
}

/**
 * Two pools for the lab: `shared` (one directory all hosts see, as an NFS mount would be) and
 * `local` (a directory per host: live migration copies the disks).
 */
async function addLabStorage(lab: LabRecord, log: (line: string) => void): Promise<void> {
  await mkdir(path.join(lab.dir, 'shared-images'), { recursive: true });
  for (const h of lab.hosts) await mkdir(path.join(lab.dir, 'hosts', h.name, 'images'), { recursive: true });
  const client = new AgentClient(labContext(lab).agents[0]!, await loadIdentity(path.join(lab.dir, 'admin')), 10_000);
  await client.call('POST', '/v1/storage', { name: 'shared', type: 'shared-dir', path: path.join(lab.dir, 'shared-images') });
  await client.call('POST', '/v1/storage', { name: 'local', type: 'local', path: path.join(lab.dir, 'hosts', '%h', 'images') });
  log(`storage: pool 'shared' (shared-dir ${path.join(lab.dir, 'shared-images')}), pool 'local' (local ${path.join(lab.dir, 'hosts', '%h', 'images')})`);
}

/** The storage namespace on the lab network, with the servers asked for, each added as a pool. */
async function startStorageServers(lab: LabRecord, kinds: LabStorage[], save: () => Promise<void>, log: (line: string) => void): Promise<void> {
  lab.sanNetns ??= `${lab.prefix}-san`;
  lab.storage ??= [];
  await save();
  await plug(lab, lab.sanNetns, 'san0', `${SAN_ADDRESS}/24`, false);
  await ip(lab.sanNetns, 'link', 'set', 'lo', 'up');
  const client = new AgentClient(labContext(lab).agents[0]!, await loadIdentity(path.join(lab.dir, 'admin')), 30_000);
  // Only the hosts may use the storage: the guests share the lab network with it (Ceph needs cephx keys the guests lack).
  const hostAddresses = lab.hosts.map((h) => h.address);
  for (const kind of kinds) {
    lab.storage.push(kind);
    await save();
    switch (kind) {
      case 'nfs': {
        const server = await NfsServer.start({ netns: lab.sanNetns, dir: path.join(lab.dir, 'san', 'nfs'), address: SAN_ADDRESS, clients: hostAddresses });
        await client.call('POST', '/v1/storage', { name: 'nfs', type: 'nfs', server: SAN_ADDRESS, export: server.exportPath });
        log(`storage: pool 'nfs' (NFS-Ganesha at nfs://${SAN_ADDRESS}${server.exportPath}, namespace ${lab.sanNetns})`);
        break;
      }
      case 'iscsi': {
        const target = `iqn.2026-11.org.ferry:${lab.prefix}`;
        // tgtd's management socket is machine-wide (/var/run/tgtd): a port per lab keeps labs and a host's own tgtd apart.
        const controlPort = await IscsiServer.freeControlPort(3000 + ([...lab.prefix].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 997, 7)));
        const server = await IscsiServer.start({ netns: lab.sanNetns, dir: path.join(lab.dir, 'san', 'iscsi'), address: SAN_ADDRESS, target, luns: 8, lunMiB: 256, controlPort, initiators: hostAddresses });
        // tgtd's management socket is a file every lab host sees: the lab's target can withdraw a lost host's initiator.
        const fenceCommand = [path.join(PROJECT_ROOT, 'scripts', 'tgt-fence.sh'), String(controlPort), '1'];
        await client.call('POST', '/v1/storage', { name: 'iscsi', type: 'iscsi', portal: server.portal, target, fenceCommand });
        log(`storage: pool 'iscsi' (tgt at iscsi://${server.portal}/${target}, 8 LUNs of 256 MiB; storage fencing by scripts/tgt-fence.sh)`);
        break;
      }
      case 'rbd': {
        const ceph = await CephCluster.start({ netns: lab.sanNetns, dir: path.join(lab.dir, 'san', 'ceph'), address: SAN_ADDRESS });
        await client.call('POST', '/v1/storage', { name: 'rbd', type: 'rbd', pool: ceph.pool, conf: ceph.conf, user: 'admin' });
        log(`storage: pool 'rbd' (Ceph: 1 monitor at ${SAN_ADDRESS}:6789, 3 memstore OSDs, cephx; pool '${ceph.pool}')`);
        break;
      }
    }
  }
}

/**
 * The lab's second guest segment (switch sw1, each host's br1, the client's c1): a separate L2
 * network for NICs on a named network, as a real cluster's back-end network would be.
 */
export const SECOND_SEGMENT = '10.78.0';

/** The switch's end of a namespace's veth pair: `s-<ns>` on sw0, `b-<ns>` on sw1 (link names are at most 15 characters). */
export function switchPortName(netns: string, segment: 'sw0' | 'sw1' = 'sw0'): string {
  return `${segment === 'sw0' ? 's' : 'b'}-${netns.slice(-9)}`.slice(0, 15);
}

/** Connects a namespace to a switch bridge with a veth pair (name inside; switchPortName outside). */
async function plug(lab: LabRecord, netns: string, inside: string, address: string | undefined, bare: boolean, segment: 'sw0' | 'sw1' = 'sw0'): Promise<void> {
  await createNetns(netns);
  const outside = switchPortName(netns, segment);
  if (!(await linkExists(lab.switchNetns, outside))) {
    await ip(lab.switchNetns, 'link', 'add', outside, 'type', 'veth', 'peer', 'name', inside, 'netns', netns);
  }
  await ip(lab.switchNetns, 'link', 'set', outside, 'master', segment, 'up');
  if (address && !bare) await ip(netns, 'addr', 'replace', address, 'dev', inside);
  await ip(netns, 'link', 'set', inside, 'up');
}

export function labContext(lab: LabRecord): CliContext {
  return {
    cluster: lab.prefix,
    certDir: path.join(lab.dir, 'admin'),
    agents: lab.hosts.map((h) => ({ name: h.name, url: `https://${h.address}:7443`, socket: path.join(lab.dir, 'hosts', h.name, 'agent.sock') })),
    clientNetns: lab.clientNetns,
    clusterDir: path.join(lab.dir, 'cluster'),
    ...(lab.storeNetns ? { storeNetns: lab.storeNetns } : {}),
  };
}

/** Starts (or restarts) a host's agent in its namespace, detached, and waits until it answers. */
/** The lab's three etcd members, all in the store namespace at .5, .6 and .7. */
function etcdSpecs(lab: LabRecord): EtcdMemberSpec[] {
  return STORE_ADDRESS_SUFFIXES.map((a, i) => ({
    name: `etcd${i + 1}`, host: `${SUBNET}.${a}`, clientPort: 2379, peerPort: 2380, netns: lab.storeNetns!, tlsDir: path.join(lab.dir, 'etcd', `tls${i + 1}`),
  }));
}
const STORE_ADDRESS_SUFFIXES = [5, 6, 7];

/** Kills etcd member `index` (0-2) of an etcd lab, as a crash would (SIGKILL). */
export async function killEtcdMember(lab: LabRecord, index: number): Promise<void> {
  const pid = lab.etcdPids[index];
  if (!alive(pid)) return;
  process.kill(pid!, 'SIGKILL');
  while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
}

/** Starts etcd member `index` again on its data directory (it rejoins the cluster it was part of). */
export async function restartEtcdMember(lab: LabRecord, index: number): Promise<void> {
  if (alive(lab.etcdPids[index])) return;
  const specs = etcdSpecs(lab);
  const member = EtcdCluster.memberOf(specs, path.join(lab.dir, 'etcd'), index);
  member.start(openSync(path.join(lab.dir, 'etcd.log'), 'a'));
  lab.etcdPids[index] = member.pid!;
  await writeJson(path.join(lab.dir, 'lab.json'), lab);
}

/** Which etcd member (0-2) leads now, as the members themselves say; undefined without a leader. */
export async function etcdLeader(lab: LabRecord): Promise<number | undefined> {
  const tls = path.join(lab.dir, 'etcd', 'tls1');
  const endpoints = etcdSpecs(lab).map((s) => `https://${s.host}:${s.clientPort}`);
  const out = await run('ip', [
    'netns', 'exec', lab.storeNetns!, 'etcdctl', `--endpoints=${endpoints.join(',')}`, `--cacert=${path.join(tls, 'ca-cert.pem')}`, `--cert=${path.join(tls, 'cert.pem')}`,
    `--key=${path.join(tls, 'key.pem')}`, '--command-timeout=2s', 'endpoint', 'status', '--write-out=json',
  ]).catch((err: Error & { stdout?: string }) => err.stdout ?? '[]');
  const statuses = JSON.parse(out || '[]') as Array<{ Endpoint: string; Status: { header: { member_id: number | string }; leader: number | string } }>;
  const leader = statuses.find((s) => String(s.Status.header.member_id) === String(s.Status.leader));
  return leader ? endpoints.indexOf(leader.Endpoint) : undefined;
}

/** The file where a lab host's agent looks for injected faults (agent/faults.ts). */
export function faultFile(lab: LabRecord, host: string): string {
  return path.join(lab.dir, 'hosts', host, 'faults.json');
}

/** Arms a one-shot fault in a lab host's agent: at `point`, for `vm`, it does `action`. */
export async function injectFault(lab: LabRecord, host: string, point: FaultPoint, action: FaultAction, vm: string): Promise<void> {
  const file = faultFile(lab, host);
  const faults = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as Record<string, unknown>;
  await writeJson(file, { ...faults, [point]: { action, vm } });
}

/**
 * The host's watchdog: outside the host's namespace and processes, so that a fault that freezes or
 * kills the host leaves it running; in the lab it kills the host's HA guests instead of resetting.
 */
export async function startWatchdog(lab: LabRecord, name: string): Promise<number> {
  const host = lab.hosts.find((h) => h.name === name);
  if (!host) throw new LabError(`no host ${name} in the lab`);
  const hostDir = path.join(lab.dir, 'hosts', name);
  const socket = path.join(hostDir, 'watchdog.sock');
  const logFd = openSync(path.join(hostDir, 'watchdog.log'), 'a');
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), 'watchdog', '--socket', socket, '--kill-guests'], {
    stdio: ['ignore', logFd, logFd],
    detached: true,
    cwd: PROJECT_ROOT,
  });
  child.unref();
  host.watchdogPid = child.pid!;
  await writeJson(path.join(lab.dir, 'lab.json'), lab);
  for (let i = 0; i < 100 && !existsSync(socket); i++) {
    if (!alive(host.watchdogPid)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!existsSync(socket)) throw new LabError(`the watchdog of ${name} did not come up: ${(await readFile(path.join(hostDir, 'watchdog.log'), 'utf8').catch(() => '')).slice(-500)}`);
  return host.watchdogPid;
}

export async function startAgent(lab: LabRecord, name: string, env: Record<string, string> = {}): Promise<number> {
  const host = lab.hosts.find((h) => h.name === name);
  if (!host) throw new LabError(`no host ${name} in the lab`);
  const logFd = openSync(path.join(lab.dir, 'hosts', name, 'agent.log'), 'a');
  const child = spawn('ip', ['netns', 'exec', host.netns, process.execPath, path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), 'agent', '--config', host.config], {
    stdio: ['ignore', logFd, logFd],
    detached: true,
    cwd: PROJECT_ROOT,
    env: { ...process.env, [FAULT_FILE_ENV]: faultFile(lab, name), ...env },
  });
  child.unref();
  host.pid = child.pid!;
  await writeJson(path.join(lab.dir, 'lab.json'), lab);
  const client = new AgentClient(labContext(lab).agents.find((a) => a.name === name)!, await loadIdentity(path.join(lab.dir, 'admin')), 2000);
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await client.call('GET', '/v1/health');
      return host.pid;
    } catch (err) {
      if (!alive(host.pid) || Date.now() > deadline) {
        const logText = await readFile(path.join(lab.dir, 'hosts', name, 'agent.log'), 'utf8').catch(() => '');
        throw new LabError(`the agent of ${name} did not come up: ${(err as Error).message}\n${logText.split('\n').slice(-8).join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Kills a host's agent (not its guests): for recovery tests and `ferry lab kill-agent`. */
/** The QEMU processes running guest `vm` on this machine, whichever lab host started them (their pids). */
export async function qemuPidsOf(vm: string): Promise<number[]> {
  return (await run('pgrep', ['-f', `qemu-system-x86_64 -name guest=${vm},`]).catch(() => '')).split('\n').filter(Boolean).map(Number);
}

export async function killAgent(lab: LabRecord, name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  const host = lab.hosts.find((h) => h.name === name);
  if (!host?.pid || !alive(host.pid)) return;
  process.kill(host.pid, signal);
  while (alive(host.pid)) await new Promise((r) => setTimeout(r, 50));
}

export async function labDown(dir = DEFAULT_LAB_DIR): Promise<string[]> {
  const lab = await readLab(dir);
  if (!lab) return [];
  const removed: string[] = [];
  for (const h of lab.hosts) {
    await killAgent(lab, h.name, 'SIGKILL');
    // Guests outlive a killed agent: stop the QEMUs it wrote down.
    const instances = path.join(dir, 'hosts', h.name, 'state', 'instances');
    for (const f of existsSync(instances) ? await readdir(instances) : []) {
      const { pid } = JSON.parse(await readFile(path.join(instances, f), 'utf8')) as { pid: number };
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
    // So do the replica servers of replicated volumes.
    const replicaServer = Number((await readFile(path.join(dir, 'hosts', h.name, 'state', 'replica-server', 'pid'), 'utf8').catch(() => '')).trim());
    if (replicaServer > 0 && alive(replicaServer)) process.kill(replicaServer, 'SIGKILL');
    if (alive(h.watchdogPid)) process.kill(h.watchdogPid!, 'SIGKILL');
  }
  for (const pid of lab.etcdPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  if (lab.sanNetns) {
    if (lab.storage?.includes('nfs')) await NfsServer.stop(path.join(dir, 'san', 'nfs'), lab.sanNetns);
    if (lab.storage?.includes('iscsi')) await IscsiServer.stop(path.join(dir, 'san', 'iscsi'), lab.sanNetns);
    if (lab.storage?.includes('rbd')) await CephCluster.stop(path.join(dir, 'san', 'ceph'), lab.sanNetns);
  }
  const namespaces = [...lab.hosts.map((h) => h.netns), lab.clientNetns, ...(lab.storeNetns ? [lab.storeNetns] : []), ...(lab.sanNetns ? [lab.sanNetns] : []), lab.switchNetns];
  for (const ns of namespaces) {
    if (await netnsExists(ns)) {
      await deleteNetns(ns);
      removed.push(ns);
    }
  }
  await unmountUnder(dir);
  await rm(dir, { recursive: true, force: true });
  return removed;
}

/** Unmounts every filesystem mounted inside the lab's directory (the fault campaign's small ones), deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const mounts = (await readFile('/proc/mounts', 'utf8')).split('\n').map((l) => l.split(' ')[1]).filter((m): m is string => !!m && m.startsWith(dir + '/'));
  for (const m of mounts.sort((a, b) => b.length - a.length)) await run('umount', ['-l', m]).catch(() => undefined);
}
