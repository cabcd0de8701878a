#!/usr/bin/env node
// Drives samie-node's operator console in Debian's chromium (headless, through playwright-core) as an
// operator would: the overview, the study list, a study's page (overlay preview, outputs, findings),
// then the failures page: re-send the dead letters without logging in (refused), log in with the
// token and re-send them to another destination (done), and a form on another origin that posts the
// same action with the operator's cookie (refused by the Origin check).
//
//   node console.mjs plan.json
//
// plan.json: {"url": "http://127.0.0.1:8765", "token": "...", "study": "<StudyInstanceUID>",
//   "resend_to": "AE@HOST:PORT", "chromium": "/usr/bin/chromium", "out": "/abs/folder"}
// Writes <out>/results.json (and screenshots, and every page's HTML for the PHI check).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = plan.out;
const results = { pages: {} };

function log(message) {
  process.stderr.write(`[console ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

async function keep(page, name) {
  const html = await page.content();
  fs.writeFileSync(path.join(out, `${name}.html`), html);
  results.pages[name] = `${name}.html`;
}

// Submits a form and returns the status of the POST it sends.
async function submit(page, button, action) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(action) && r.request().method() === 'POST'),
    page.click(button),
  ]);
  await page.waitForLoadState('load');
  return response.status();
}

const browser = await chromium.launch({
  executablePath: plan.chromium,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();

  log('overview');
  await page.goto(`${plan.url}/`);
  results.overview_queue = await page.locator('#queue').innerText();
  await keep(page, 'overview');

  log('studies');
  await page.goto(`${plan.url}/studies`);
  results.study_listed = (await page.locator(`a[href="/studies/${plan.study}"]`).count()) === 1;
  await keep(page, 'studies');

  log('study page');
  await page.goto(`${plan.url}/studies/${plan.study}`);
  await page.waitForFunction(() => [...document.images].every((img) => img.complete), null, { timeout: 30000 });
  results.study_state = await page.locator('#study-state').innerText();
  results.previews = await page.$$eval('#previews img', (imgs) => imgs.map((i) => [i.naturalWidth, i.naturalHeight]));
  results.outputs = await page.$$eval('#outputs tr', (rows) => rows.slice(1).map((r) => r.innerText));
  results.findings = (await page.locator('#findings').count()) ? await page.locator('#findings').innerText() : '';
  await page.screenshot({ path: path.join(out, 'study.png'), fullPage: true });
  await keep(page, 'study');

  log('failures: re-send without logging in');
  await page.goto(`${plan.url}/failures`);
  results.dead_before = await page.locator('#dead tr').count() - 1;
  await keep(page, 'failures');
  await page.fill('#resend-to', plan.resend_to);
  results.resend_without_login = {
    status: await submit(page, '#resend-dead-button', '/actions/resend'),
    message: await page.locator('#message').innerText(),
  };

  log('log in and re-send');
  await page.goto(`${plan.url}/login`);
  await page.fill('input[name=token]', plan.token);
  await Promise.all([page.waitForURL(`${plan.url}/failures`), page.click('#login')]);
  await page.fill('#resend-to', plan.resend_to);
  results.resend_logged_in = {
    status: await submit(page, '#resend-dead-button', '/actions/resend'),
    message: await page.locator('#message').innerText(),
  };

  log('a page on another origin posts the same action with the cookie');
  const evil = 'http://127.0.0.1:9/evil.html';
  await page.route(evil, (route) =>
    route.fulfill({
      contentType: 'text/html',
      body: `<form id="f" method="post" action="${plan.url}/actions/resend">
               <input name="state" value="dead"></form><script>document.getElementById('f').submit()</script>`,
    }),
  );
  const [crossOrigin] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/actions/resend')),
    page.goto(evil),
  ]);
  results.cross_origin_status = crossOrigin.status();

  log('overview for the README');
  await page.goto(`${plan.url}/`);
  await page.screenshot({ path: path.join(out, 'overview.png') });
  await keep(page, 'overview-after');
  await page.goto(`${plan.url}/audit`);
  await keep(page, 'audit');
} finally {
  await browser.close();
}
fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify(results, null, 2));
log('done');
