/**
 * etcd's RBAC for a ferry cluster. etcd maps a client certificate to a user only on gRPC; on the JSON
 * gateway ferry speaks that was switched off upstream (CVE-2018-16886), so each host is an etcd user
 * with a password of its own (in its bundle, next to its key), and the admin is etcd's root.
 *
 * A host may read everything, write its own records — its lease-bound host record, the endpoints
 * where it serves replicas, the list of VMs its watchdog guards — and the shared records any agent
 * writes for a migration or for the admin's requests (VMs and their fencing tokens, jobs, volumes,
 * images, networks, pools, membership, HA requests). It may not write another host's record: no host
 * can delete another's lease record (which would let a recover boot a VM that still runs), publish a
 * replica endpoint in another host's name (which would receive that host's disk writes), or say that
 * another host's watchdog guards a VM (which would let the HA manager start it while it still runs).
 *
 * etcd checks no permission on renewing a lease: a host that reads another's lease id (in its host
 * record) can keep that lease alive. That would delay a dead host's recovery, never make a VM run
 * twice: every host fences itself by its own clock, whatever its lease does.
 */
import { USER_PREFIX } from '../users.ts';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { HA_KEYS, HA_PREFIX } from '../ha/records.ts';
import { MOVE_KEYS } from '../moves/records.ts';
import { CLUSTER_CPU_KEY } from '../cpu.ts';
import { KEYS } from '../model.ts';
import type { Identity } from '../pki.ts';
import { EtcdStore, StorePermissionError } from './etcd.ts';
import { PROJECT_ROOT } from '../../util/project.ts';

export const ROOT_USER = 'root';
/** A host's etcd password, in its certificate directory (mode 0600, like its key). */
export const STORE_PASSWORD_FILE = 'store-password';
/** etcd's root password, in the cluster directory on the CA's machine only (never in a host's bundle). */
export const STORE_ROOT_PASSWORD_FILE = 'store-root-password';
/** The role every etcd user of host `host` has (one user per bundle: a renewal never cuts off the running agent). */
export const hostRole = (host: string) => `host-${host}`;
/** The file in a bundle's certificate directory that names its etcd user. */
export const STORE_USER_FILE = 'store-user';

/** The records every host's agent writes (key prefixes). */
const SHARED_PREFIXES = [
  KEYS.vms, KEYS.migrations, KEYS.jobs, '/ferry/guest-addresses/', KEYS.pools, KEYS.volumes, '/ferry/volume-locations/',
  '/ferry/replica-outdated/', KEYS.images, KEYS.networks, '/ferry/members/', KEYS.revokedAll,
  USER_PREFIX,
  // The HA records, but for the lists of guarded VMs: a host says only what its own watchdog guards
  // (the manager recovers a running VM only if its host's list names it).
  HA_KEYS.resources, HA_KEYS.statuses, HA_KEYS.rules, '/ferry/ha/fences/', MOVE_KEYS.jobs, MOVE_KEYS.maintenances,
];

/** Single HA keys every host's agent writes. */
const SHARED_KEYS = [HA_KEYS.manager, HA_KEYS.maintenance, CLUSTER_CPU_KEY];

/** Permissions that roles of earlier versions had and no longer have (taken away when a host joins again). */
const WITHDRAWN: Permission[] = [{ permType: 'READWRITE', key: HA_PREFIX, prefix: true }];

export interface Permission {
  permType: 'READ' | 'READWRITE';
  key: string;
  /** A whole prefix, or the one key. */
  prefix: boolean;
}

/** What host `host` may do in the store. */
export function hostPermissions(host: string): Permission[] {
  return [
    { permType: 'READ', key: '/ferry/', prefix: true },
    ...SHARED_PREFIXES.map((key) => ({ permType: 'READWRITE' as const, key, prefix: true })),
    ...SHARED_KEYS.map((key) => ({ permType: 'READWRITE' as const, key, prefix: false })),
    { permType: 'READWRITE', key: KEYS.host(host), prefix: false },
    { permType: 'READWRITE', key: KEYS.replicaEndpointsOf(host), prefix: true },
    { permType: 'READWRITE', key: HA_KEYS.guarded(host), prefix: false },
  ];
}

/** Whether these permissions let their holder write `key` (as etcd decides: any one permission suffices). */
export function mayWrite(permissions: Permission[], key: string): boolean {
  return permissions.some((p) => p.permType === 'READWRITE' && (p.prefix ? key.startsWith(p.key) : key === p.key));
}

