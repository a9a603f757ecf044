/**
 * `ferry cert renew-admin`: the admin's certificate, renewed where the CA is. The new one is made
 * beside the old; the cluster is asked, with the new one, to revoke the old (so a cluster that
 * cannot be reached changes nothing); then the CLI's certificate directory is switched to the new.
 * Hosts renew by joining again (ferry join); their agents revoke their old certificate themselves.
 */
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { fingerprintOf } from '../../agent/revocation.ts';
import { issueCertificate, issueStoreClientCertificate, loadIdentity } from '../../cluster/pki.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry cert renew-admin [--cluster-dir DIR] [--json]
      a new admin certificate (from the CA in the cluster directory made by ferry init; default the
      context's), the old one revoked in the cluster — every agent refuses it within seconds — and the
      CLI switched to the new one. Nothing changes if the cluster cannot be reached.`;

export const certCommand: Command = {
  summary: "certificates: renew the admin's",
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { 'cluster-dir': { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } } });
    if (positionals[0] !== 'renew-admin') throw new UsageError(USAGE);
    const cli = await Cli.load(values.context);
    const clusterDir = values['cluster-dir'] ? path.resolve(values['cluster-dir']) : cli.context.clusterDir;
    if (!clusterDir || !existsSync(path.join(clusterDir, 'ca-key.pem'))) throw new UsageError(`renewing needs the cluster CA: give --cluster-dir DIR (the directory ferry init made; it holds ca-key.pem)`);
    const certDir = cli.context.certDir;
    const old = fingerprintOf(cli.identity.cert);
    const fresh = `${certDir}.new-${process.pid}`;
    try {
      await issueCertificate(clusterDir, fresh, { name: 'admin', role: 'admin' });
      // The admin's etcd certificate (where etcd runs with RBAC) is renewed with it.
      if (existsSync(path.join(certDir, 'store'))) await issueStoreClientCertificate(clusterDir, fresh, 'admin');
      const renewed = cli.withIdentity(await loadIdentity(fresh));
      await (await renewed.anyAgent()).call('POST', '/v1/cluster/certificates/revoke', { fingerprint: old, reason: 'renewed: ferry cert renew-admin' });
    } catch (err) {
      await rm(fresh, { recursive: true, force: true });
      throw err;
    }
    // The old one is revoked: the CLI's directory now holds the new one (the old is removed).
    const retired = `${certDir}.old-${process.pid}`;
    await rename(certDir, retired);
    await rename(fresh, certDir);
    await rm(retired, { recursive: true, force: true });
    const now = fingerprintOf((await loadIdentity(certDir)).cert);
    if (values.json) return void console.log(JSON.stringify({ revoked: old, certificate: now, certDir }));
    console.log(`the admin certificate is renewed (sha256 ${now}); the old one (sha256 ${old}) is revoked in the cluster`);
  },
};
