/**
 * Identities enforced (3-host etcd lab, one small VM shared by the tests), beyond what authz.test
 * tries with certificates alone:
 * - a host's store credentials (its etcd user, the password in its bundle, through the store client
 *   the agent builds) write only that host's records;
 * - a host's certificate acts only as that host on every host-to-host route (each route of an
 *   incoming migration, the HA manager's requests, the replica routes), the admin's on none of them;
 * - keys, passwords and sockets are private;
 * - no password, token, session, store password or private key shows in any log or store record.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { AgentClient } from '../../src/agent/client.ts';
import { ApiError } from '../../src/agent/errors.ts';
import { HA_KEYS } from '../../src/cluster/ha/records.ts';
import { KEYS } from '../../src/cluster/model.ts';
import { heldMarker } from '../../src/agent/faults.ts';
import { faultFile, injectFault } from '../../src/lab/lab.ts';
import { loadIdentity } from '../../src/cluster/pki.ts';
import { run } from '../../src/util/exec.ts';
import { agentLogs, labQemuPids, useLab } from '../helpers/lab.ts';
import { allRecords, storeAsHost, type StoreAnswer } from '../helpers/store-as-host.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request to a host's REST API through its unix socket. */
function restCall(socket: string, method: string, url: string, headers: Record<string, string> = {}, body?: unknown): Promise<{ status: number; headers: http.IncomingHttpHeaders; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: url, headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** Every file under `dir` (not the etcd members' data, not the pools' images), with its stat. */
async function filesUnder(dir: string): Promise<Array<{ file: string; mode: number; kind: 'file' | 'socket' | 'dir' }>> {
  const found: Array<{ file: string; mode: number; kind: 'file' | 'socket' | 'dir' }> = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (/^etcd\d$|^images$|^shared-images$|^replicas$/.test(entry.name)) continue;
    const mode = (await stat(file)).mode & 0o777;
    if (entry.isDirectory()) found.push({ file, mode, kind: 'dir' }, ...(await filesUnder(file)));
    else if (entry.isSocket()) found.push({ file, mode, kind: 'socket' });
    else if (entry.isFile()) found.push({ file, mode, kind: 'file' });
  }
  return found;
}

