/**
 * Where the lab lives, and the context file the CLI reads to reach a cluster (written by the lab and
 * by ferry init): small, so that every `ferry` command can read them without loading the lab.
 */
import type { AgentEndpoint } from '../agent/client.ts';

export const DEFAULT_LAB_DIR = process.env['FERRY_LAB_DIR'] ?? '/var/lib/ferry/lab';

/** What the CLI needs to reach a cluster: agents and the admin certificate. */
export interface CliContext {
  cluster: string;
  certDir: string;
  agents: AgentEndpoint[];
  /** The lab's client namespace, where probes run. */
  clientNetns?: string;
  /** The cluster directory (the CA's machine): where `ferry node remove` finds etcd's root password. */
  clusterDir?: string;
  /** The network namespace etcd is reached from, where it is not reached from here (the lab's store namespace). */
  storeNetns?: string;
}
