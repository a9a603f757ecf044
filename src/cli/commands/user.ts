/**
 * ferry user | token | ui: the REST API's users and API tokens (made with the admin's certificate),
 * and a local door to a host's REST API.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { apiSocketPath, DEFAULT_API_PORT } from '../../api/server.ts';
import type { TokenRecord, UserRecord } from '../../cluster/users.ts';
import { Cli } from '../context.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { table } from '../format.ts';
import type { Command } from '../command.ts';

const USER_USAGE = `Usage:
  ferry user add NAME --role viewer|operator|admin [--password-file FILE]
      A user of the REST API and web UI (password: at least 12 characters, from FILE or standard input;
      kept as a scrypt hash). viewer reads; operator also migrates, cancels, drains; admin also manages users.
  ferry user list                  users and their API tokens
  ferry user remove NAME           the user, with their tokens and sessions
Every command takes --json.`;

export const userCommand: Command = {
  summary: "the REST API's users: add, list, remove",
  usage: USER_USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { role: { type: 'string' }, 'password-file': { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } } });
    const [verb, name] = positionals;
    const out = (human: string, doc: unknown) => console.log(values.json ? JSON.stringify(doc, null, 2) : human);
    if (verb === 'add') {
      if (!name || !values.role) throw new UsageError(USER_USAGE);
      const password = (values['password-file'] ? await readFile(values['password-file'], 'utf8') : await readStdin()).replace(/\r?\n$/, '');
      const agent = await (await Cli.load(values.context)).anyAgent();
      const { user } = await agent.call<{ user: Omit<UserRecord, 'passwordHash'> }>('POST', '/v1/users', { name, role: values.role, password });
      return out(`user ${user.name} added (${user.role}); a token for scripts: ferry token create --user ${user.name}`, { user });
    }
    if (verb === 'remove') {
      if (!name) throw new UsageError(USER_USAGE);
      const agent = await (await Cli.load(values.context)).anyAgent();
      return out(`user ${name} removed, with its tokens and sessions`, await agent.call('DELETE', `/v1/users/${encodeURIComponent(name)}`));
    }
    if (verb !== 'list') throw new UsageError(USER_USAGE);
    const agent = await (await Cli.load(values.context)).anyAgent();
    const doc = await agent.call<{ users: Array<Omit<UserRecord, 'passwordHash'>>; tokens: Array<Omit<TokenRecord, 'secretHash'>> }>('GET', '/v1/users');
    out(
      [
        table(['user', 'role', 'added', 'by'], doc.users.map((u) => [u.name, u.role, u.createdAt, u.createdBy])),
        '',
        table(['token', 'user', 'label', 'created'], doc.tokens.map((t) => [t.id, t.user, t.label || '-', t.createdAt])),
      ].join('\n'),
      doc,
    );
  },
};

const TOKEN_USAGE = `Usage:
  ferry token create --user NAME [--label TEXT]   an API token acting as NAME (with NAME's role); printed once
  ferry token revoke ID`;

export const tokenCommand: Command = {
  summary: 'API tokens for scripts: create, revoke',
  usage: TOKEN_USAGE,
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { user: { type: 'string' }, label: { type: 'string' }, json: { type: 'boolean' }, context: { type: 'string' } } });
    const [verb, id] = positionals;
    const agent = await (await Cli.load(values.context)).anyAgent();
    if (verb === 'create' && values.user) {
      const result = await agent.call<{ token: string; record: Omit<TokenRecord, 'secretHash'> }>('POST', '/v1/tokens', { user: values.user, ...(values.label ? { label: values.label } : {}) });
      if (values.json) return void console.log(JSON.stringify(result, null, 2));
      console.error(`token ${result.record.id} acts as ${result.record.user}; it is shown this once (send it as 'Authorization: Bearer TOKEN'):`);
      return void console.log(result.token);
    }
    if (verb === 'revoke' && id) return void console.log(values.json ? JSON.stringify(await agent.call('DELETE', `/v1/tokens/${encodeURIComponent(id)}`)) : `token ${(await agent.call<{ revoked: string }>('DELETE', `/v1/tokens/${encodeURIComponent(id)}`)).revoked} revoked`);
    throw new UsageError(TOKEN_USAGE);
  },
};

export const uiCommand: Command = {
  summary: "a host's REST API on localhost (its unix socket forwarded), for a browser or curl on this machine",
  usage: `Usage: ferry ui [--host HOST] [--port ${DEFAULT_API_PORT}]
  Listens on 127.0.0.1:PORT and forwards each connection to HOST's REST API (its unix socket on this
  machine: the lab's hosts, or the host you are on). Log in with a user (ferry user add), or send a token.`,
  async run(args) {
    const { values } = parseCommandLine({ args, options: { host: { type: 'string' }, port: { type: 'string' }, context: { type: 'string' } } });
    const cli = await Cli.load(values.context);
    const endpoint = values.host ? cli.context.agents.find((a) => a.name === values.host) : cli.context.agents.find((a) => a.socket);
    if (!endpoint?.socket) throw new UsageError(values.host ? `host '${values.host}' has no socket on this machine` : 'no host of this cluster has a socket on this machine: run ferry ui on a host');
    const socket = apiSocketPath({ socket: endpoint.socket, stateDir: '' });
    const port = Number(values.port ?? DEFAULT_API_PORT);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--port ${values.port}: a TCP port`);
    const server = net.createServer((client) => {
      const api = net.connect(socket);
      client.pipe(api).pipe(client);
      const close = () => (client.destroy(), api.destroy());
      client.on('error', close);
      api.on('error', close);
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', () => resolve()));
    console.log(`${endpoint.name}'s REST API on http://127.0.0.1:${port}/api/v1/ (OpenAPI: /api/v1/openapi.json, metrics: /metrics); Ctrl-C ends it`);
    await new Promise<void>((resolve) => process.once('SIGINT', () => (server.close(), resolve())));
    return 0;
  },
};

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) throw new UsageError('give the password in a file (--password-file FILE) or on standard input');
  let text = '';
  for await (const chunk of process.stdin) text += String(chunk);
  return text;
}
