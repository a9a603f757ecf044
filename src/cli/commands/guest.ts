import type { Command } from '../command.ts';
import { UsageError } from '../errors.ts';
import { ensureGuestImage } from '../../qemu/guest-image.ts';

export const guestCommand: Command = {
  summary: 'build ferry\'s guest image (cached; rebuilt only when its inputs change)',
  usage: 'Usage: ferry guest build [--json]',
  async run(args) {
    if (args[0] !== 'build') throw new UsageError('usage: ferry guest build');
    const image = await ensureGuestImage();
    if (args.includes('--json')) console.log(JSON.stringify(image));
    else console.log(`guest image: ${image.kernel}, ${image.initrd} (inputs ${image.inputsHash})`);
  },
};
