/**
 * cloud-init's NoCloud seed: a small FAT disk labelled CIDATA with meta-data, user-data and
 * network-config, made with mtools (no loop mount, no root). It becomes a volume of the VM's pool
 * like any disk, so it moves with the VM: a migration never depends on a file of one host.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { run } from '../util/exec.ts';
import { InvalidVmSpecError } from './errors.ts';

/** The seed disk's size: FAT12 with room for far more than any seed. */
export const SEED_BYTES = 1024 * 1024;

export type GuestNetworkConfig = { kind: 'dhcp' } | { kind: 'static'; address: string; prefixLength: number; gateway?: string };

export interface CloudInitConfig {
  /** Changes when the seed should be applied afresh (cloud-init runs its per-instance modules once per id). */
  instanceId: string;
  hostname: string;
  /** OpenSSH public keys for the default user. */
  sshKeys: string[];
  /** A user-data file of the user's own (#cloud-config, a script, MIME); else a minimal #cloud-config. */
  userData?: string;
  /** The first NIC's MAC: the network config matches it, whatever the guest calls the interface. */
  mac: string;
  network: GuestNetworkConfig;
  /** The VM's other NICs (on named networks), eth1, eth2…: a static address, or DHCP. */
  moreNics?: Array<{ mac: string; network: GuestNetworkConfig }>;
}

const SSH_KEY = /^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n]*)?$/;
const USER_DATA_START = /^(#cloud-config|#!|#include|#cloud-boothook|Content-Type:)/;
/** What a seed of 1 MiB comfortably holds. */
const MAX_USER_DATA_BYTES = 256 * 1024;

/** Checks what a user gave; throws InvalidVmSpecError saying what is wrong. */
export function validateCloudInit(config: CloudInitConfig): void {
  config.sshKeys.forEach((key, i) => {
    if (!SSH_KEY.test(key.trim())) throw new InvalidVmSpecError(`cloud-init ssh key ${i + 1}`, `'${key.slice(0, 40)}…' is not an OpenSSH public key (a line like 'ssh-ed25519 AAAA… comment', from a .pub file)`);
  });
  if (config.userData !== undefined) {
    if (Buffer.byteLength(config.userData) > MAX_USER_DATA_BYTES) throw new InvalidVmSpecError('cloud-init user-data', `is ${Buffer.byteLength(config.userData)} bytes; at most ${MAX_USER_DATA_BYTES}`);
    if (!USER_DATA_START.test(config.userData))
      throw new InvalidVmSpecError('cloud-init user-data', "must start with '#cloud-config', '#!' (a script) or a MIME header, as cloud-init requires");
  }
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(config.hostname)) throw new InvalidVmSpecError('cloud-init hostname', `'${config.hostname}' is not a host name`);
}

/** The three files of the seed. JSON is YAML too: no YAML writer, no quoting mistakes. */
export function seedFiles(config: CloudInitConfig): Record<'meta-data' | 'user-data' | 'network-config', string> {
  const metaData = {
    'instance-id': config.instanceId,
    'local-hostname': config.hostname,
    ...(config.sshKeys.length ? { 'public-keys': config.sshKeys.map((k) => k.trim()) } : {}),
  };
  const ethernet = (network: GuestNetworkConfig) =>
    network.kind === 'dhcp'
      ? { dhcp4: true }
      : {
          dhcp4: false,
          addresses: [`${network.address}/${network.prefixLength}`],
          ...(network.gateway ? { routes: [{ to: '0.0.0.0/0', via: network.gateway }] } : {}),
        };
  const nics = [{ mac: config.mac, network: config.network }, ...(config.moreNics ?? [])];
  const ethernets = Object.fromEntries(nics.map((nic, i) => [`eth${i}`, { match: { macaddress: nic.mac }, 'set-name': `eth${i}`, ...ethernet(nic.network) }]));
  const networkConfig = { version: 2, ethernets };
  return {
    'meta-data': JSON.stringify(metaData, null, 1) + '\n',
    'user-data': config.userData ?? `#cloud-config\n${JSON.stringify({ hostname: config.hostname, preserve_hostname: false })}\n`,
    'network-config': JSON.stringify(networkConfig, null, 1) + '\n',
  };
}

/** Writes the seed disk image (raw, SEED_BYTES) to `file`. Needs mkfs.fat (dosfstools) and mcopy (mtools). */
export async function buildSeedImage(config: CloudInitConfig, file: string): Promise<void> {
  validateCloudInit(config);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-seed-'));
  try {
    await run('mkfs.fat', ['-C', '-n', 'CIDATA', file, String(SEED_BYTES / 1024)]).catch((err: Error) => {
      throw new Error(`could not make the cloud-init seed (${err.message.split('\n')[0]}); is dosfstools installed? (apt-get install dosfstools mtools)`);
    });
    for (const [name, text] of Object.entries(seedFiles(config))) {
      await writeFile(path.join(dir, name), text);
      await run('mcopy', ['-o', '-i', file, path.join(dir, name), `::${name}`]).catch((err: Error) => {
        throw new Error(`could not write ${name} into the cloud-init seed (${err.message.split('\n')[0]}); is mtools installed? (apt-get install mtools)`);
      });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
