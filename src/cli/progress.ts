/** A one-line live progress display for migrations on a terminal (nothing when not a TTY). */
import type { MigrationProgress } from '../migration/types.ts';
import { mib } from './format.ts';

export function progressLine(prefix: string, p: MigrationProgress): string {
  const disk = p.disk ? `disks ${mib(p.disk.copiedBytes)} of ${mib(p.disk.totalBytes)}${p.disk.ready ? ' (in sync)' : ''}` : '';
  if (!p.ram) return `${prefix} ${p.phase}${disk ? `  ${disk}` : ''}`;
  const r = p.ram;
  const sent = `${mib(r.transferredBytes)} sent, ${mib(r.remainingBytes)} left`;
  const throttle = r.throttlePercent ? `  guest throttled ${r.throttlePercent}%` : '';
  return `${prefix} ${p.phase}  ${sent}  dirty ${mib(r.dirtyRateBytesPerSec)}/s  round ${r.round}  expected downtime ${r.expectedDowntimeMs} ms${throttle}${disk ? `  ${disk}` : ''}`;
}

export class ProgressDisplay {
  private readonly tty = Boolean(process.stderr.isTTY);
  private shown = false;

  update(line: string): void {
    if (!this.tty) return;
    const width = process.stderr.columns ?? 120;
    process.stderr.write(`\r\x1b[2K${line.slice(0, width - 1)}`);
    this.shown = true;
  }

  clear(): void {
    if (this.tty && this.shown) process.stderr.write('\r\x1b[2K');
    this.shown = false;
  }
}
