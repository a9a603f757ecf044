/**
 * A benchmark's printed tables, kept as text in bench/results/ with what produced them — date,
 * machine, QEMU (and libvirt) versions, the command — so that every figure the README quotes can be
 * traced to a run. Everything written with console.log from start() on is kept.
 */
import { writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { format } from 'node:util';
import { run } from '../src/util/exec.ts';

export class Transcript {
  private readonly lines: string[] = [];
  private readonly original = console.log;

  start(): void {
    console.log = (...args: unknown[]) => {
      this.lines.push(format(...args));
      this.original(...args);
    };
  }

  async save(file: string, facts: { command: string; qemu: string }): Promise<void> {
    console.log = this.original;
    const libvirt = await run('libvirtd', ['--version']).then((v) => v.trim(), () => 'not installed');
    const cpu = os.cpus();
    const header = [
      `# ${path.basename(file)}`,
      `date:    ${new Date().toISOString()}`,
      `machine: ${cpu.length} cores (${cpu[0]?.model ?? 'unknown CPU'}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, Linux ${os.release()}`,
      `QEMU:    ${facts.qemu} (TCG)`,
      `libvirt: ${libvirt}`,
      `command: ${facts.command}`,
      '',
    ];
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, [...header, ...this.lines, ''].join('\n'));
  }
}
