/** ferry init and ferry join: the CA, the host certificates and configurations they write. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { issueCertificate } from '../../src/cluster/pki.ts';
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
    const plain = await ferry({}, 'init', '--dir', dir, '--name', 'prod', '--store', 'etcd:http://10.1.0.1:2379,https://10.1.0.2:2379');
    assert.equal(plain.code, 2, 'a store without TLS is refused');
    assert.match(plain.stderr, /http:\/\/10.1.0.1:2379 is not https: .* or pass --insecure-store/);
    assert.equal(existsSync(path.join(dir, 'cluster.json')), false, 'a refused init writes nothing');
    const insecure = path.join(dir, 'insecure');
    const allowed = await ferry({}, 'init', '--dir', insecure, '--store', 'etcd:http://10.1.0.1:2379', '--insecure-store');
    assert.equal(allowed.code, 0, allowed.stderr);
    const r = await ferry({}, 'init', '--dir', dir, '--name', 'prod', '--store', 'etcd:https://10.1.0.1:2379,https://10.1.0.2:2379', '--json');
    assert.equal(r.code, 0, r.stderr);
    const cluster = JSON.parse(await readFile(path.join(dir, 'cluster.json'), 'utf8'));
    assert.deepEqual(cluster.store, { kind: 'etcd', endpoints: ['https://10.1.0.1:2379', 'https://10.1.0.2:2379'], rbac: true }, 'a TLS etcd is marked for RBAC');
    assert.match(await run('openssl', ['x509', '-in', path.join(dir, 'admin', 'cert.pem'), '-noout', '-subject']), /OU\s*=\s*admin, CN\s*=\s*admin/, 'the admin certificate names its role');
    assert.equal((await stat(path.join(dir, 'ca-key.pem'))).mode & 0o077, 0, 'the CA key must be private');
    await run('openssl', ['verify', '-CAfile', path.join(dir, 'ca-cert.pem'), path.join(dir, 'admin', 'cert.pem')]);
  });

  it("join refuses a host it cannot give an etcd user (etcd not running yet), leaving no bundle", async () => {
    const out = path.join(dir, 'bundle-early');
    const r = await ferry({}, 'join', '--cluster-dir', dir, '--name', 'node6', '--address', '10.1.0.6', '--out', out);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /cannot set up host 'node6' in etcd \(.*\); etcd must run, with certificates of this cluster's CA, before hosts join/);
    assert.equal(existsSync(out), false, 'no half-made bundle');
  });

  it("join writes a bundle with that host's key and certificate (role host, its address), the CA certificate and its configuration — no other key", async () => {
    // A cluster whose store needs no users (SQLite): the bundle is what is checked here.
    const sq = path.join(dir, 'sqlite-cluster');
    assert.equal((await ferry({}, 'init', '--dir', sq, '--name', 'prod')).code, 0);
    const out = path.join(dir, 'bundle-node7');
    const r = await ferry({}, 'join', '--cluster-dir', sq, '--name', 'node7', '--address', '10.1.0.7', '--memory', '8192', '--out', out, '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.bundle, out);
    const node = JSON.parse(await readFile(path.join(out, 'node.json'), 'utf8'));
    assert.deepEqual({ address: node.address, memoryMiB: node.memoryMiB, certDir: node.certDir, clusterDir: node.clusterDir }, { address: '10.1.0.7', memoryMiB: 8192, certDir: '/etc/ferry/cert', clusterDir: '/etc/ferry/cluster' });
    const cert = path.join(out, 'cert', 'cert.pem');
    await run('openssl', ['verify', '-CAfile', path.join(sq, 'ca-cert.pem'), cert]);
    const text = await run('openssl', ['x509', '-in', cert, '-noout', '-text']);
    assert.match(text, /Subject: O\s*=\s*ferry, OU\s*=\s*host, CN\s*=\s*node7/);
    assert.match(text, /DNS:node7, IP Address:10.1.0.7/);
    assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
    for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'])
      assert.ok(existsSync(path.join(out, 'cert', f)), `${f} missing for QEMU's tls-creds-x509`);
    const files = (await run('find', [out, '-type', 'f'])).split('\n').filter(Boolean).map((f) => path.relative(out, f)).sort();
    assert.deepEqual(files.filter((f) => f.endsWith('key.pem')), ['cert/client-key.pem', 'cert/key.pem', 'cert/server-key.pem'], 'only the host\'s own key');
    assert.ok(files.includes('cluster/cluster.json') && files.includes('cluster/ca-cert.pem'));
    assert.equal((await stat(path.join(out, 'cert'))).mode & 0o077, 0, 'the key directory is private');
    assert.equal(existsSync(path.join(sq, 'hosts', 'node7')), false, 'no copy of the host key stays with the CA');
    const again = await ferry({}, 'join', '--cluster-dir', sq, '--name', 'node7', '--address', '10.1.0.7', '--out', out);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /exists already/);
    const badName = await ferry({}, 'join', '--cluster-dir', sq, '--name', 'Node,OU=admin', '--address', '10.1.0.8', '--out', path.join(dir, 'bad'));
    assert.equal(badName.code, 2);
    assert.match(badName.stderr, /a host name must start with a letter/);
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

  it('ferry bundles moves a cluster directory of the old layout (every host key in it) to one bundle per host, with fresh keys', async () => {
    const old = path.join(dir, 'old-layout');
    assert.equal((await ferry({}, 'init', '--dir', old, '--name', 'legacy')).code, 0);
    // The layout ferry join wrote before bundles: DIR/hosts/HOST/{cert/,node.json}.
    for (const [name, address] of [['n1', '10.2.0.1'], ['n2', '10.2.0.2']] as const) {
      await issueCertificate(old, path.join(old, 'hosts', name, 'cert'), { name, role: 'host', addresses: [address] });
      await writeFile(path.join(old, 'hosts', name, 'node.json'), JSON.stringify({ name, clusterDir: old, certDir: path.join(old, 'hosts', name, 'cert'), address, port: 7443, runDir: '/run/ferry', stateDir: '/var/lib/ferry', bridge: 'br5', memoryMiB: 2048, leaseTtlSeconds: 10, networks: { back: 'br9' } }));
    }
    const oldKey = await readFile(path.join(old, 'hosts', 'n1', 'cert', 'key.pem'), 'utf8');
    const out = path.join(dir, 'bundles-out');
    const r = await ferry({}, 'bundles', '--cluster-dir', old, '--out', out, '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json.bundles.map((b: { host: string }) => b.host), ['n1', 'n2']);
    const node = JSON.parse(await readFile(path.join(out, 'ferry-host-n1', 'node.json'), 'utf8'));
    assert.deepEqual([node.address, node.bridge, node.memoryMiB, node.networks, node.certDir], ['10.2.0.1', 'br5', 2048, { back: 'br9' }, '/etc/ferry/cert']);
    assert.notEqual(await readFile(path.join(out, 'ferry-host-n1', 'cert', 'key.pem'), 'utf8'), oldKey, 'a fresh key, not the copied one');
    assert.match(await run('openssl', ['x509', '-in', path.join(out, 'ferry-host-n2', 'cert', 'cert.pem'), '-noout', '-subject']), /OU\s*=\s*host, CN\s*=\s*n2/);
    assert.equal(existsSync(path.join(old, 'hosts')), false, 'no host key stays in the cluster directory');
    const again = await ferry({}, 'bundles', '--cluster-dir', old, '--out', out);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /holds no host keys/);
  });
});
