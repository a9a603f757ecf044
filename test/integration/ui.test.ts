/**
 * The web UI in a real browser (Debian's chromium, driven by playwright-core; no browser is
 * downloaded) against a real 3-host lab, reached as a person on the machine reaches it: `ferry ui`
 * forwarding localhost to h1's REST API. An operator logs in, opens a VM, sees each host marked can
 * or cannot with why, asks for a prediction, migrates with clicks, watches the live chart fill and the
 * VM arrive (the guest answering from the same boot); a capped migration is cancelled from the UI and
 * rolls back; a host put in maintenance from its page and taken out again (its VM leaves and comes
 * back, live); a VM put under HA from its page and taken out; a viewer sees no Migrate button and
 * the API refuses the call. Screenshots go to
 * test/artifacts/ui/.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { qemuPidsOf } from '../../src/lab/lab.ts';
import { PROJECT_ROOT } from '../../src/util/project.ts';
import { useLab } from '../helpers/lab.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(PROJECT_ROOT, 'test', 'artifacts', 'ui');
const PASSWORD = 'correct horse battery staple';

describe('web UI in Chromium (3-host lab)', () => {
  const suite = useLab('ui');
  const cli = suite.cli;
  let ui: ChildProcess;
  let base = '';
  let browser: Browser;
  const boots = new Map<string, { ip: string; boot: string }>();

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is installed by scripts/setup.sh (Debian's chromium)`);
    await mkdir(ARTIFACTS, { recursive: true });
    const file = path.join(suite.dir, 'pw');
    await writeFile(file, PASSWORD, { mode: 0o600 });
    for (const [name, role] of [['alice', 'operator'], ['victor', 'viewer']]) {
      const added = await cli('user', 'add', name!, '--role', role!, '--password-file', file);
      assert.equal(added.code, 0, added.stderr);
    }
    for (const [name, memory] of [['w1', '128'], ['slow1', '256']] as const) {
      const created = await cli('vm', 'create', name, '--memory', memory, '--host', 'h1');
      assert.equal(created.code, 0, created.stderr);
      boots.set(name, { ip: created.json.ip as string, boot: (await suite.probe.gamesrv(created.json.ip as string)).boot });
    }
    // `ferry ui`, the real command, on a free port.
    const port = 18000 + (process.pid % 1000);
    ui = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'ferry.mjs'), 'ui', '--host', 'h1', '--port', String(port)], { env: { ...process.env, ...suite.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      ui.stdout!.on('data', (c: Buffer) => ((out += c), /REST API on/.test(out) && resolve()));
      ui.stderr!.on('data', (c: Buffer) => (out += c));
      ui.once('exit', (code) => reject(new Error(`ferry ui exited (${code}): ${out}`)));
    });
    base = `http://localhost:${port}`;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
  });
  after(async () => {
    await browser?.close();
    ui?.kill('SIGINT');
  });

  const login = async (user: string): Promise<Page> => {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    await page.goto(`${base}/`);
    await page.fill('input[name=user]', user);
    await page.fill('input[name=password]', PASSWORD);
    await page.click('button[type=submit]');
    await page.getByTestId('who').waitFor();
    return page;
  };
  const sameGuest = async (name: string) => {
    const { ip, boot } = boots.get(name)!;
    assert.equal((await suite.probe.gamesrv(ip)).boot, boot, `${name} answers from the same boot`);
    assert.equal((await qemuPidsOf(name)).length, 1, `one QEMU runs ${name}`);
  };

  it('an operator logs in, sees the cluster, migrates a VM with clicks and watches it move', async () => {
    const page = await login('alice');
    assert.match(await page.getByTestId('who').innerText(), /alice \(operator\)/);
    await page.getByTestId('hosts').locator('tbody tr').nth(2).waitFor();
    assert.deepEqual(await page.getByTestId('hosts').locator('tbody tr td:first-child').allInnerTexts(), ['h1', 'h2', 'h3']);
    await page.screenshot({ path: path.join(ARTIFACTS, '1-overview.png'), fullPage: true });

    await page.click('a[href="#/vm/w1"]');
    await page.getByTestId('migrate-open').click();
    const candidates = page.getByTestId('candidates');
    await candidates.locator('tr[data-host=h3]').waitFor();
    assert.equal(await candidates.locator('tr[data-host=h1]').getAttribute('data-ok'), 'false');
    assert.match(await candidates.locator('tr[data-host=h1] .reason').innerText(), /runs there now/);
    assert.equal(await candidates.locator('tr[data-host=h2]').getAttribute('data-ok'), 'true');
    assert.equal(await candidates.locator('tr[data-host=h1] input').isDisabled(), true, 'a host that cannot take it cannot be chosen');
    await candidates.locator('tr[data-host=h2] input').check();
    await page.getByTestId('predict').click();
    await page.getByTestId('predictions').waitFor({ timeout: 120_000 });
    assert.deepEqual((await page.getByTestId('predictions').locator('tbody td:first-child').allInnerTexts()).sort(), ['balanced', 'minimal-downtime', 'must-finish'], 'a prediction per policy');
    await page.screenshot({ path: path.join(ARTIFACTS, '2-migrate-dialog.png'), fullPage: true });

    await page.getByTestId('migrate-confirm').click();
    await page.getByTestId('live-migration').waitFor();
    await page.getByTestId('chart').locator('canvas').waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, '3-live.png'), fullPage: true });
    await page.waitForFunction("document.querySelector('[data-testid=vm-host]')?.textContent === 'h2'", undefined, { timeout: 120_000 });
    const record = page.getByTestId('migration-record').first();
    await record.waitFor();
    assert.equal(await record.getAttribute('data-state'), 'succeeded');
    assert.match(await record.innerText(), /moved .* from h1 \(asked by alice \(operator, through h1\)\): total .*QEMU downtime .* 1 attempt/);
    await page.screenshot({ path: path.join(ARTIFACTS, '4-moved.png'), fullPage: true });
    await sameGuest('w1');
  });

  it('a capped migration cancelled from the UI rolls back: the VM stays where it was', async () => {
    const page = await login('alice');
    await page.goto(`${base}/#/vm/slow1`);
    await page.getByTestId('migrate-open').click();
    await page.getByTestId('candidates').locator('tr[data-host=h3] input').check();
    await page.fill('input[name=bandwidth]', '4');
    await page.getByTestId('migrate-confirm').click();
    const live = page.getByTestId('live-migration');
    await live.waitFor();
    // Points on the chart: the progress is streamed while it runs.
    await page.waitForFunction("Number(document.querySelector('[data-testid=live-migration]')?.getAttribute('data-points') ?? 0) >= 2", undefined, { timeout: 60_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, '5-capped.png'), fullPage: true });
    await page.getByTestId('cancel').click();
    await live.waitFor({ state: 'detached', timeout: 60_000 });
    const record = page.getByTestId('migration-record').first();
    await record.waitFor();
    assert.equal(await record.getAttribute('data-state'), 'failed');
    assert.equal(await page.getByTestId('vm-host').innerText(), 'h1');
    await page.screenshot({ path: path.join(ARTIFACTS, '6-cancelled.png'), fullPage: true });
    assert.equal((await cli('vm', 'show', 'slow1')).json.owner, 'h1');
    await sameGuest('slow1');
  });

  it("maintenance from a host's page: its VMs leave live, each VM's progress shown, and come back when it ends", async () => {
    const page = await login('alice');
    await page.goto(`${base}/#/host/h2`);
    await page.getByTestId('maintenance-on').click();
    const drain = page.locator('[data-testid=move-job][data-kind=drain][data-state=done]');
    await drain.waitFor({ timeout: 120_000 });
    assert.equal(await drain.locator('tr[data-vm=w1]').getAttribute('data-state'), 'moved');
    await page.getByTestId('host-state').filter({ hasText: 'in maintenance' }).waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, '7-maintenance.png'), fullPage: true });
    assert.notEqual((await cli('vm', 'show', 'w1')).json.owner, 'h2');
    await page.getByTestId('maintenance-off').click();
    const back = page.locator('[data-testid=move-job][data-kind=return][data-state=done]');
    await back.waitFor({ timeout: 120_000 });
    assert.equal(await back.locator('tr[data-vm=w1]').getAttribute('data-state'), 'moved');
    assert.equal((await cli('vm', 'show', 'w1')).json.owner, 'h2', 'back where it was');
    await sameGuest('w1');
  });

  it("HA from a VM's page: put under HA, the manager's view shown, taken out again", async () => {
    const page = await login('alice');
    await page.goto(`${base}/#/vm/w1`);
    await page.getByTestId('ha-state').filter({ hasText: 'not under HA' }).waitFor();
    await page.getByTestId('ha-set').click();
    // The manager looks at it within its tick, and the page shows what it found when reloaded by an event or a visit.
    let state = '';
    for (let i = 0; i < 60 && !/started \(now running/.test(state); i++) {
      await new Promise((r) => setTimeout(r, 500));
      await page.reload();
      state = await page.getByTestId('ha-state').innerText();
    }
    assert.match(state, /started \(now running/);
    await page.screenshot({ path: path.join(ARTIFACTS, '8-ha.png'), fullPage: true });
    await page.getByTestId('ha-remove').click();
    await page.getByTestId('ha-state').filter({ hasText: 'not under HA' }).waitFor();
  });

  it('a viewer sees no Migrate button, and the API refuses the call (403)', async () => {
    const page = await login('victor');
    await page.goto(`${base}/#/vm/w1`);
    await page.getByTestId('vm-host').waitFor();
    assert.equal(await page.getByTestId('migrate-open').count(), 0);
    await page.goto(`${base}/#/host/h1`);
    await page.getByTestId('host-state').waitFor();
    assert.equal(await page.getByTestId('maintenance-on').count(), 0, 'nor Maintenance');
    const status = await page.evaluate(async () => {
      const session = (await (await fetch('/api/v1/session')).json()) as { csrfToken: string };
      const res = await fetch('/api/v1/vms/w1/migrate', { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': session.csrfToken }, body: JSON.stringify({ to: 'h3' }) });
      return res.status;
    });
    assert.equal(status, 403);
    await page.screenshot({ path: path.join(ARTIFACTS, '9-viewer.png'), fullPage: true });
  });
});
