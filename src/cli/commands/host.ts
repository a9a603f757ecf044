import type { Command } from '../command.ts';
import { UsageError, parseCommandLine } from '../errors.ts';
import { ensureGuestImage } from '../../qemu/guest-image.ts';
import { probeHost, resolveAccel } from '../../qemu/host-probe.ts';
import { lostPagesDefect, parseQemuVersion } from '../../qemu/version.ts';

export const hostCommand: Command = {
  summary: 'what this host\'s QEMU can do: version, working accelerators, migration capabilities, CPU models',
  usage: [
    'Usage: ferry host probe [--refresh] [--json]',
    '',
    '  --refresh  probe again instead of using the cached result',
    '  --json     print the probe as JSON',
  ].join('\n'),
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, options: { refresh: { type: 'boolean' }, json: { type: 'boolean' } }, allowPositionals: true });
    if (positionals[0] !== 'probe') throw new UsageError('usage: ferry host probe [--refresh] [--json]');
    await ensureGuestImage();
    const probe = await probeHost({ refresh: values.refresh ?? false });
    if (values.json) {
      console.log(JSON.stringify(probe, null, 2));
      return;
    }
    const auto = resolveAccel('auto', probe);
    const usable = probe.cpu.models.filter((m) => m.unavailableFeatures.length === 0 && !m.aliasOf);
    console.log(`QEMU ${probe.qemuVersion} on Linux ${probe.hostKernel} (probed ${probe.probedAt})`);
    console.log(
      probe.tcgDirtyTrackingFixed
        ? '  TCG dirty tracking: sound (QEMU >= 9.0 has commit 03bfc2188f06); no memory check in the migration pause'
        : `  TCG dirty tracking: LOSES PAGES in migration — ${lostPagesDefect(parseQemuVersion(probe.qemuVersion), 'tcg')}; under TCG every migration is memory-checked in the pause`,
    );
    console.log(`  machine types: newest ${probe.machineTypes[0] ?? 'none'} (${probe.machineTypes.length} versioned q35 types)`);
    for (const [name, verdict] of Object.entries(probe.accelerators))
      console.log(`  accel ${name.padEnd(3)}  ${verdict.usable ? 'works  ' : 'NO     '} ${verdict.reason}`);
    console.log(`  accel=auto uses ${auto.accel}${auto.warning ? ` — ${auto.warning}` : ''}`);
    console.log(`  migration capabilities: ${probe.migrationCapabilities.join(', ')}`);
    console.log(`  CPU models runnable here under ${probe.cpu.accel.toUpperCase()}: ${usable.length} of ${probe.cpu.models.filter((m) => !m.aliasOf).length} (${usable.slice(0, 8).map((m) => m.name).join(', ')}, ...); ${probe.cpu.hostFeatures.length} features (see 'ferry cluster cpu')`);
  },
};
