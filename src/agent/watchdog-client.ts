/**
 * The agent's side of the watchdog (watchdog.ts): after each lease renewal it pets the watchdog with
 * the deadline of the timing chain and the pids of the guests the HA manager would start elsewhere.
 * A watchdog that cannot be reached is said in the log at every change of state, not silently.
 */
import net from 'node:net';
import type { PetMessage } from './watchdog.ts';

export class WatchdogClient {
  private socket: net.Socket | undefined;
  private reachable: boolean | undefined;
  private readonly settled: Array<() => void> = [];

  /** Whether the last connection to the watchdog succeeded (what this host may claim it guards). */
  get connected(): boolean {
    return this.reachable === true;
  }

  constructor(
    private readonly socketPath: string,
    private readonly log: (line: string) => void,
  ) {}

  /** Until the first connection has succeeded or failed (at most `timeoutMs`): a new agent's first claim must not say "nothing guarded" only because it was not connected yet. */
  async firstAnswer(timeoutMs: number): Promise<void> {
    if (this.reachable !== undefined) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.settled.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  pet(deadlineMs: number, guests: number[]): void {
    const message: PetMessage = { pet: { deadlineMs, guests } };
    this.send(message);
  }

  /** The agent stops cleanly and guards nothing any more (it owns no HA guest). */
  disarm(): void {
    this.send({ disarm: true });
  }

  close(): void {
    this.socket?.end();
    this.socket = undefined;
  }

  private send(message: unknown): void {
    if (!this.socket || this.socket.destroyed) {
      const socket = net.createConnection(this.socketPath);
      socket.on('connect', () => this.state(true));
      socket.on('error', (err) => {
        this.state(false, err.message);
        socket.destroy();
      });
      this.socket = socket;
    }
    this.socket.write(`${JSON.stringify(message)}\n`);
  }

  private state(reachable: boolean, why?: string): void {
    for (const resolve of this.settled.splice(0)) resolve();
    if (this.reachable === reachable) return;
    this.reachable = reachable;
    this.log(reachable ? `watchdog at ${this.socketPath} reached` : `cannot reach the watchdog at ${this.socketPath} (${why}): HA guests here are guarded by self-fencing alone`);
  }
}
