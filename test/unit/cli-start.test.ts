/**
 * The `ferry` command as a user starts it: from the build (dist/) when it is fresh, from the sources
 * otherwise; and bash completion's candidates.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { complete } from '../../src/cli/completion.ts';
import type { Command } from '../../src/cli/command.ts';
import { FERRY_VERSION, PROJECT_ROOT } from '../../src/util/project.ts';

const command = (usage: string): (() => Promise<Command>) => async () => ({ summary: '', usage, run: async () => 0 });

describe('ferry start and completion', () => {
  it('answers --version from the build or the sources alike, with package.json\'s version', () => {
    for (const env of [{}, { FERRY_DEV: '1' }]) {
      const r = spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), '--version'], { env: { ...process.env, ...env }, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), `ferry ${FERRY_VERSION}`);
    }
  });

  it('completes commands, verbs and flags from the usage, VM names and hosts from the cluster', async () => {
    const sources = {
      commands: {
        vm: command('Usage:\n  ferry vm create NAME [--memory MiB] [--net NETWORK]\n  ferry vm start|stop|destroy|show NAME\n  ferry vm migrate NAME --to HOST'),
        volume: command('ferry volume list'),
      },
      vmNames: async () => ['web1', 'db1'],
      hostNames: async () => ['h1', 'h2'],
    };
    assert.deepEqual(await complete(['v'], sources), ['vm', 'volume']);
    assert.deepEqual(await complete(['vm', 's'], sources), ['show', 'start', 'stop']);
    assert.deepEqual(await complete(['vm', 'create', 'x', '--m'], sources), ['--memory']);
    assert.deepEqual(await complete(['vm', 'migrate', ''], sources), ['db1', 'web1']);
    assert.deepEqual(await complete(['vm', 'migrate', 'web1', '--to', ''], sources), ['h1', 'h2']);
    assert.deepEqual(await complete(['nothing', ''], sources), []);
  });
});
