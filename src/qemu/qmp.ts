/**
 * A QMP client: greeting, capability negotiation, command ids, asynchronous
 * events, per-command timeouts, typed errors, and detection of a lost connection.
 *
 * QMP is line-delimited JSON over a unix socket. Responses carry the "id" we
 * sent; anything with an "event" key is asynchronous.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { QmpCommandError, QmpConnectionClosedError, QmpProtocolError, QmpTimeoutError } from './errors.ts';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** When QEMU emitted an event, in ms since the epoch (QEMU stamps events with the wall clock). */
export function eventTime(e: QmpEvent): number {
  return e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpConnectOptions {
  /** How long to keep retrying while the socket does not exist or refuses (QEMU starting). */
  connectTimeoutMs?: number;
  /** Default timeout of each command. */
  commandTimeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient extends EventEmitter {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedError: QmpConnectionClosedError | undefined;
  readonly closed: Promise<QmpConnectionClosedError>;
  private markClosed!: (error: QmpConnectionClosedError) => void;
  greeting!: QmpGreeting;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    private readonly commandTimeoutMs: number,
  ) {
    super();
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.onClose(err.message));
    socket.on('close', () => this.onClose('socket closed'));
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const deadline = Date.now() + connectTimeoutMs;
    let socket: net.Socket;
    for (;;) {
      try {
        socket = await openSocket(socketPath);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code === 'ENOENT' || code === 'ECONNREFUSED') && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 25));
          continue;
        }
        throw new QmpConnectionClosedError(socketPath, `cannot connect: ${(err as Error).message}`);
      }
    }
    const client = new QmpClient(socket, socketPath, options.commandTimeoutMs ?? 30_000);
    client.greeting = await client.readGreeting(Math.max(1000, deadline - Date.now()));
    await client.execute('qmp_capabilities');
    return client;
  }

  /** Runs a QMP command and returns its "return" value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.commandTimeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `ferry-${this.nextId++}`;
    const message = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(message + '\n');
    });
  }

  /** Resolves with the next event named `name` that satisfies `match`; rejects on timeout or close. */
  waitForEvent(name: string, timeoutMs: number, match: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && match(e)) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = (err: Error) => {
        cleanup();
        reject(err);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpTimeoutError(`wait for event ${name}`, timeoutMs));
      }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.socket.destroy();
    this.onClose('closed by ferry');
  }

  private readGreeting(timeoutMs: number): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.destroy();
        reject(new QmpProtocolError(`no QMP greeting on ${this.socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.once('greeting', (g: QmpGreeting) => {
        clearTimeout(timer);
        resolve(g);
      });
      this.once('close', (err: Error) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.emit('protocol-error', new QmpProtocolError(`unparsable QMP line from ${this.socketPath}: ${line.slice(0, 200)}`));
      return;
    }
    if ('QMP' in msg) {
      this.emit('greeting', msg['QMP'] as QmpGreeting);
    } else if ('event' in msg) {
      this.emit('event', msg as unknown as QmpEvent);
    } else if (typeof msg['id'] === 'string') {
      const pending = this.pending.get(msg['id']);
      if (!pending) return; // answer to a command that already timed out
      this.pending.delete(msg['id']);
      clearTimeout(pending.timer);
      if ('error' in msg) {
        const err = msg['error'] as { class?: string; desc?: string };
        pending.reject(new QmpCommandError(pending.command, err.class ?? 'GenericError', err.desc ?? 'no description'));
      } else {
        pending.resolve(msg['return']);
      }
    }
  }

  private onClose(detail: string): void {
    if (this.closedError) return;
    this.closedError = new QmpConnectionClosedError(this.socketPath, detail);
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(this.closedError);
    }
    this.pending.clear();
    this.socket.destroy();
    this.markClosed(this.closedError);
    this.emit('close', this.closedError);
  }
}

function openSocket(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
