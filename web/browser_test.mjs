// Drive a `castml web` page in headless Chromium (Debian's /usr/bin/chromium) with playwright-core:
// open it, type inputs, click Run, read the outputs from the page, save a screenshot.
// Prints {"outputs": {name: {dtype, shape, data}}, "status", "timing", "console"} as JSON.
//
// Why playwright-core and the system Chromium: no browser download (which this environment's
// closed network forbids); the flags below keep Chromium from calling home. The page is served
// by the caller (the test starts a server on 127.0.0.1), so this script checks the page exactly
// as a person would reach it.
//
// Usage: node web/browser_test.mjs --url http://127.0.0.1:PORT/ [--typed NAME=values.json]...
//          [--image NAME=picture.png]... [--dim SYMBOL=N]... [--screenshot page.png] [--chromium /usr/bin/chromium] [--timeout-ms 60000]
// values.json holds the input's values (a JSON list, nested or flat). Exit 1 when the page shows
// an error or the browser fails, 2 on bad usage.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

// playwright adds --headless itself (headless: true) and --user-data-dir from the profile folder
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function usage(message) {
  process.stderr.write(`browser_test: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { url: null, typed: [], images: [], dims: [], screenshot: null, chromium: '/usr/bin/chromium', timeout: 60000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i] ?? usage(`${a} needs a value`);
    const pair = (text) => {
      const eq = text.indexOf('=');
      if (eq <= 0) usage(`bad ${a} ${JSON.stringify(text)}; expected NAME=VALUE`);
      return [text.slice(0, eq), text.slice(eq + 1)];
    };
    if (a === '--url') args.url = next();
    else if (a === '--typed') args.typed.push(pair(next()));
    else if (a === '--image') args.images.push(pair(next()));
    else if (a === '--dim') args.dims.push(pair(next()));
    else if (a === '--screenshot') args.screenshot = next();
    else if (a === '--chromium') args.chromium = next();
    else if (a === '--timeout-ms') args.timeout = Number(next());
    else usage(`unknown argument ${a}`);
  }
  if (!args.url) usage('missing --url');
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const profile = mkdtempSync(join(tmpdir(), 'castml-chromium-'));
  // a fresh, empty profile each run (playwright passes it to Chromium as --user-data-dir)
  const browser = await chromium.launchPersistentContext(profile, { executablePath: args.chromium, args: FLAGS,
    headless: true, timeout: args.timeout, viewport: { width: 1100, height: 900 } });
  const consoleLines = [];
  try {
    const page = browser.pages()[0] ?? await browser.newPage();
    page.setDefaultTimeout(args.timeout);
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    await page.goto(args.url);
    await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]');
    for (const [name, value] of args.dims) await page.fill(`#dim-${name}`, value);
    for (const [name, file] of args.typed) {
      const box = page.locator(`.tensor.input[data-name="${name}"]`);
      if ((await box.count()) !== 1) throw new Error(`the page has no input named ${name}`);
      await box.locator('select.mode').selectOption('typed');
      await box.locator('textarea.values').fill(readFileSync(file, 'utf8'));
    }
    for (const [name, file] of args.images) {
      const box = page.locator(`.tensor.input[data-name="${name}"]`);
      if ((await box.count()) !== 1) throw new Error(`the page has no input named ${name}`);
      await box.locator('select.mode').selectOption('image');
      await box.locator('input.image-file').setInputFiles(file);
      await box.locator('canvas.preview').waitFor({ state: 'visible' });  // decoded and drawn
    }
    if ((await page.getAttribute('#status', 'data-state')) === 'ready') {
      await page.click('#run');
      await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]');
    }
    const status = await page.textContent('#status');
    const outputs = {};
    for (const box of await page.locator('.tensor.output').all()) {
      const name = await box.getAttribute('data-name');
      const type = /^(\w+)\[(.*)\]$/.exec(await box.locator('.type').textContent());
      const shape = type[2] ? type[2].split(',').map((s) => Number(s.trim())) : [];
      outputs[name] = { dtype: type[1], shape, data: JSON.parse(await box.locator('textarea.output-values').inputValue()) };
    }
    const timing = await page.textContent('#timing');
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ outputs, status, timing, console: consoleLines }) + '\n');
    if (!status.startsWith('done')) {
      process.stderr.write(`browser_test: the page says ${JSON.stringify(status)}\n${consoleLines.join('\n')}\n`);
      process.exitCode = 1;
    }
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`browser_test: ${e?.message ?? e}\n`);
  process.exit(1);
});
