/** Runs the real `ferry` command, as a user would, against a test lab. */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { PROJECT_ROOT } from '../../src/qemu/guest-image.ts';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export function ferry(env: Record<string, string>, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), ...args], { env: { ...process.env, ...env }, cwd: PROJECT_ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('exit', (code) => {
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, stdout, stderr, json });
    });
  });
}

/** An interactive `ferry` command (a console): type into it, wait for what it prints, leave. */
export interface InteractiveCli {
  type(text: string): void;
  /** Resolves with everything printed so far once `pattern` shows up on stdout (or rejects after timeoutMs). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
  readonly stderr: string;
  /** Sends Ctrl-] and waits for the exit code. */
  leave(): Promise<number>;
  /** Sends SIGINT (Ctrl-C) and waits for the exit code. */
  interrupt(): Promise<number>;
  readonly exited: Promise<number>;
}

export function ferryInteractive(env: Record<string, string>, ...args: string[]): InteractiveCli {
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), ...args], { env: { ...process.env, ...env }, cwd: PROJECT_ROOT });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => (stdout += c));
  child.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? -1)));
  return {
    type: (text) => child.stdin.write(text),
    get stderr() {
      return stderr;
    },
    exited,
    async waitFor(pattern, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(stdout)) {
        if (Date.now() > deadline || child.exitCode !== null)
          throw new Error(`${pattern} did not show up within ${timeoutMs} ms${child.exitCode !== null ? ` (exited ${child.exitCode})` : ''}; stdout: ${stdout.slice(-800)}; stderr: ${stderr.slice(-800)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      return stdout;
    },
    async leave() {
      child.stdin.write(Buffer.from([0x1d]));
      return exited;
    },
    async interrupt() {
      child.kill('SIGINT');
      return exited;
    },
  };
}
