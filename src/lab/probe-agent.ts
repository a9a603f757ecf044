/**
 * The probe's UDP side. It runs inside a network namespace of the lab (started
 * with `ip netns exec`), because the guests' addresses exist only there. It
 * takes one JSON command per line on stdin and answers one JSON line on stdout.
 *
 *   {"id":1,"op":"request","host":"10.77.0.10","port":7778,"payload":"verify","timeoutMs":5000}
 *   {"id":2,"op":"stream-start","host":"10.77.0.10","port":7777,"hz":200}
 *   {"id":3,"op":"window"}        stats since the last window (or the start), then a new window
 *   {"id":4,"op":"stream-stop"}   stats of the last window, and stop
 *
 * A stream is the game client: a datagram every 1/hz s carrying a sequence
 * number; the guest's gamesrv echoes it with its tick counter. The longest gap
 * between two replies is what a player would feel. With "protocol":"quake3" the
 * datagrams are Quake 3 `getinfo p<seq>` queries to a real game server (the
 * sequence comes back as the challenge), sent in turn from the "sources"
 * addresses, since the server answers each address once a second at most.
 *
 *   {"id":5,"op":"quake3","host":"10.77.0.120","port":27960,"command":"getstatus"}
 */
import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import readline from 'node:readline';
import { oobPacket, parseReply, type Quake3Reply } from './quake3.ts';

interface Command {
  id: number;
  op: 'request' | 'stream-start' | 'window' | 'stream-stop' | 'quake3';
  host?: string;
  port?: number;
  payload?: string;
  timeoutMs?: number;
  hz?: number;
  protocol?: 'gamesrv' | 'quake3';
  sources?: string[];
  command?: string;
}

/** How a stream's datagrams are written and its replies read. */
interface StreamProtocol {
  payload(seq: number): Buffer;
  /** The sequence number a reply answers, and the server's tick and boot id where it says them. */
  parse(reply: Buffer): { seq: number; tick?: number; boot?: string } | undefined;
}

const GAMESRV: StreamProtocol = {
  payload: (seq) => Buffer.from(`p${seq}`),
  parse(reply) {
    const m = /tick=(\d+) boot=(\w+) echo=p(\d+)/.exec(reply.toString());
    return m ? { seq: Number(m[3]), tick: Number(m[1]), boot: m[2]! } : undefined;
  },
};

const QUAKE3: StreamProtocol = {
  payload: (seq) => oobPacket(`getinfo p${seq}`),
  parse(reply) {
    const r = parseReply(reply);
    const m = r?.kind === 'info' ? /^p(\d+)$/.exec(r.info['challenge'] ?? '') : null;
    return m ? { seq: Number(m[1]) } : undefined;
  },
};

export interface StreamWindow {
  sent: number;
  received: number;
  lost: number;
  /** Longest time between two replies in this window, in ms. */
  maxGapMs: number;
  /** Wall-clock time (ms since the epoch) of the reply before, and of the reply that ended, the longest gap: to set it against QEMU's event timestamps. */
  maxGapFrom: number | null;
  maxGapTo: number | null;
  /** Ticks of the first and last reply in this window. */
  firstTick: number | null;
  lastTick: number | null;
  /** gamesrv boot ids seen: more than one means the server restarted. */
  bootIds: string[];
  durationMs: number;
}

