import type { Command } from '../command.ts';
import { parseCommandLine, UsageError } from '../errors.ts';
import { ensureGuestImage } from '../../qemu/guest-image.ts';

export const guestCommand: Command = {
  summary: 'build ferry\'s guest image (cached; rebuilt only when its inputs change)',
  usage: 'Usage: ferry guest build [--json]',
  async run(args) {
    const { values, positionals } = parseCommandLine({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
    if (positionals.length !== 1 || positionals[0] !== 'build') throw new UsageError('usage: ferry guest build [--json]');
    const image = await ensureGuestImage();
    if (values.json) console.log(JSON.stringify(image));
    else console.log(`guest image: ${image.kernel}, ${image.initrd} (inputs ${image.inputsHash})`);
  },
};
