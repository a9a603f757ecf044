/** How the CLI finds its cluster: a context file naming the agents and the admin certificate. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { AgentClient, AgentUnreachableError } from '../agent/client.ts';
import { readJson } from '../util/json-file.ts';
import type { OwnedVm } from '../cluster/model.ts';
import { loadIdentity, type Identity } from '../cluster/pki.ts';
import { DEFAULT_LAB_DIR, type CliContext } from '../lab/defaults.ts';
import { UsageError } from './errors.ts';

export class Cli {
  private constructor(readonly context: CliContext, readonly identity: Identity) {}

  static async load(explicit?: string): Promise<Cli> {
    const file = explicit ?? process.env['FERRY_CONTEXT'] ?? path.join(DEFAULT_LAB_DIR, 'context.json');
    if (!existsSync(file)) throw new UsageError(`no cluster to talk to (${file} does not exist): run 'ferry lab up', or 'ferry init', or set FERRY_CONTEXT`);
    const context = await readJson<CliContext>(file, 'CLI context');
    return new Cli(context, await loadIdentity(context.certDir));
  }

  /** The same cluster, with another certificate (a renewed admin's). */
  withIdentity(identity: Identity): Cli {
    return new Cli(this.context, identity);
  }

  agent(host: string): AgentClient {
    const endpoint = this.context.agents.find((a) => a.name === host);
    if (!endpoint) throw new UsageError(`unknown host '${host}'; hosts: ${this.context.agents.map((a) => a.name).join(', ')}`);
    // A socket, when the context names one, is the only way used: lab addresses exist only inside
    // the lab's namespaces, and must never be tried from this one.
    return new AgentClient(endpoint, this.identity);
  }

  /** An agent that answers and reaches the store; `except`: not that host's (the one being removed, say). */
  async anyAgent(except?: string): Promise<AgentClient> {
    const errors: string[] = [];
    let cutOff: AgentClient | undefined;
    for (const a of this.context.agents.filter((agent) => agent.name !== except)) {
      const client = this.agent(a.name);
      try {
        const health = await client.call<{ store?: boolean }>('GET', '/v1/health', undefined, 3000);
        if (health.store !== false) return client;
        cutOff ??= client;
        errors.push(`${a.name}: cannot reach the cluster's store`);
      } catch (err) {
        if (!(err instanceof AgentUnreachableError)) throw err;
        errors.push(err.message);
      }
    }
    if (cutOff) return cutOff;
    throw new AgentUnreachableError(`no agent of the cluster answers:\n  ${errors.join('\n  ')}`);
  }

  async vm(name: string): Promise<OwnedVm> {
    const { vm } = await (await this.anyAgent()).call<{ vm: OwnedVm }>('GET', `/v1/cluster/vms/${encodeURIComponent(name)}`);
    return vm;
  }
}