class Stream {
  /** One socket per source address (or one, unbound); datagrams go out from each in turn. */
  private readonly sockets: dgram.Socket[];
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private window = this.newWindow();
  private lastReplyAt: number | null = null;
  private lastReplyWall: number | null = null;
  /** seq of the first datagram of the window: replies to earlier ones are not counted in it. */
  private windowFirstSeq = 0;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly hz: number,
    private readonly protocol: StreamProtocol = GAMESRV,
    sources: string[] = [],
  ) {
    this.sockets = (sources.length ? sources : [undefined]).map(() => {
      const socket = dgram.createSocket('udp4');
      socket.on('message', (msg) => this.onReply(msg));
      return socket;
    });
    this.sources = sources;
  }

  private readonly sources: string[];

  async start(): Promise<void> {
    // Bound before the first send (a send would bind the socket to any address itself).
    await Promise.all(this.sources.map((address, i) => new Promise<void>((resolve, reject) => {
      this.sockets[i]!.once('error', reject);
      this.sockets[i]!.bind({ address }, () => resolve());
    })));
    const interval = 1000 / this.hz;
    const t0 = performance.now();
    const tick = () => {
      // Send as many datagrams as the clock says are due, so timer jitter does not lower the rate.
      const due = Math.floor((performance.now() - t0) / interval);
      while (this.seq < due) {
        const seq = this.seq++;
        this.sockets[seq % this.sockets.length]!.send(this.protocol.payload(seq), this.port, this.host);
      }
      this.timer = setTimeout(tick, Math.max(1, interval / 2));
    };
    tick();
  }

  takeWindow(): StreamWindow {
    const now = performance.now();
    const w = this.window;
    const openGap = this.lastReplyAt === null ? now - w.startedAt : now - this.lastReplyAt;
    const sent = this.seq - this.windowFirstSeq;
    const result: StreamWindow = {
      sent,
      received: w.received,
      lost: Math.max(0, sent - w.received),
      maxGapMs: Math.round(Math.max(w.maxGapMs, openGap) * 10) / 10,
      maxGapFrom: w.maxGapMs >= openGap ? w.maxGapFrom : this.lastReplyWall,
      maxGapTo: w.maxGapMs >= openGap ? w.maxGapTo : null,
      firstTick: w.firstTick,
      lastTick: w.lastTick,
      bootIds: [...w.bootIds],
      durationMs: Math.round(now - w.startedAt),
    };
    this.window = this.newWindow();
    this.windowFirstSeq = this.seq;
    return result;
  }

  stop(): StreamWindow {
    clearTimeout(this.timer);
    const result = this.takeWindow();
    for (const socket of this.sockets) socket.close();
    return result;
  }

  private onReply(packet: Buffer): void {
    const reply = this.protocol.parse(packet);
    if (!reply) return;
    const seq = reply.seq;
    if (seq < this.windowFirstSeq) return;
    const now = performance.now();
    const w = this.window;
    const since = this.lastReplyAt ?? w.startedAt;
    const gap = now - Math.max(since, w.startedAt);
    if (gap > w.maxGapMs) {
      w.maxGapMs = gap;
      w.maxGapFrom = this.lastReplyWall;
      w.maxGapTo = Date.now();
    }
    this.lastReplyAt = now;
    this.lastReplyWall = Date.now();
    w.received++;
    if (reply.tick !== undefined) {
      w.firstTick ??= reply.tick;
      w.lastTick = reply.tick;
    }
    if (reply.boot !== undefined) w.bootIds.add(reply.boot);
  }

  private newWindow() {
    return {
      startedAt: performance.now(),
      received: 0,
      maxGapMs: 0,
      maxGapFrom: null as number | null,
      maxGapTo: null as number | null,
      firstTick: null as number | null,
      lastTick: null as number | null,
      bootIds: new Set<string>(),
    };
  }
}

/** One request, resent every second until a reply or the timeout. */
function request(host: string, port: number, payload: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    const send = () => socket.send(payload, port, host);
    const resend = setInterval(send, 1000);
    const timer = setTimeout(() => finish(new Error(`no reply from ${host}:${port} to '${payload}' within ${timeoutMs} ms`)), timeoutMs);
    const finish = (result: string | Error) => {
      clearInterval(resend);
      clearTimeout(timer);
      socket.close();
      if (typeof result === 'string') resolve(result);
      else reject(result);
    };
    socket.on('message', (msg) => finish(msg.toString()));
    socket.on('error', (err) => finish(err));
    send();
  });
}

/** One out-of-band query, asked again every second until answered (the server drops what exceeds its rate). */
function quake3Query(host: string, port: number, command: string, timeoutMs: number): Promise<Quake3Reply> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    const send = () => socket.send(oobPacket(command), port, host);
    const resend = setInterval(send, 1000);
    const timer = setTimeout(() => finish(new Error(`no Quake 3 answer from ${host}:${port} to '${command}' within ${timeoutMs} ms`)), timeoutMs);
    let finished = false;
    const finish = (result: Quake3Reply | Error) => {
      if (finished) return;
      finished = true;
      clearInterval(resend);
      clearTimeout(timer);
      socket.close();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    socket.on('message', (msg) => {
      const reply = parseReply(msg);
      if (reply) finish(reply);
    });
    socket.on('error', (err) => finish(err));
    send();
  });
}

let stream: Stream | undefined;

async function handle(cmd: Command): Promise<Record<string, unknown>> {
  switch (cmd.op) {
    case 'request':
      return { reply: await request(cmd.host!, cmd.port!, cmd.payload ?? '', cmd.timeoutMs ?? 5000) };
    case 'quake3':
      return { reply: await quake3Query(cmd.host!, cmd.port!, cmd.command ?? 'getstatus', cmd.timeoutMs ?? 5000) };
    case 'stream-start':
      stream?.stop();
      stream = new Stream(cmd.host!, cmd.port!, cmd.hz ?? 200, cmd.protocol === 'quake3' ? QUAKE3 : GAMESRV, cmd.sources ?? []);
      await stream.start();
      return {};
    case 'window':
      if (!stream) throw new Error('no stream is running');
      return { window: stream.takeWindow() };
    case 'stream-stop': {
      if (!stream) throw new Error('no stream is running');
      const window = stream.stop();
      stream = undefined;
      return { window };
    }
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  let cmd: Command;
  try {
    cmd = JSON.parse(line) as Command;
  } catch {
    process.stdout.write(JSON.stringify({ id: null, ok: false, error: `not JSON: ${line.slice(0, 80)}` }) + '\n');
    return;
  }
  handle(cmd).then(
    (result) => process.stdout.write(JSON.stringify({ id: cmd.id, ok: true, ...result }) + '\n'),
    (err: Error) => process.stdout.write(JSON.stringify({ id: cmd.id, ok: false, error: err.message }) + '\n'),
  );
});
lines.on('close', () => process.exit(0));
process.stdout.write(JSON.stringify({ id: 0, ok: true, ready: true }) + '\n');
