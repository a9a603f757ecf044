/** The guest's dirty rate as QEMU samples it (calc-dirty-rate), for predictions. */
import type { VmInstance } from './instance.ts';

/** The guest's dirty rate in bytes/s, sampled by QEMU over `seconds` (calc-dirty-rate). */
export async function sampleDirtyRate(instance: VmInstance, seconds = 1): Promise<number> {
  await instance.qmp.execute('calc-dirty-rate', { 'calc-time': seconds });
  const deadline = Date.now() + seconds * 1000 + 10_000;
  for (;;) {
    await new Promise((r) => setTimeout(r, 250));
    const info = await instance.qmp.execute<{ status: string; 'dirty-rate'?: number }>('query-dirty-rate');
    if (info.status === 'measured') return (info['dirty-rate'] ?? 0) * 2 ** 20;
    if (Date.now() > deadline) throw new Error(`QEMU did not finish measuring the dirty rate (status ${info.status})`);
  }
}
