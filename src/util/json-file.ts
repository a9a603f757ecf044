/** Small JSON files of ferry's own (configurations, contexts, records): read with a message that names them, written private. */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** A configuration file that cannot be read or parsed, named with what it is. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export async function readJson<T>(file: string, what: string): Promise<T> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch (err) {
    throw new ConfigError(`cannot read the ${what} at ${file}: ${(err as Error).message}`);
  }
}

export async function writeJson(file: string, value: unknown): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify(value, null, 2) + '\n', { mode: 0o600 });
}
