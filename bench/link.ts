/** The link every local migration here uses, measured in the same run as the migrations: the physical bound's denominator. */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

/** Bytes per second one process pushes to another over a unix socket: the link every local migration here uses. */
export async function unixSocketThroughput(bytes: number): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-link-'));
  const sock = path.join(dir, 'link.sock');
  try {
    let received = 0;
    let t0 = 0;
    const done = new Promise<number>((resolve) => {
      const server = createServer((conn) => {
        t0 = performance.now();
        conn.on('data', (chunk) => (received += chunk.length));
        conn.on('end', () => {
          server.close();
          resolve(performance.now() - t0);
        });
      });
      server.listen(sock, () => {
        // A separate writer process, like QEMU on the other side; dd streams zero-filled blocks without compression.
        spawn('sh', ['-c', `dd if=/dev/zero bs=1M count=${bytes / 2 ** 20} status=none | ${process.execPath} -e "const s=require('net').connect('${sock}');process.stdin.pipe(s)"`], { stdio: 'ignore' });
      });
    });
    const elapsedMs = await done;
    if (received !== bytes) throw new Error(`link measurement: received ${received} of ${bytes} bytes`);
    return bytes / (elapsedMs / 1000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

