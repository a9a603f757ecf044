/** ferry init and ferry join: the CA, the host certificates and configurations they write. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../../src/util/exec.ts';
import { ferry } from '../helpers/cli.ts';

describe('ferry init and ferry join', () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-init-'))));
  after(() => rm(dir, { recursive: true, force: true }));

  it('init makes a CA, the cluster configuration and an admin certificate', async () => {
    const r = await ferry({}, 'init', '--dir', dir, '--name', 'prod', '--store', 'etcd:http://10.1.0.1:2379,http://10.1.0.2:2379', '--json');
    assert.equal(r.code, 0, r.stderr);
    const cluster = JSON.parse(await readFile(path.join(dir, 'cluster.json'), 'utf8'));
    assert.deepEqual(cluster.store, { kind: 'etcd', endpoints: ['http://10.1.0.1:2379', 'http://10.1.0.2:2379'] });
    assert.equal((await stat(path.join(dir, 'ca-key.pem'))).mode & 0o077, 0, 'the CA key must be private');
    await run('openssl', ['verify', '-CAfile', path.join(dir, 'ca-cert.pem'), path.join(dir, 'admin', 'cert.pem')]);
  });

  it('join issues a host certificate naming its address, in the files QEMU expects', async () => {
    const r = await ferry({}, 'join', '--cluster-dir', dir, '--name', 'node7', '--address', '10.1.0.7', '--memory', '8192', '--json');
    assert.equal(r.code, 0, r.stderr);
    const node = r.json.node;
    assert.equal(node.address, '10.1.0.7');
    assert.equal(node.memoryMiB, 8192);
    const cert = path.join(node.certDir, 'cert.pem');
    await run('openssl', ['verify', '-CAfile', path.join(dir, 'ca-cert.pem'), cert]);
    const text = await run('openssl', ['x509', '-in', cert, '-noout', '-text']);
    assert.match(text, /DNS:node7, IP Address:10.1.0.7/);
    assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
    for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'])
      assert.ok(existsSync(path.join(node.certDir, f)), `${f} missing for QEMU's tls-creds-x509`);
  });

  it('refuses bad input with a message and exit code 2', async () => {
    const noDir = await ferry({}, 'init');
    assert.equal(noDir.code, 2);
    assert.match(noDir.stderr, /needs --dir/);
    const badStore = await ferry({}, 'init', '--dir', path.join(dir, 'x'), '--store', 'mysql:db');
    assert.equal(badStore.code, 2);
    assert.match(badStore.stderr, /--store 'mysql:db': use sqlite/);
    assert.equal(existsSync(path.join(dir, 'x')), false, 'a refused init must not write anything');
    const unknown = await ferry({}, 'frobnicate');
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  });
});
