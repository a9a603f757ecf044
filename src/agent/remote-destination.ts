/** The destination side of a migration, run by the destination host's agent and driven over its API. */
import type { DestinationSide, DestinationTimes, DiskNeed, MigrationCapabilities, PreparedDestination } from '../migration/sides.ts';
import type { QemuBuild } from '../qemu/host-probe.ts';
import type { Accel, VmSpec } from '../qemu/spec.ts';
import { AgentUnreachableError, type AgentClient } from './client.ts';

export interface IncomingRequest {
  migrationId: string;
  source: string;
  spec: VmSpec;
  accel: Accel;
  /** The VM's fencing token as the source saw it at begin. */
  token: number;
  capabilities: MigrationCapabilities;
  /** What each source disk holds, for the destination's volumes. */
  disks: DiskNeed[];
}

export type IncomingState = 'preparing' | 'listening' | 'loaded' | 'postcopy' | 'running' | 'lost' | 'aborted';

export interface IncomingStatus {
  state: IncomingState;
  /** Every page has arrived (for post-copy this comes after the guest already runs here). */
  completed: boolean;
}

export class RemoteDestination implements DestinationSide {
  readonly lost: Promise<string>;
  private reportLost!: (detail: string) => void;
  private watching: NodeJS.Timeout | undefined;
  /** Set by the switchover hook: the token that makes the destination the owner. */
  ownerToken: number | undefined;

  constructor(
    private readonly agent: AgentClient,
    readonly spec: VmSpec,
    private readonly request: Omit<IncomingRequest, 'capabilities' | 'spec' | 'disks'>,
  ) {
    this.lost = new Promise((resolve) => (this.reportLost = resolve));
  }

  private get base(): string {
    return `/v1/incoming/${this.request.migrationId}`;
  }

  async qemu(): Promise<QemuBuild> {
    return (await this.agent.call<{ qemu: QemuBuild }>('GET', '/v1/host/qemu', undefined, 30_000)).qemu;
  }

  async checkResources(needs: DiskNeed[]): Promise<string[]> {
    return (await this.agent.call<{ problems: string[] }>('POST', '/v1/incoming/check', { spec: this.spec, disks: needs }, 30_000)).problems;
  }

  async prepare(capabilities: MigrationCapabilities, needs: DiskNeed[]): Promise<PreparedDestination> {
    const prepared = await this.agent.call<PreparedDestination>('POST', '/v1/incoming', { ...this.request, spec: this.spec, capabilities, disks: needs }, 120_000);
    this.watch();
    return prepared;
  }

  incomingComplete(timeoutMs: number): Promise<void> {
    return this.waitFor((s) => s.completed, timeoutMs);
  }

  postcopyReady(): Promise<void> {
    // Once the stream has completed (or loaded in pre-copy) post-copy can no longer happen: stop asking.
    return this.waitFor((s) => s.state === 'postcopy', 24 * 3600_000, (s) => s.completed || s.state === 'loaded' || s.state === 'running');
  }

  private async waitFor(done: (s: IncomingStatus) => boolean, timeoutMs: number, unreachable: (s: IncomingStatus) => boolean = () => false): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the destination did not finish loading within ${timeoutMs} ms`);
      const status = await this.agent.call<IncomingStatus>('POST', `${this.base}/wait`, { timeoutMs: Math.min(left, 10_000) }, Math.min(left, 10_000) + 5_000);
      if (done(status)) return;
      if (unreachable(status)) return new Promise<void>(() => undefined);
      if (status.state === 'lost' || status.state === 'aborted') throw new Error(`the destination is ${status.state}`);
    }
  }

  async recoverPostcopy(): Promise<string> {
    return (await this.agent.call<{ uri: string }>('POST', `${this.base}/recover-postcopy`, {}, 30_000)).uri;
  }

  async memoryDigest(): Promise<string[]> {
    return (await this.agent.call<{ digest: string[] }>('POST', `${this.base}/digest`, {}, 180_000)).digest;
  }

  async resume(): Promise<void> {
    await this.agent.call('POST', `${this.base}/resume`, { token: this.ownerToken });
  }

  async isRunning(): Promise<boolean> {
    return (await this.agent.call<{ running: boolean }>('GET', `${this.base}/running`, undefined, 5000)).running;
  }

  async finish(): Promise<DestinationTimes> {
    this.unwatch();
    const { times } = await this.agent.call<{ times?: DestinationTimes }>('POST', `${this.base}/finish`, {});
    return times ?? { loadedAt: null, resumedAt: null };
  }

  /** Rejects when the destination agent cannot confirm the removal (the engine decides what that means). */
  async abort(): Promise<void> {
    this.unwatch();
    await this.agent.call('POST', `${this.base}/abort`, {}, 30_000);
  }

  /** Polls the destination: its QEMU dying or its agent going silent is a lost destination. */
  private watch(): void {
    let misses = 0;
    this.watching = setInterval(() => {
      this.agent
        .call<{ state: IncomingState }>('GET', this.base, undefined, 2000)
        .then(({ state }) => {
          misses = 0;
          if (state === 'lost') this.reportLost('its QEMU exited');
        })
        .catch((err: Error) => {
          if (err instanceof AgentUnreachableError ? ++misses >= 3 : true) this.reportLost(`its agent: ${err.message}`);
        });
    }, 500);
  }

  private unwatch(): void {
    clearInterval(this.watching);
  }
}
