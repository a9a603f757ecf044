/**
 * The command line fuzzed in-process (fast-check): every command given an argv broken by
 * construction (a flag it does not know, anywhere among words, flags and hostile values) fails
 * with a UsageError that says what was wrong — never another kind of exception, never acting.
 * The cluster commands, given hostile names and values with flags they know, against a context
 * whose agent is not there, end in a usage error or in 'cannot reach the agent', never in a
 * TypeError, a RangeError or a hang. The seed is printed (FERRY_FUZZ_SEED=N reproduces).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile, copyFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { AgentUnreachableError } from '../../src/agent/client.ts';
import { COMMANDS, runCli } from '../../src/cli/dispatch.ts';
import { UsageError } from '../../src/cli/errors.ts';
import { hostileString } from '../helpers/fuzz-inputs.ts';

const SEED = Number(process.env['FERRY_FUZZ_SEED'] ?? 20261216);
const RUNS = Number(process.env['FERRY_FUZZ_RUNS'] ?? 60);

/** What `ferry CMD --help` lists: its verbs (ferry CMD VERB|VERB ...) and its flags. */
async function vocabulary(name: string): Promise<{ verbs: string[]; flags: string[] }> {
  const usage = (await COMMANDS[name]!()).usage;
  const verbs = [...usage.matchAll(new RegExp(`ferry ${name} ([a-z][a-z|-]*)`, 'g'))].flatMap((m) => m[1]!.split('|'));
  const flags = [...usage.matchAll(/--[a-z][a-z0-9-]*/g)].map((m) => m[0]).filter((f) => f !== '--help');
  return { verbs: [...new Set(verbs)], flags: [...new Set(flags)] };
}

/** A word of an argv: a hostile string (never '--', which ends the flags, nor a help flag). */
const word = hostileString.filter((w) => w !== '--' && w !== '-h' && w !== '--help' && !w.startsWith('--help='));

/** Runs `ferry ARGV` in this process, its output kept from the test's; at most 10 s. */
async function ferry(argv: string[]): Promise<{ code?: number; error?: unknown; output: string }> {
  let output = '';
  // console only: the test runner reports on process.stdout itself.
  const [log, error] = [console.log, console.error];
  console.log = (...a: unknown[]) => void (output += a.join(' ') + '\n');
  console.error = console.log;
  try {
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`ferry ${argv.join(' ').slice(0, 200)} did not end within 10 s`)), 10_000)));
    try {
      return { code: await Promise.race([runCli(argv), hang]), output };
    } finally {
      clearTimeout(timer);
    }
  } catch (err) {
    return { error: err, output };
  } finally {
    [console.log, console.error] = [log, error];
  }
}

const describeArgv = (argv: string[]) => JSON.stringify(argv).slice(0, 300);

