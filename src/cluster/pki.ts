/**
 * The cluster's certificates, made with the openssl command: one CA per
 * cluster (at `ferry init`), one certificate per node (at join) valid for both
 * ends of a TLS connection, and one for the administrator's CLI. Agents accept
 * only peers whose certificate this CA signed; QEMU's migration stream uses
 * the same files (tls-creds-x509).
 */
import { mkdir, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { run } from '../util/exec.ts';
import { NAME_PATTERN, NAME_RULE } from '../util/names.ts';

export interface Identity {
  /** PEM strings, ready for node:tls. */
  ca: string;
  cert: string;
  key: string;
}

export class PkiError extends Error {
  override name = 'PkiError';
}

const CURVE = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Creates the cluster CA in dir (ca-cert.pem, ca-key.pem) unless it exists. */
export async function createCa(dir: string, clusterName: string): Promise<void> {
  if (existsSync(path.join(dir, 'ca-cert.pem'))) return;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await openssl([
    'req', '-x509', ...CURVE,
    '-keyout', path.join(dir, 'ca-key.pem'), '-out', path.join(dir, 'ca-cert.pem'),
    '-days', '3650', '-subj', `/O=ferry/CN=ferry cluster CA ${clusterName}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/**
 * What a certificate of the cluster CA is for, written in its subject's OU: a host (its agent, and
 * its QEMUs' migration streams and NBD exports), the administrator's CLI, or a member of the etcd
 * store. Agents authorize every request by it (agent/authz.ts); a certificate without one is refused.
 */
export type Role = 'host' | 'admin' | 'store';

/**
 * How long a certificate is valid, by role: hosts and the admin half a year (renew a host by joining
 * it again: its agent revokes the old certificate when it starts with the new one), store members a
 * year. The CA itself ten.
 */
export const CERTIFICATE_DAYS: Record<Role, number> = { host: 180, admin: 180, store: 365 };

/** A certificate closer than this to its end is warned about (the agent's log, ferry node list). */
export const CERTIFICATE_WARNING_DAYS = 30;

/** A name that goes into a certificate's subject follows the one grammar of names (util/names.ts). */
function checkName(kind: string, name: string): string {
  if (!NAME_PATTERN.test(name)) throw new PkiError(`${kind} name '${name}' is not allowed: ${NAME_RULE}`);
  return name;
}

/**
 * The distinguished name QEMU's TLS authorization (`authz-simple`, `authz-list`) sees for the
 * certificate issued to host `name`: it lets a QEMU listener accept one host's certificate, not any
 * the cluster CA signed (the admin's and the etcd members' are signed by it too, with other roles).
 */
export function certificateIdentity(name: string, role: Role = 'host'): string {
  return `O=ferry,OU=${role},CN=${name}`;
}

/**
 * Issues a certificate for `name` in `role` into outDir: cert.pem, key.pem, ca-cert.pem, and the
 * file names QEMU's tls-creds-x509 looks for (server-/client-cert.pem, -key.pem).
 */
export async function issueCertificate(caDir: string, outDir: string, subject: { name: string; role: Role; addresses?: string[] }): Promise<void> {
  const { name, role, addresses = [] } = subject;
  checkName(role === 'host' ? 'host' : role === 'store' ? 'store member' : 'admin', name);
  if (!existsSync(path.join(caDir, 'ca-key.pem'))) throw new PkiError(`no cluster CA in ${caDir}; run 'ferry init' first`);
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const key = path.join(outDir, 'key.pem');
  const cert = path.join(outDir, 'cert.pem');
  const csr = path.join(outDir, 'req.csr');
  const ext = path.join(outDir, 'ext.cnf');
  const san = [`DNS:${name}`, ...addresses.map((a) => (/^[\d.]+$|:/.test(a) ? `IP:${a}` : `DNS:${a}`))].join(',');
  await writeFile(ext, `subjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n`);
  await openssl(['req', ...CURVE, '-keyout', key, '-out', csr, '-subj', `/O=ferry/OU=${role}/CN=${name}`]);
  await openssl([
    'x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'),
    '-CAcreateserial', '-days', String(CERTIFICATE_DAYS[role]), '-out', cert, '-extfile', ext,
  ]);
  await rm(csr);
  await rm(ext);
  await copyFile(path.join(caDir, 'ca-cert.pem'), path.join(outDir, 'ca-cert.pem'));
  for (const role of ['server', 'client']) {
    await copyFile(cert, path.join(outDir, `${role}-cert.pem`));
    await copyFile(key, path.join(outDir, `${role}-key.pem`));
  }
}

/**
 * A client certificate for etcd only, without a CN: with RBAC on, etcd's JSON gateway refuses any
 * client certificate that has one (its CN cannot become the etcd user across the gateway; etcd's
 * embed/serve.go), so the TLS connection carries this one and the etcd user logs in by password.
 * No agent accepts it (an agent needs a CN and a role). Written to `<certDir>/store/`.
 */
export async function issueStoreClientCertificate(caDir: string, certDir: string, owner: string): Promise<string> {
  const outDir = path.join(certDir, 'store');
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const key = path.join(outDir, 'key.pem');
  const csr = path.join(outDir, 'req.csr');
  const ext = path.join(outDir, 'ext.cnf');
  await writeFile(ext, 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n');
  checkName('store client', owner);
  await openssl(['req', ...CURVE, '-keyout', key, '-out', csr, '-subj', `/O=ferry/OU=store-client-${owner}`]);
  await openssl([
    'x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'),
    '-CAcreateserial', '-days', String(CERTIFICATE_DAYS.host), '-out', path.join(outDir, 'cert.pem'), '-extfile', ext,
  ]);
  await rm(csr);
  await rm(ext);
  await copyFile(path.join(caDir, 'ca-cert.pem'), path.join(outDir, 'ca-cert.pem'));
  return outDir;
}

export async function loadIdentity(dir: string): Promise<Identity> {
  try {
    const [ca, cert, key] = await Promise.all(['ca-cert.pem', 'cert.pem', 'key.pem'].map((f) => readFile(path.join(dir, f), 'utf8')));
    return { ca: ca!, cert: cert!, key: key! };
  } catch (err) {
    throw new PkiError(`cannot read the certificate in ${dir}: ${(err as Error).message}; issue one with 'ferry join' or 'ferry init'`);
  }
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args, { timeoutMs: 30_000 });
  } catch (err) {
    throw new PkiError(`openssl failed (install the Debian package openssl): ${(err as Error).message}`);
  }
}
