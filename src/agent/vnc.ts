/**
 * A VM's VNC display, from anywhere: a viewer (the web UI's noVNC, `ferry vm vnc`) opens a websocket
 * to the VM's agent (mutual TLS, admin only), and the agent relays its binary messages to the VNC
 * socket QEMU serves in the VM's private directory. QEMU shares its display among viewers, so does
 * the relay. When the VM moves, its old QEMU goes and the websocket closes with 1012 ("service
 * restart"): the viewer asks again, and reaches the new host.
 */
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream, type WebSocket } from 'ws';
import { UpgradeRefusedError, connectQemuSocket } from './console.ts';
import type { LocalRuntime } from './runtime.ts';

/** A websocket message is at most this big (a VNC client sends small messages; framebuffer updates flow the other way). */
const MAX_MESSAGE_BYTES = 1024 * 1024;
/** Viewers of one VM at a time. */
const MAX_VIEWERS = 8;

/** Close codes a viewer can act on. */
export const VNC_CLOSE = { vmGone: 1012, displayUnreachable: 1011 } as const;

export class VncRelay {
  private readonly server = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: MAX_MESSAGE_BYTES,
    // noVNC asks for the 'binary' subprotocol; a viewer that names none gets binary frames too.
    handleProtocols: (protocols) => (protocols.has('binary') ? 'binary' : false),
  });
  private readonly viewers = new Map<string, number>();

  constructor(private readonly runtime: LocalRuntime, private readonly log: (line: string) => void) {}

  /** Upgrades the request to a websocket relayed to the VM's display; throws UpgradeRefusedError before answering 101. */
  async attach(vm: string, req: IncomingMessage, socket: Duplex, head: Buffer, who: string): Promise<void> {
    const instance = this.runtime.get(vm);
    if (!instance) throw new UpgradeRefusedError(404, `VM '${vm}' is not running on this host`);
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || !req.headers['sec-websocket-key'] || req.headers['sec-websocket-version'] !== '13')
      throw new UpgradeRefusedError(400, 'the VNC display is a websocket (RFC 6455, version 13): send Upgrade: websocket with Sec-WebSocket-Key');
    const count = this.viewers.get(vm) ?? 0;
    if (count >= MAX_VIEWERS) throw new UpgradeRefusedError(429, `'${vm}' has ${count} VNC viewers already; close one`);
    this.viewers.set(vm, count + 1);
    let display: net.Socket;
    try {
      display = await connectQemuSocket(instance.vncSocket, `the VNC display of '${vm}'`);
    } catch (err) {
      this.release(vm);
      throw err;
    }
    // A viewer that leaves before the upgrade completes gives back its slot and the display's socket.
    let upgraded = false;
    socket.once('close', () => {
      if (upgraded) return;
      this.release(vm);
      display.destroy();
    });
    this.server.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      upgraded = true;
      this.log(`VNC display of ${vm} opened by ${who}`);
      // A stream over the websocket: pipe() carries the backpressure both ways (a slow viewer slows the display, not the agent's memory).
      const stream = createWebSocketStream(ws);
      let closed = false;
      const close = (code: number, reason: string) => {
        if (closed) return;
        closed = true;
        this.release(vm);
        display.destroy();
        if (ws.readyState === ws.OPEN) ws.close(code, reason);
        else ws.terminate();
      };
      stream.on('error', () => close(1000, ''));
      stream.on('close', () => close(1000, ''));
      display.on('error', () => close(VNC_CLOSE.displayUnreachable, 'the display failed'));
      display.on('close', () => close(VNC_CLOSE.vmGone, `'${vm}' left this host (stopped or migrated): connect again`));
      stream.pipe(display);
      // Not ended by the display's end: the close code (1012) must tell the viewer why, not a plain 1000.
      display.pipe(stream, { end: false });
    });
  }

  private release(vm: string): void {
    const left = (this.viewers.get(vm) ?? 1) - 1;
    if (left > 0) this.viewers.set(vm, left);
    else this.viewers.delete(vm);
  }
}
