/**
 * etcd's RBAC for a ferry cluster. etcd maps a client certificate to a user only on gRPC; on the JSON
 * gateway ferry speaks that was switched off upstream (CVE-2018-16886), so each host is an etcd user
 * with a password of its own (in its bundle, next to its key), and the admin is etcd's root.
 *
 * A host may read everything, write its own records — its lease-bound host record, the endpoints
 * where it serves replicas — and the shared records any agent writes for a migration or for the
 * admin's requests (VMs and their fencing tokens, jobs, volumes, images, networks, pools,
 * membership). It may not write another host's record: no host can delete another's lease record
 * (which would let a recover boot a VM that still runs) or publish a replica endpoint in another
 * host's name (which would receive that host's disk writes).
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { KEYS } from '../model.ts';
import type { Identity } from '../pki.ts';
import { EtcdStore, StorePermissionError } from './etcd.ts';

export const ROOT_USER = 'root';
/** A host's etcd password, in its certificate directory (mode 0600, like its key). */
export const STORE_PASSWORD_FILE = 'store-password';
/** etcd's root password, in the cluster directory on the CA's machine only (never in a host's bundle). */
export const STORE_ROOT_PASSWORD_FILE = 'store-root-password';
export const hostUser = (host: string) => `host-${host}`;

/** The records every host's agent writes (key prefixes). */
const SHARED_PREFIXES = [
  KEYS.vms, KEYS.migrations, KEYS.jobs, '/ferry/guest-addresses/', KEYS.pools, KEYS.volumes, '/ferry/volume-locations/',
  '/ferry/replica-outdated/', KEYS.images, KEYS.networks, '/ferry/members/', KEYS.revokedAll,
];

interface Permission {
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
    { permType: 'READWRITE', key: KEYS.host(host), prefix: false },
    { permType: 'READWRITE', key: KEYS.replicaEndpointsOf(host), prefix: true },
  ];
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

  /** Makes (or remakes, with a new password) host `host`'s user and role. */
  async addHost(host: string, password: string): Promise<void> {
    const user = hostUser(host);
    await this.removeHost(host);
    await this.root.rpc('/v3/auth/role/add', { name: user });
    for (const p of hostPermissions(host))
      await this.root.rpc('/v3/auth/role/grant', { name: user, perm: { permType: p.permType, key: b64(p.key), ...(p.prefix ? { range_end: rangeEnd(p.key) } : {}) } });
    await this.root.rpc('/v3/auth/user/add', { name: user, password });
    await this.root.rpc('/v3/auth/user/grant', { user, role: user });
  }

  /** Removes host `host`'s user and role (ferry node remove); nothing if it has none. */
  async removeHost(host: string): Promise<void> {
    const user = hostUser(host);
    for (const [path, body] of [['/v3/auth/user/delete', { name: user }], ['/v3/auth/role/delete', { role: user }]] as const)
      await this.root.rpc(path, body).catch((err: Error) => {
        if (!/not found/.test(err.message)) throw err;
      });
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

/** Host `host`'s etcd user with a new password, written into its certificate directory `certDir`. */
export async function addStoreUser(rbac: EtcdRbac, host: string, certDir: string): Promise<void> {
  const password = newStorePassword();
  await rbac.addHost(host, password);
  await writeFile(path.join(certDir, STORE_PASSWORD_FILE), password + '\n', { mode: 0o600 });
}
