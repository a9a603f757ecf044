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
 * between two replies is what a player would feel.
 */
import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import readline from 'node:readline';

interface Command {
  id: number;
  op: 'request' | 'stream-start' | 'window' | 'stream-stop';
  host?: string;
  port?: number;
  payload?: string;
  timeoutMs?: number;
  hz?: number;
}

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
  private readonly socket = dgram.createSocket('udp4');
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private window = this.newWindow();
  private lastReplyAt: number | null = null;
  private lastReplyWall: number | null = null;
  /** seq of the first datagram of the window: replies to earlier ones are not counted in it. */
  private windowFirstSeq = 0;

  constructor(private readonly host: string, private readonly port: number, private readonly hz: number) {
    this.socket.on('message', (msg) => this.onReply(msg.toString()));
  }

  start(): void {
    const interval = 1000 / this.hz;
    const t0 = performance.now();
    const tick = () => {
      // Send as many datagrams as the clock says are due, so timer jitter does not lower the rate.
      const due = Math.floor((performance.now() - t0) / interval);
      while (this.seq < due) this.socket.send(`p${this.seq++}`, this.port, this.host);
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
    this.socket.close();
    return result;
  }

  private onReply(text: string): void {
    const m = /tick=(\d+) boot=(\w+) echo=p(\d+)/.exec(text);
    if (!m) return;
    const seq = Number(m[3]);
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
    const tick = Number(m[1]);
    w.firstTick ??= tick;
    w.lastTick = tick;
    w.bootIds.add(m[2]!);
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

let stream: Stream | undefined;

async function handle(cmd: Command): Promise<Record<string, unknown>> {
  switch (cmd.op) {
    case 'request':
      return { reply: await request(cmd.host!, cmd.port!, cmd.payload ?? '', cmd.timeoutMs ?? 5000) };
    case 'stream-start':
      stream?.stop();
      stream = new Stream(cmd.host!, cmd.port!, cmd.hz ?? 200);
      stream.start();
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
