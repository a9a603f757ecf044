#!/usr/bin/env node
// The `ferry` command. Setup compiles the TypeScript into dist/ (scripts/build.mjs), which runs as
// plain JavaScript; while a source file is newer than that build (a checkout being worked on), or
// with FERRY_DEV=1, the sources run through tsx's loader instead — slower to start, never stale.
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function builtAndFresh() {
  if (process.env.FERRY_DEV === '1') return false;
  let built;
  try {
    built = statSync(path.join(root, 'dist', '.built')).mtimeMs;
  } catch {
    return false;
  }
  // A changed dependency (package.json, its lock) makes the build stale too.
  for (const file of ['package.json', 'package-lock.json']) if (statSync(path.join(root, file)).mtimeMs > built) return false;
  const src = path.join(root, 'src');
  for (const file of readdirSync(src, { recursive: true })) {
    if (file.endsWith('.ts') && statSync(path.join(src, file)).mtimeMs > built) return false;
  }
  return true;
}

if (builtAndFresh()) {
  await import('../dist/cli/main.mjs');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
