/**
 * The admin's side of the REST API's users and tokens (`ferry user`, `ferry token`): the first admin
 * user can only come from here, with the admin's certificate. The records are cluster/users.ts's.
 */
import { ROLES, UserRecords, type Role } from '../cluster/users.ts';
import type { AgentContext } from './context.ts';
import { NotFoundError, RefusedError } from './errors.ts';
import type { Route } from './server.ts';
import { fields, NO_INPUT, NOTHING, oneOf, pathOnly, text as textUpTo, USER } from './request-schema.ts';

export function userRoutes(ctx: AgentContext): Route[] {
  const users = new UserRecords(ctx.state.store);
  const text = (v: unknown, what: string) => {
    if (typeof v !== 'string') throw new RefusedError(`${what} must be text`);
    return v;
  };
  return [
    { method: 'GET', pattern: '/v1/users', who: 'admin', input: NO_INPUT, handler: async () => ({ users: (await users.list()).map(({ passwordHash: _hash, ...u }) => u), tokens: (await users.tokens()).map(({ secretHash: _hash, ...t }) => t) }) },
    {
      method: 'POST',
      pattern: '/v1/users',
      who: 'admin',
      // The password's length is the records' to judge (users.ts): its refusal says how long it must be.
      input: { params: NOTHING, body: fields({ name: USER, role: oneOf(ROLES), password: textUpTo(1024) }, ['name', 'role', 'password']) },
      handler: async (_params, body, caller) => {
        const role = text(body['role'], 'role');
        if (!ROLES.includes(role as Role)) throw new RefusedError(`role '${role}': choose ${ROLES.join(', ')}`);
        const { passwordHash: _hash, ...user } = await users.add(text(body['name'], 'name'), role as Role, text(body['password'], 'password'), caller.name);
        ctx.log(`user '${user.name}' (${user.role}) added by ${caller.name}`);
        return { user };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/users/:name',
      who: 'admin',
      input: pathOnly({ name: USER }),
      handler: async ({ name }, _body, caller) => {
        if (!(await users.remove(name!))) throw new NotFoundError(`no user '${name}'; see 'ferry user list'`);
        ctx.log(`user '${name}' removed by ${caller.name} (its tokens and sessions too)`);
        return { removed: name };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/tokens',
      who: 'admin',
      input: { params: NOTHING, body: fields({ user: USER, label: textUpTo(1000) }, ['user']) },
      handler: async (_params, body, caller) => {
        const { token, record } = await users.createToken(text(body['user'], 'user'), body['label'] === undefined ? '' : text(body['label'], 'label'));
        const { secretHash: _hash, ...shown } = record;
        ctx.log(`API token ${record.id} of '${record.user}' created by ${caller.name}`);
        return { token, record: shown };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/tokens/:id',
      who: 'admin',
      input: pathOnly({ id: { type: 'string', pattern: '^[0-9a-f]{12}$', description: 'an API token id (12 hex digits: ferry user list)' } }),
      handler: async ({ id }) => {
        if (!(await users.revokeToken(id!))) throw new NotFoundError(`no API token '${id}'; see 'ferry user list'`);
        return { revoked: id };
      },
    },
  ];
}
