/**
 * The REST API's users, tokens and sessions on a real SQLite store: a password checks out only as
 * given, a token or session stops working with its user (and never serves a new user of the same
 * name), nothing secret is stored in clear.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SqliteStore } from '../../src/cluster/store/sqlite.ts';
import { roleAllows, UserError, UserRecords } from '../../src/cluster/users.ts';

describe('REST API users', () => {
  let dir: string;
  let store: SqliteStore;
  let users: UserRecords;
  const password = 'correct horse battery staple';
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-users-'));
    store = new SqliteStore(path.join(dir, 'state.db'));
    users = new UserRecords(store);
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses bad names, roles and short passwords; keeps only a scrypt hash', async () => {
    await assert.rejects(users.add('a/b', 'viewer', password, 'admin'), UserError);
    await assert.rejects(users.add('bob', 'root' as never, password, 'admin'), /choose viewer, operator, admin/);
    await assert.rejects(users.add('bob', 'viewer', 'short', 'admin'), /at least 12 characters/);
    const alice = await users.add('alice', 'operator', password, 'admin');
    assert.match(alice.passwordHash, /^scrypt\$32768\$8\$1\$/);
    const raw = (await store.list('/ferry/users/')).map((kv) => kv.value).join('\n');
    assert.ok(!raw.includes(password));
    await assert.rejects(users.add('alice', 'admin', password, 'admin'), /exists already/);
  });

  it('a login and a token check out; wrong ones do not; the secret is never stored', async () => {
    assert.equal(await users.login('alice', 'wrong password!!'), undefined);
    assert.equal(await users.login('nobody', password), undefined);
    const login = await users.login('alice', password);
    assert.ok(login);
    assert.deepEqual(await users.bySession(login.sessionId), { name: 'alice', role: 'operator', via: 'session', csrfToken: login.session.csrfToken, expiresAt: login.session.expiresAt });
    const { token } = await users.createToken('alice', 'ci');
    assert.deepEqual(await users.byToken(token), { name: 'alice', role: 'operator', via: 'token' });
    assert.equal(await users.byToken(token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A')), undefined);
    const raw = (await store.list('/ferry/users/')).map((kv) => `${kv.key} ${kv.value}`).join('\n');
    assert.ok(!raw.includes(token.split('_')[2]!) && !raw.includes(login.sessionId), 'only hashes of the secrets');
  });

  it("a removed user's token and session stop working, also once a new user of the same name exists", async () => {
    const login = (await users.login('alice', password))!;
    const { token } = await users.createToken('alice', 'old');
    assert.equal(await users.remove('alice'), true);
    assert.equal(await users.byToken(token), undefined);
    assert.equal(await users.bySession(login.sessionId), undefined);
    await users.add('alice', 'admin', password, 'admin');
    assert.equal(await users.byToken(token), undefined, "the old alice's token is not the new alice's");
    assert.equal(await users.bySession(login.sessionId), undefined);
    await assert.rejects(users.createToken('ghost', ''), /no user 'ghost'/);
  });

  it('roles: admin ⊃ operator ⊃ viewer', () => {
    assert.equal(roleAllows('admin', 'operator'), true);
    assert.equal(roleAllows('operator', 'operator'), true);
    assert.equal(roleAllows('viewer', 'operator'), false);
    assert.equal(roleAllows('operator', 'admin'), false);
  });
});
