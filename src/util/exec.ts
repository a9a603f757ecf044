import { execFile } from 'node:child_process';

export class CommandFailedError extends Error {
  override name = 'CommandFailedError';
  constructor(readonly command: string[], readonly exitCode: number | null, readonly stderr: string) {
    super(`'${command.join(' ')}' failed (exit ${exitCode}): ${stderr.trim() || 'no error output'}`);
  }
}

/**
 * Runs a program (no shell) and returns its stdout; throws CommandFailedError with its stderr.
 * `env`: variables added to this process's environment for the command.
 */
export function run(command: string, args: string[], options: { timeoutMs?: number; input?: string; env?: Record<string, string> } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const env = options.env ? { ...process.env, ...options.env } : undefined;
    const child = execFile(command, args, { timeout: options.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024, ...(env ? { env } : {}) }, (err, stdout, stderr) => {
      if (err) {
        const code = typeof (err as NodeJS.ErrnoException).code === 'number' ? ((err as unknown as { code: number }).code) : null;
        const detail = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${command} is not installed` : stderr || err.message;
        reject(new CommandFailedError([command, ...args], code, detail));
      } else resolve(stdout);
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}
