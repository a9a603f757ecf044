/**
 * The destination's half of copying disks: QEMU's NBD server exports the new,
 * empty volumes (writable, TLS between hosts) for the source's mirror jobs.
 * The server stops before the guest resumes here, so the guest is then the
 * only writer.
 */
import path from 'node:path';
import type { VmInstance } from '../qemu/instance.ts';
import type { NbdServerAddress, NbdTargets } from './sides.ts';
import { freePort } from '../util/net.ts';

export async function startNbdExports(
  instance: VmInstance,
  diskIds: readonly string[],
  where: { address?: string; tlsObject?: string; tlsHostname?: string; /** The authorization object: who may connect. */ tlsAuthz?: string },
): Promise<NbdTargets> {
  const qmp = instance.qmp;
  let server: NbdServerAddress;
  if (where.address) {
    server = { type: 'inet', host: where.address, port: await startOnFreePort(instance, where.address, where.tlsObject, where.tlsAuthz) };
  } else {
    server = { type: 'unix', path: path.join(instance.dir, 'nbd.sock') };
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: server.path } } });
  }
  for (const id of diskIds) {
    await qmp.execute('block-export-add', { type: 'nbd', id: `ferry-export-${id}`, 'node-name': id, name: id, writable: true });
  }
  return { server, disks: [...diskIds], ...(where.tlsObject && where.tlsHostname ? { tlsHostname: where.tlsHostname } : {}) };
}

/** QEMU 7.2 does not report the port of `nbd-server-start` on port 0: pick a free one, retry if taken meanwhile. */
async function startOnFreePort(instance: VmInstance, address: string, tlsObject: string | undefined, tlsAuthz: string | undefined): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(address);
    try {
      await instance.qmp.execute('nbd-server-start', {
        addr: { type: 'inet', data: { host: address, port: String(port) } },
        ...(tlsObject ? { 'tls-creds': tlsObject } : {}),
        ...(tlsObject && tlsAuthz ? { 'tls-authz': tlsAuthz } : {}),
      });
      return port;
    } catch (err) {
      if (attempt >= 5 || !/in use/i.test((err as Error).message)) throw err;
    }
  }
}

export async function stopNbdExports(instance: VmInstance): Promise<void> {
  await instance.qmp.execute('nbd-server-stop');
}