describe('the command line fuzzed', () => {
  let dir: string;
  const env = { ...process.env };

  before(async () => {
    console.log(`cli fuzz seed ${SEED} (FERRY_FUZZ_SEED=${SEED} reproduces)`);
    // A context whose only agent is not there (no socket), with a real certificate: calls fail as unreachable.
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-cli-fuzz-'));
    const certs = path.join(dir, 'admin');
    await mkdir(certs);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/O=ferry/OU=admin/CN=admin', '-days', '1', '-keyout', path.join(certs, 'key.pem'), '-out', path.join(certs, 'cert.pem')], { stdio: 'ignore' });
    await copyFile(path.join(certs, 'cert.pem'), path.join(certs, 'ca-cert.pem'));
    await writeFile(path.join(dir, 'context.json'), JSON.stringify({ cluster: 'fuzz', certDir: certs, agents: [{ name: 'h1', url: 'https://127.0.0.1:9', socket: path.join(dir, 'no-agent.sock') }] }));
    process.env['FERRY_CONTEXT'] = path.join(dir, 'context.json');
    process.env['FERRY_LAB_DIR'] = path.join(dir, 'lab'); // no lab command reaches a real lab
  });
  after(async () => {
    for (const key of ['FERRY_CONTEXT', 'FERRY_LAB_DIR']) {
      if (env[key] === undefined) delete process.env[key];
      else process.env[key] = env[key];
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('every command refuses a flag it does not know with a UsageError, wherever it is', async () => {
    const names = [...Object.keys(COMMANDS), 'completion'];
    for (const [i, name] of names.entries()) {
      const { verbs, flags } = name === 'completion' ? { verbs: ['bash'], flags: [] } : await vocabulary(name);
      const known = fc.oneof(fc.constantFrom(...(verbs.length ? verbs : ['x'])), ...(flags.length ? [fc.constantFrom(...flags)] : []), word);
      const unknown = fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/).map((f) => `--zz-${f}`);
      await fc.assert(
        fc.asyncProperty(fc.array(known, { maxLength: 6 }), unknown, fc.nat(), async (words, flag, at) => {
          const argv = [name, ...words.slice(0, at % (words.length + 1)), flag, ...words.slice(at % (words.length + 1))];
          const { code, error, output } = await ferry(argv);
          assert.ok(error instanceof UsageError, `ferry ${describeArgv(argv)}: ${error === undefined ? `exit ${code} (${output.slice(0, 200)})` : `${(error as Error).name}: ${(error as Error).message}`}, not a usage error`);
          assert.ok(error.message.length > 0, `ferry ${describeArgv(argv)}: a usage error without a message`);
        }),
        { seed: SEED + i, numRuns: RUNS },
      );
    }
  });

  it("regression: an unknown flag ended in parseArgs' TypeError (ERR_PARSE_ARGS_UNKNOWN_OPTION, exit 1), not a usage error", async () => {
    for (const argv of [['vm', 'list', '--colour'], ['lab', 'up', '--hosts'], ['node', 'list', '--json=yes'], ['init', 'stray']]) {
      const { error } = await ferry(argv);
      assert.ok(error instanceof UsageError, `ferry ${argv.join(' ')}: ${String(error)}`);
      assert.match(error.message, /Unknown option|argument missing|does not take an argument|Unexpected argument/);
    }
  });

  it("regression: 'ferry guest build --zz' built the guest image (the command read only its first word)", async () => {
    const { error } = await ferry(['guest', 'build', '--zz']);
    assert.ok(error instanceof UsageError, String(error));
    assert.ok((await ferry(['guest', 'build', 'extra'])).error instanceof UsageError);
  });

  it("regression: 'ferry completion bash --zz' printed the completion script", async () => {
    const { error, output } = await ferry(['completion', 'bash', '--zz']);
    assert.ok(error instanceof UsageError, String(error));
    assert.equal(output, '');
  });

  it('the cluster commands, given hostile names and values, end in a usage error or an unreachable agent, never in another exception', async () => {
    // Not here: what listens or reads files of this machine (vm console/vnc/import, image import, ui, user add's password file).
    const skipVerbs: Record<string, string[]> = { vm: ['console', 'vnc', 'import'], image: ['import'], user: ['add'] };
    const names = ['vm', 'node', 'storage', 'volume', 'image', 'network', 'job', 'ha', 'cluster', 'user', 'token'];
    for (const [i, name] of names.entries()) {
      const { verbs, flags } = await vocabulary(name);
      const allowed = verbs.filter((v) => !skipVerbs[name]?.includes(v));
      const token = fc.oneof(
        { weight: 2, arbitrary: word },
        { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...flags), word).map(([f, w]) => `${f}=${w}`) },
        { weight: 1, arbitrary: fc.constantFrom(...flags) },
        { weight: 1, arbitrary: fc.constantFrom('h1', 'g1', 'shared', 'local', '0', '-1', '1.5', '99999999999999999999') },
      );
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...allowed), fc.array(token, { maxLength: 6 }), async (verb, words) => {
          const argv = [name, verb, ...words];
          fc.pre(!words.some((w) => w === '--' || w.startsWith('--help') || w === '-h'));
          if (skipVerbs[name]?.some((v) => words[0] === v)) return; // a sub-verb spelled as the first word
          const { error } = await ferry(argv);
          if (error === undefined) return;
          assert.ok(
            error instanceof UsageError || error instanceof AgentUnreachableError,
            `ferry ${describeArgv(argv)}: ${(error as Error).name}: ${(error as Error).message}\n${(error as Error).stack?.split('\n').slice(1, 4).join('\n')}`,
          );
          assert.ok((error as Error).message.length > 0);
        }),
        { seed: SEED + 100 + i, numRuns: RUNS },
      );
    }
  });
});
