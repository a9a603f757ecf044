/**
 * Where this checkout is, found by walking up from this module to ferry's package.json: the same
 * answer from the TypeScript sources (src/util/) and from the built bundle (dist/...), whatever
 * depth the bundler put this code at.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): { root: string; version: string } {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const file = path.join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'ferry') return { root: dir, version: pkg.version ?? 'unknown' };
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`ferry's package.json is not above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

const found = findRoot();
export const PROJECT_ROOT = found.root;
export const FERRY_VERSION = found.version;
