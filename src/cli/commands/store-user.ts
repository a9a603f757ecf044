/**
 * `ferry store-user enable|add|remove`: etcd's users for a cluster whose store runs with RBAC
 * (cluster/store/etcd-auth.ts), run where etcd is reached with the cluster directory at hand.
 * `ferry join` and `ferry node remove` do this themselves; the lab runs it inside its store's
 * namespace (etcd is reached only there).
 */
import path from 'node:path';
import { loadClusterConfig } from '../../agent/config.ts';
import { loadIdentity } from '../../cluster/pki.ts';
import { addStoreUser, enableStoreRbac, hostRole, openStoreRbac } from '../../cluster/store/etcd-auth.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import type { Command } from '../command.ts';

const USAGE = `Usage:
  ferry store-user enable --cluster-dir DIR --admin-dir DIR          RBAC on (root's password kept in the cluster directory)
  ferry store-user add HOST --cluster-dir DIR --admin-dir DIR --cert-dir DIR   the host's user; its password into its cert dir
  ferry store-user remove HOST --cluster-dir DIR --admin-dir DIR    the host's user goes (it cannot write the store any more)`;

export const storeUserCommand: Command = {
  summary: "etcd's users (RBAC): what ferry join and ferry node remove do, by hand",
  usage: USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { 'cluster-dir': { type: 'string' }, 'admin-dir': { type: 'string' }, 'cert-dir': { type: 'string' } } });
    const [verb, host] = positionals;
    const clusterDir = values['cluster-dir'] && path.resolve(values['cluster-dir']);
    if (!clusterDir || !values['admin-dir']) throw new UsageError(USAGE);
    const cluster = await loadClusterConfig(clusterDir);
    if (cluster.store.kind !== 'etcd' || !cluster.store.rbac) throw new UsageError(`the cluster in ${clusterDir} does not run etcd with RBAC`);
    // The admin's CN-less store certificate: etcd's gateway refuses a client certificate with a CN once RBAC is on.
    const identity = await loadIdentity(path.join(path.resolve(values['admin-dir']), 'store'));
    if (verb === 'enable') return void (await (await enableStoreRbac(clusterDir, cluster.store.endpoints, identity)).close());
    if (!host || (verb !== 'add' && verb !== 'remove')) throw new UsageError(USAGE);
    const rbac = await openStoreRbac(clusterDir, cluster.store.endpoints, identity);
    try {
      if (verb === 'add') {
        if (!values['cert-dir']) throw new UsageError(USAGE);
        return void console.log(`etcd user ${await addStoreUser(rbac, host, path.resolve(values['cert-dir']))} made`);
      }
      const removed = await rbac.removeHost(host);
      console.log(`its etcd users (${removed.join(', ') || 'none'}) and role ${hostRole(host)} are removed: it cannot write the store any more`);
    } finally {
      await rbac.close();
    }
  },
};
