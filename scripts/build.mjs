#!/usr/bin/env node
// Compiles ferry's TypeScript into dist/ (esbuild): what the `ferry` command and the agents run, so
// nothing is transpiled at run time. Each command is its own chunk, loaded when it runs. The
// type-check stays in the test command (tsc --noEmit); esbuild only strips the types.
import { build } from 'esbuild';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const started = Date.now();
rmSync(path.join(root, 'dist'), { recursive: true, force: true }); // no chunk of an earlier build stays
await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/main.ts', 'src/lab/probe-agent.ts'],
  outdir: 'dist',
  outbase: 'src',
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  // Native and optional modules stay in node_modules, and so do the REST API's (fastify loads its parts by name).
  external: ['better-sqlite3', 'bufferutil', 'utf-8-validate', 'fastify', '@fastify/*', 'prom-client'],
  // Bundled CommonJS modules (ws, fast-xml-parser) call require(): give them one.
  banner: { js: "import { createRequire as __ferryRequire } from 'node:module'; const require = __ferryRequire(import.meta.url);" },
  logLevel: 'warning',
});
// The web UI (React, ui/): into ui/dist, which every agent's REST API serves at /.
const { build: buildUi } = await import('vite');
await buildUi({ configFile: path.join(root, 'ui', 'vite.config.ts'), logLevel: 'warn' });
// bin/ferry.mjs runs dist/ only while it is newer than every source file (else it runs the sources).
writeFileSync(path.join(root, 'dist', '.built'), new Date().toISOString() + '\n');
console.log(`built dist/ and ui/dist/ in ${Date.now() - started} ms`);