/** A new random password for an etcd user (kept in a 0600 file by whoever needs it). */
export function newStorePassword(): string {
  return randomBytes(24).toString('base64url');
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

function rangeEnd(prefix: string): string {
  const bytes = Buffer.from(prefix, 'utf8');
  bytes[bytes.length - 1]!++;
  return bytes.toString('base64');
}

/** etcd's RBAC administration, as root. */
export class EtcdRbac {
  private constructor(private readonly root: EtcdStore) {}

  /**
   * Turns RBAC on (once: on a cluster that has it already this only checks the root password): the
   * root user with `rootPassword` and etcd's root role, then auth enable.
   */
  static async enable(endpoints: string[], identity: Identity, rootPassword: string): Promise<EtcdRbac> {
    const anonymous = new EtcdStore(endpoints, 10_000, identity);
    const enabled = await anonymous.rpc('/v3/auth/user/add', { name: ROOT_USER, password: rootPassword }).then(
      () => false,
      (err: Error) => {
        if (err instanceof StorePermissionError) return true; // auth is on already: root logs in below
        if (/user name already exists/.test(err.message)) return false;
        throw err;
      },
    );
    if (!enabled) {
      await anonymous.rpc('/v3/auth/user/grant', { user: ROOT_USER, role: 'root' });
      await anonymous.rpc('/v3/auth/enable', {});
    }
    await anonymous.close();
    const rbac = new EtcdRbac(new EtcdStore(endpoints, 10_000, identity, { user: ROOT_USER, password: rootPassword }));
    await rbac.root.rpc('/v3/auth/user/get', { name: ROOT_USER }); // the password works
    return rbac;
  }

  static open(endpoints: string[], identity: Identity, rootPassword: string): EtcdRbac {
    return new EtcdRbac(new EtcdStore(endpoints, 10_000, identity, { user: ROOT_USER, password: rootPassword }));
  }

  /**
   * A new etcd user for a bundle of host `host` (named after the host and a random suffix), with the
   * host's role, made or brought up to date first. Users of earlier bundles keep working: a host
   * joined again is not cut off from the store before it runs with its new bundle.
   */
  async addHost(host: string, password: string): Promise<string> {
    const role = hostRole(host);
    await this.root.rpc('/v3/auth/role/add', { name: role }).catch((err: Error) => {
      if (!/role name already exists/.test(err.message)) throw err;
    });
    // Granting a permission the role has already changes nothing.
    for (const p of hostPermissions(host))
      await this.root.rpc('/v3/auth/role/grant', { name: role, perm: { permType: p.permType, key: b64(p.key), ...(p.prefix ? { range_end: rangeEnd(p.key) } : {}) } });
    for (const p of WITHDRAWN)
      await this.root.rpc('/v3/auth/role/revoke', { role, key: b64(p.key), ...(p.prefix ? { range_end: rangeEnd(p.key) } : {}) }).catch((err: Error) => {
        if (!/permission is not granted/.test(err.message)) throw err;
      });
    const user = `${role}-${randomBytes(3).toString('hex')}`;
    await this.root.rpc('/v3/auth/user/add', { name: user, password });
    await this.root.rpc('/v3/auth/user/grant', { user, role });
    return user;
  }

  /** Removes every etcd user of host `host` and its role (ferry node remove); nothing if it has none. What was removed. */
  async removeHost(host: string): Promise<string[]> {
    const role = hostRole(host);
    const { users = [] } = await this.root.rpc<{ users?: string[] }>('/v3/auth/user/list', {});
    const mine = users.filter((u) => u === role || u.startsWith(`${role}-`));
    const gone = (err: Error) => {
      if (!/not found/.test(err.message)) throw err;
    };
    for (const user of mine) await this.root.rpc('/v3/auth/user/delete', { name: user }).catch(gone);
    await this.root.rpc('/v3/auth/role/delete', { role }).catch(gone);
    return mine;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/**
 * RBAC on for the cluster whose CA is in `clusterDir`: the root password is made once and kept there
 * (0600); a later call reads it and only checks it. `identity`: a certificate of the CA for etcd's TLS.
 */
export async function enableStoreRbac(clusterDir: string, endpoints: string[], identity: Identity): Promise<EtcdRbac> {
  const file = path.join(clusterDir, STORE_ROOT_PASSWORD_FILE);
  let password = await readFile(file, 'utf8').then((t) => t.trim(), () => undefined);
  if (!password) {
    password = newStorePassword();
    await writeFile(file, password + '\n', { mode: 0o600, flag: 'wx' });
  }
  return EtcdRbac.enable(endpoints, identity, password);
}

/** Opens RBAC administration with the root password kept in `clusterDir`. */
export async function openStoreRbac(clusterDir: string, endpoints: string[], identity: Identity): Promise<EtcdRbac> {
  const file = path.join(clusterDir, STORE_ROOT_PASSWORD_FILE);
  const password = await readFile(file, 'utf8').catch((err: Error) => {
    throw new Error(`etcd's root password is not at ${file} (${err.message}); run this where the cluster was made (ferry init)`);
  });
  return EtcdRbac.open(endpoints, identity, password.trim());
}

/** A new etcd user of host `host` with a new password, both written into its certificate directory `certDir`. */
export async function addStoreUser(rbac: EtcdRbac, host: string, certDir: string): Promise<string> {
  const password = newStorePassword();
  const user = await rbac.addHost(host, password);
  await writeFile(path.join(certDir, STORE_PASSWORD_FILE), password + '\n', { mode: 0o600 });
  await writeFile(path.join(certDir, STORE_USER_FILE), user + '\n', { mode: 0o600 });
  return user;
}

/** The command line of `ferry store-user ARGS…` (run in a namespace that reaches etcd, in the lab). */
export function storeUserArgv(...args: string[]): string[] {
  return [process.execPath, path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), 'store-user', ...args];
}