describe('identities enforced (3-host etcd lab)', () => {
  const suite = useLab('id', ['--store', 'etcd']);
  const cli = suite.cli;
  const password = 'Quorum-Lighthouse-Saffron-7';
  let ip: string;
  let boot: string;

  const client = async (certDir: string, host: string) => new AgentClient({ name: host, url: '', socket: path.join(suite.dir, 'hosts', host, 'agent.sock') }, await loadIdentity(certDir), 10_000);
  const asHost = (h: string, target: string) => client(path.join(suite.dir, 'hosts', h, 'cert'), target);
  const asAdmin = (target: string) => client(path.join(suite.dir, 'admin'), target);
  const forbidden = (message: RegExp) => (err: unknown) => {
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.status, 403, err.message);
    assert.match(err.message, message);
    return true;
  };
  const refusedByStore = (answer: StoreAnswer | undefined, what: string) => {
    assert.ok(answer && !answer.ok, `${what}: the store let it through`);
    assert.equal(answer.error, 'StorePermissionError', `${what}: ${answer.message}`);
    assert.match(answer.message, /the store refused .* to etcd user 'host-h3-[0-9a-f]{6}': etcdserver: permission denied/);
  };
  async function unchanged(owner: string) {
    assert.equal((await cli('vm', 'show', 'g1')).json.owner, owner);
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, 'the guest restarted');
    assert.equal((await labQemuPids(suite, 'g1')).length, 1, 'exactly one QEMU runs g1');
  }

  before(async () => {
    const created = await cli('vm', 'create', 'g1', '--memory', '128', '--host', 'h1');
    assert.equal(created.code, 0, created.stderr);
    ip = created.json.ip;
    boot = (await suite.probe.gamesrv(ip, 60_000)).boot;
  });

  it("a host's store credentials write only its own records: another host's record, lease, replica endpoint or guarded list is refused by etcd", async () => {
    const records = await allRecords(suite.lab, 'h3');
    const h1Record = records.find((r) => r.key === KEYS.host('h1'))!;
    const h3Record = records.find((r) => r.key === KEYS.host('h3'))!;
    const h3Guarded = records.find((r) => r.key === HA_KEYS.guarded('h3'))!;
    assert.ok(h1Record.lease && h3Record.lease && h3Guarded, 'h1 and h3 are registered under leases, h3 says what its watchdog guards');
    const answers = await storeAsHost(suite.lab, 'h3', [
      { op: 'put', key: KEYS.host('h1'), value: h1Record.value },
      { op: 'delete', key: KEYS.host('h1') },
      { op: 'revokeLease', lease: h1Record.lease },
      { op: 'put', key: KEYS.job('bound-to-h1'), value: '{}', lease: h1Record.lease },
      { op: 'put', key: KEYS.replicaEndpoint('r', 'v1', 'h1'), value: JSON.stringify({ host: 'h1', address: '10.80.0.13', port: 1, export: 'r/v1' }) },
      { op: 'put', key: HA_KEYS.guarded('h1'), value: JSON.stringify({ vms: ['g1'], at: new Date().toISOString() }) },
      // Its own: renewed, written, taken back.
      { op: 'keepAlive', lease: h3Record.lease },
      { op: 'put', key: KEYS.replicaEndpoint('r', 'v1', 'h3'), value: '{}' },
      { op: 'delete', key: KEYS.replicaEndpoint('r', 'v1', 'h3') },
      { op: 'put', key: HA_KEYS.guarded('h3'), value: h3Guarded.value },
    ]);
    ["h1's host record written", "h1's host record deleted", "h1's lease revoked", "a key bound to h1's lease", "a replica endpoint in h1's name", "h1's guarded list"].forEach((what, i) => refusedByStore(answers[i], what));
    assert.deepEqual(answers.slice(6).map((a) => (a.ok ? 'ok' : a.message)), ['ok', 'ok', 'ok', 'ok'], 'h3 writes its own records');
    const after = (await allRecords(suite.lab, 'h1')).find((r) => r.key === KEYS.host('h1'));
    assert.equal(after?.modRevision, h1Record.modRevision, "h1's record is untouched");
    await unchanged('h1');
  });

  it('a replicated volume is deleted on an etcd cluster: each replica host removes its own endpoint record (only its peer may touch its replica)', async () => {
    for (const h of ['h1', 'h2', 'h3']) await run('mkdir', ['-p', path.join(suite.dir, 'hosts', h, 'replicas')]);
    assert.equal((await cli('storage', 'add', 'r', '--type', 'replicated', '--path', path.join(suite.dir, 'hosts', '%h', 'replicas'))).code, 0);
    const created = await cli('volume', 'create', 'rv1', '--pool', 'r', '--size', '16M', '--host', 'h1', '--peer', 'h2');
    assert.equal(created.code, 0, created.stderr);
    // Where each replica host serves its replica (as it writes it while a VM uses the volume).
    for (const h of ['h1', 'h2'] as const) {
      const [put] = await storeAsHost(suite.lab, h, [{ op: 'put', key: KEYS.replicaEndpoint('r', 'rv1', h), value: JSON.stringify({ host: h, address: '10.80.0.1', port: 1, export: 'r/rv1' }) }]);
      assert.ok(put?.ok, put && !put.ok ? put.message : '');
    }
    await assert.rejects((await asHost('h3', 'h1')).call('DELETE', '/v1/replicas/r/rv1'), forbidden(/r\/rv1 is replicated on h1 and h2; host 'h3' may not change its replica here/));
    await assert.rejects((await asHost('h3', 'h1')).call('POST', '/v1/replicas/r/rv1', {}), forbidden(/host 'h3' may not change its replica here/));
    await assert.rejects((await asAdmin('h1')).call('DELETE', '/v1/replicas/r/rv1'), forbidden(/DELETE \/v1\/replicas\/:pool\/:name is for the cluster's hosts; the admin may not call it/));
    const deleted = await cli('volume', 'delete', 'rv1', '--pool', 'r');
    assert.equal(deleted.code, 0, deleted.stderr);
    const left = (await allRecords(suite.lab, 'h1')).map((r) => r.key).filter((k) => k.includes('rv1'));
    assert.deepEqual(left, [], 'no volume record, no endpoint record left');
    for (const h of ['h1', 'h2']) assert.deepEqual(await readdir(path.join(suite.dir, 'hosts', h, 'replicas')), [], `${h}'s replica is gone`);
  });

  it("a host's certificate answers only for itself on every host-to-host route; the admin's on none", async () => {
    // The HA manager's requests: only the host that holds the manager key.
    const { manager } = await (await asAdmin('h1')).call<{ manager: { host: string } | null }>('GET', '/v1/ha');
    const notManager = ['h1', 'h2', 'h3'].find((h) => h !== manager?.host)!;
    for (const verb of ['stop', 'start', 'release', 'migrate'])
      await assert.rejects((await asHost(notManager, 'h1')).call('POST', `/v1/ha/hosts/${verb}/g1`, verb === 'release' || verb === 'migrate' ? { to: 'h2' } : {}), forbidden(new RegExp(`host '${notManager}' is not the HA manager`)));
    await assert.rejects((await asHost(notManager, 'h2')).call('POST', '/v1/ha/hosts/recover/g1', { start: true }), forbidden(/is not the HA manager/));
    await assert.rejects((await asAdmin('h1')).call('POST', '/v1/ha/hosts/stop/g1', {}), forbidden(/POST \/v1\/ha\/hosts\/stop\/:vm is for the cluster's hosts; the admin may not call it/));
    await assert.rejects((await asAdmin('h2')).call('POST', '/v1/ha/hosts/recover/g1', { start: true }), forbidden(/is for the cluster's hosts; the admin may not call it/));

    // Every route of an incoming migration answers its source only, while the migration runs: held
    // at its switchover (the lab's fault point), the destination's incoming migration waits meanwhile.
    await injectFault(suite.lab, 'h1', 'before-ownership-swap', 'hold', 'g1');
    const held = heldMarker(faultFile(suite.lab, 'h1'));
    const migration = cli('vm', 'migrate', 'g1', '--to', 'h2');
    for (let i = 0; i < 300 && !existsSync(held); i++) await sleep(100);
    assert.ok(existsSync(held), 'the migration never reached its switchover');
    const id = (await (await asAdmin('h1')).call<{ migration?: { id: string } }>('GET', '/v1/cluster/vms/g1')).migration?.id;
    assert.ok(id, 'the migration is written down');
    const fencingToken = (await cli('vm', 'show', 'g1')).json.token as number;
    const routes: Array<['GET' | 'POST', string, unknown]> = [
      ['GET', '', undefined], ['POST', '/wait', { timeoutMs: 10 }], ['GET', '/running', undefined], ['POST', '/recover-postcopy', {}],
      ['POST', '/digest', {}], ['POST', '/resume', { token: fencingToken }], ['POST', '/finish', {}], ['POST', '/abort', {}],
    ];
    const [h3, admin] = [await asHost('h3', 'h2'), await asAdmin('h2')];
    const refusals = await Promise.all(
      routes.flatMap(([method, tail, body]) => [
        h3.call(method, `/v1/incoming/${id}${tail}`, body).then(() => `h3 ${tail}: answered`, (err: ApiError) => `${err.status} ${err.message}`),
        admin.call(method, `/v1/incoming/${id}${tail}`, body).then(() => `admin ${tail}: answered`, (err: ApiError) => `${err.status} ${err.message}`),
      ]),
    );
    for (const [i, refusal] of refusals.entries()) {
      const [method, tail] = routes[Math.floor(i / 2)]!;
      assert.match(refusal, i % 2 === 0 ? new RegExp(`^403 incoming migration ${id} belongs to a migration from 'h1'; host 'h3' may not act on it$`) : new RegExp(`^403 ${method} /v1/incoming/:id${tail} is for the cluster's hosts; the admin may not call it$`));
    }
    await rm(held);
    const result = await migration;
    assert.equal(result.code, 0, `the migration went on untouched: ${result.stderr}${result.stdout}\n${await agentLogs(suite, ['h1', 'h2'])}`);
    // A finished migration's record: only the admin reports a client's blackout into it.
    await assert.rejects((await asHost('h2', 'h1')).call('POST', `/v1/jobs/${result.json.job}/blackout`, { blackoutMs: 1, packetsLost: 0, packetsSent: 1 }), forbidden(/is for the admin; host 'h2' may not call it/));
    await unchanged('h2');
  });

  it('keys, passwords and sockets are private: 0600 files and sockets, 0700 directories for keys and QMP', async () => {
    const files = await filesUnder(suite.dir);
    const modeOf = (rel: string) => files.find((f) => f.file === path.join(suite.dir, rel))?.mode;
    const secretFiles: string[] = [];
    for (const f of files.filter((x) => x.kind === 'file')) {
      const text = (await stat(f.file)).size < 1 << 20 ? await readFile(f.file, 'utf8') : '';
      if (/key\.pem$|password$/.test(f.file) || text.includes('PRIVATE KEY')) secretFiles.push(f.file);
    }
    const expected = [
      'cluster/ca-key.pem', 'cluster/store-root-password', 'admin/key.pem', 'admin/store/key.pem',
      ...['h1', 'h2', 'h3'].flatMap((h) => [`hosts/${h}/cert/key.pem`, `hosts/${h}/cert/store-password`, `hosts/${h}/cert/store/key.pem`]),
      ...[1, 2, 3].map((i) => `etcd/tls${i}/key.pem`),
    ];
    for (const rel of expected) assert.ok(secretFiles.includes(path.join(suite.dir, rel)), `${rel} is among the files with a secret`);
    const loose = (await Promise.all(secretFiles.map(async (f) => [f, (await stat(f)).mode & 0o777] as const))).filter(([, mode]) => mode !== 0o600);
    assert.deepEqual(loose.map(([f, mode]) => `${path.relative(suite.dir, f)} ${mode.toString(8)}`), [], 'every file with a key or password is 0600');
    for (const h of ['h1', 'h2', 'h3']) {
      assert.equal(modeOf(`hosts/${h}/node.json`), 0o600);
      assert.equal(modeOf(`hosts/${h}/cert`), 0o700);
      for (const socket of ['agent.sock', 'api.sock', 'watchdog.sock']) assert.equal(modeOf(`hosts/${h}/${socket}`), 0o600, `hosts/${h}/${socket}`);
    }
    for (const dir of ['cluster', 'admin']) assert.equal(modeOf(dir), 0o700);
    // The running guest's directory: its QMP, serial and VNC sockets.
    const vmDirs = files.filter((f) => f.kind === 'dir' && /\/hosts\/h\d\/run\/g1-[^/]+$/.test(f.file));
    assert.equal(vmDirs.length, 1, `one directory of g1's QEMU: ${vmDirs.map((d) => d.file).join(', ')}`);
    assert.equal(vmDirs[0]!.mode, 0o700);
    const sockets = files.filter((f) => f.kind === 'socket' && f.file.startsWith(vmDirs[0]!.file + '/'));
    assert.ok(sockets.some((s) => s.file.endsWith('qmp.sock')), 'the QMP socket is there');
    for (const s of sockets) assert.equal(s.mode & 0o022, 0, `${path.basename(s.file)}: nobody else may connect (mode ${s.mode.toString(8)})`);
  });

  it('secrets appear in no log and no store record: a REST user logged in, a token used for a migration, a failed login', async () => {
    const pwFile = path.join(suite.dir, 'pw');
    await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
    assert.equal((await cli('user', 'add', 'carol', '--role', 'operator', '--password-file', pwFile)).code, 0);
    const made = await cli('token', 'create', '--user', 'carol', '--label', 'identity');
    assert.equal(made.code, 0, made.stderr);
    const token = made.json.token as string;
    const api = (h: string) => path.join(suite.dir, 'hosts', h, 'api.sock');
    const wrongPassword = 'Not-Carols-Password-42';
    assert.equal((await restCall(api('h2'), 'POST', '/api/v1/session', {}, { user: 'carol', password: wrongPassword })).status, 401);
    const login = await restCall(api('h2'), 'POST', '/api/v1/session', {}, { user: 'carol', password });
    assert.equal(login.status, 200);
    const session = /ferry_session=([A-Za-z0-9_-]+)/.exec(String(login.headers['set-cookie']))![1]!;
    assert.equal((await restCall(api('h2'), 'GET', '/api/v1/vms', { cookie: `ferry_session=${session}` })).status, 200);
    // A migration through a host that is not the VM's: the token goes to the VM's host with h3's certificate.
    const started = await restCall(api('h3'), 'POST', '/api/v1/vms/g1/migrate', { authorization: `Bearer ${token}` }, { to: 'h1' });
    assert.equal(started.status, 200, JSON.stringify(started.json));
    const jobId = (started.json['job'] as { id: string }).id;
    let state = 'running';
    for (let i = 0; i < 120 && state === 'running'; i++) {
      await sleep(500);
      state = ((await restCall(api('h3'), 'GET', `/api/v1/jobs/${jobId}`, { authorization: `Bearer ${token}` })).json['job'] as { state: string }).state;
    }
    assert.equal(state, 'succeeded');
    await unchanged('h1');

    const read = (rel: string) => readFile(path.join(suite.dir, rel), 'utf8');
    const keyBodies = await Promise.all(
      ['cluster/ca-key.pem', 'admin/key.pem', ...['h1', 'h2', 'h3'].flatMap((h) => [`hosts/${h}/cert/key.pem`, `hosts/${h}/cert/store/key.pem`])].map(async (rel) => (await read(rel)).split('\n')[1]!),
    );
    const secrets: Record<string, string> = {
      'the password': password,
      'the wrong password': wrongPassword,
      'the token': token,
      "the token's secret": token.split('_').at(-1)!,
      'the session id': session,
      "etcd's root password": (await read('cluster/store-root-password')).trim(),
      ...Object.fromEntries(await Promise.all(['h1', 'h2', 'h3'].map(async (h) => [`${h}'s store password`, (await read(`hosts/${h}/cert/store-password`)).trim()]))),
      ...Object.fromEntries(keyBodies.map((line, i) => [`private key ${i}`, line])),
      'a PEM private key': 'PRIVATE KEY',
    };
    const logs = (await filesUnder(suite.dir)).filter((f) => f.kind === 'file' && f.file.endsWith('.log')).map((f) => f.file);
    assert.ok(logs.some((f) => f.endsWith('h1/agent.log')) && logs.some((f) => f.endsWith('etcd.log')), `the logs: ${logs.join(', ')}`);
    const haystacks: Array<[string, string]> = [
      ...(await Promise.all(logs.map(async (f) => [path.relative(suite.dir, f), await readFile(f, 'utf8')] as [string, string]))),
      ...(await allRecords(suite.lab, 'h1')).map((r) => [`store ${r.key}`, `${r.key} ${r.value}`] as [string, string]),
    ];
    const found = haystacks.flatMap(([where, text]) => Object.entries(secrets).filter(([, secret]) => text.includes(secret)).map(([what]) => `${what} in ${where}`));
    assert.deepEqual(found, []);
    // Users keep only what proves a credential.
    const records = await allRecords(suite.lab, 'h1');
    const account = JSON.parse(records.find((r) => r.key === '/ferry/users/accounts/carol')!.value) as { passwordHash: string };
    assert.match(account.passwordHash, /^scrypt\$/);
    const tokenRecord = JSON.parse(records.find((r) => r.key.startsWith('/ferry/users/tokens/'))!.value) as { secretHash: string };
    assert.match(tokenRecord.secretHash, /^[0-9a-f]{64}$/);
    assert.ok(records.some((r) => r.key.startsWith('/ferry/jobs/') && r.value.includes('carol (operator, through h3)')), "the migration's job says who asked, by name");
  });
});
