// walk.mjs — the console walked in Debian's Chromium (headless, driven by
// playwright-core, no browser download) as a new owner would, then by the
// operator. Run by test/tap/410_console_browser.pl, which starts the
// cluster, the gateway, Stripe's stand-in and a webhook receiver and
// passes them in the environment:
//   WALK_BASE        the gateway, e.g. http://127.0.0.1:5xxxx
//   WALK_EMAIL, WALK_PASSWORD               the owner (second factor on)
//   WALK_OPERATOR_EMAIL, WALK_OPERATOR_PASSWORD   an operator user
//   WALK_DB          a libpq conninfo: the second factor's code is read
//                    from the sandbox message, as a person reads their phone
//   WALK_PHONE       the owner's phone
//   WALK_HOOK_URL    the webhook receiver's URL
//   WALK_GONE_HOOK_URL  a receiver answering 410 Gone (a failed delivery)
//   WALK_ARTIFACTS   where screenshots, the invoice PDF and results.json go
//   WALK_CHROMIUM    the browser (default /usr/bin/chromium)
//   WALK_PLAYWRIGHT  the node_modules holding playwright-core
// Prints one JSON line per check: {"ok": true|false, "name", "detail"?};
// the TAP test turns them into its assertions. Every page visited is
// checked for console errors, page errors and failed requests, and
// screenshotted at 1440 px (and a few at 360 px).
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const env = process.env;
const require = createRequire(path.join(env.WALK_PLAYWRIGHT, 'noop.js'));
const { chromium } = require('playwright-core');

const base = env.WALK_BASE;
const out = env.WALK_ARTIFACTS;
fs.mkdirSync(out, { recursive: true });
const results = { checks: [], timings: {}, screenshots: [] };
let failures = 0;

function check(ok, name, detail) {
  const line = { ok: !!ok, name };
  if (detail !== undefined) line.detail = typeof detail === 'string' ? detail : JSON.stringify(detail);
  if (!ok) failures++;
  results.checks.push(line);
  process.stdout.write(JSON.stringify(line) + '\n');
  return !!ok;
}

const XSS_BODY = 'Promo <script>window.__xss=1</script> "><img src=x onerror="window.__xss=2"> fin';
const XSS_NAME = '<script>window.__xss=3</script>"><img src=x onerror="window.__xss=4">Karim';

function curl(method, urlPath, key, body) {
  const args = ['-sS', '-o', '-', '-w', '\n%{http_code}', '-X', method, '-H', `Authorization: Bearer ${key}`];
  if (body !== undefined) args.push('-H', 'Content-Type: application/json', '--data-binary', JSON.stringify(body));
  args.push(base + urlPath);
  const text = execFileSync('curl', args, { encoding: 'utf8' });
  const cut = text.lastIndexOf('\n');
  let json = null;
  try { json = JSON.parse(text.slice(0, cut)); } catch (e) { /* not JSON */ }
  return { status: Number(text.slice(cut + 1)), json };
}

function psql(sql) {
  return execFileSync('psql', ['-X', '-A', '-t', '-d', env.WALK_DB, '-c', sql], { encoding: 'utf8' }).trim();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser = null;

async function main() {
  browser = await chromium.launch({
    executablePath: env.WALK_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, locale: 'fr-MA', acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);

  // What goes wrong on a page, gathered between two steps.
  let problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`); });
  page.on('dialog', (d) => d.accept());

  let shot = 0;
  async function settle() {
    await page.waitForFunction(() => !document.querySelector('main .loading'), null, { timeout: 15000 });
    await page.waitForLoadState('networkidle');
  }
  async function screenshot(name) {
    shot += 1;
    const file = `${String(shot).padStart(2, '0')}-${name}.png`;
    await page.screenshot({ path: path.join(out, file), fullPage: true });
    results.screenshots.push(file);
  }
  // A whole page load of a route (the session comes back from the cookie).
  async function load(hash) {
    await page.goto('about:blank');
    await page.goto(`${base}/console/${hash}`);
    await settle();
  }
  // Visit a route: the page renders, says nothing wrong, and is kept as a picture.
  async function visit(name, hash, ready) {
    problems = [];
    await load(hash);
    if (ready) await ready();
    await screenshot(name);
    check(problems.length === 0, `${name}: no console error, no failed request`, problems);
    // every control has a name a screen reader says, and no string is left untranslated
    const unnamed = await page.evaluate(() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
      .filter((el) => el.offsetParent !== null || el.getClientRects().length)
      .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label') || (el.textContent || '').trim() || el.closest('label')))
      .map((el) => el.outerHTML.slice(0, 80)));
    check(unnamed.length === 0, `${name}: every control is labelled`, unnamed);
    const keys = await page.evaluate(() => {
      const out = [];
      const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const text = n.textContent.trim();
        // a key looks like "area.name"; webhook event names (message.sent) are data
        if (/^[a-z_]+\.[a-z_.-]+$/.test(text) && !/^(message|verify)\.[a-z]+$/.test(text)) out.push(text);
      }
      return out;
    });
    check(keys.length === 0, `${name}: no untranslated string`, keys);
    const xss = await page.evaluate(() => window.__xss || null);
    check(xss === null, `${name}: no injected script ran`, xss);
  }

  // ---- first load, cold then warm
  problems = [];
  let t0 = Date.now();
  await page.goto(`${base}/console/`);
  await page.waitForSelector('input[type=email]');
  const cold = Date.now() - t0;
  const coldNav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
  t0 = Date.now();
  await page.reload();
  await page.waitForSelector('input[type=email]');
  const warm = Date.now() - t0;
  const warmNav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
  results.timings = {
    cold_ms: cold, warm_ms: warm,
    cold_load_event_ms: Math.round(coldNav.loadEventEnd), warm_load_event_ms: Math.round(warmNav.loadEventEnd),
  };
  check(cold > 0 && warm > 0, 'first page load timed (cold, warm)', results.timings);
  const headers = (await page.request.get(`${base}/console/`)).headers();
  check(/frame-ancestors 'none'/.test(headers['content-security-policy'] || '') && !/unsafe-inline/.test(headers['content-security-policy'] || ''),
    'the page is served with a CSP without inline script and with frame-ancestors none', headers['content-security-policy']);
  await screenshot('sign-in');
  check(problems.length === 0, 'sign-in page: no console error, no failed request', problems);

  // ---- a wrong password: one 401, said on the page, nothing else wrong
  problems = [];
  await page.fill('input[type=email]', env.WALK_EMAIL);
  await page.fill('input[type=password]', 'not-the-password');
  await page.click('button[type=submit]');
  await page.waitForSelector('.notice-error');
  const refusal = await page.textContent('.notice-error');
  const only401 = problems.every((p) => /401/.test(p)) && problems.some((p) => /HTTP 401: POST .*\/v1\/console\/sign-in$/.test(p));
  check(/incorrect/.test(refusal) && only401, 'a wrong password is refused on the page (401), nothing else failed', { refusal, problems });
  await screenshot('sign-in-refused');

  // ---- sign in with the second factor, the code read from the sandbox message
  problems = [];
  await page.fill('input[type=email]', env.WALK_EMAIL);
  await page.fill('input[type=password]', env.WALK_PASSWORD);
  const since = psql("SELECT now()");
  await page.click('button[type=submit]');
  await page.waitForSelector('input[autocomplete=one-time-code]');
  await screenshot('second-factor');
  let code = '';
  for (let i = 0; i < 50 && !code; i++) {
    const body = psql(`SELECT body FROM envoisms.messages WHERE to_number = '${env.WALK_PHONE}' AND created_at >= '${since}' ORDER BY created_at DESC LIMIT 1`);
    code = (body.match(/\b(\d{4,8})\b/) || [])[1] || '';
    if (!code) await sleep(100);
  }
  check(code !== '', 'the second factor code arrived as a sandbox message',
    code ? undefined : psql('SELECT string_agg(to_number || \' \' || status, \', \') FROM envoisms.messages'));
  await page.fill('input[autocomplete=one-time-code]', code);
  await page.click('button[type=submit]');
  await page.waitForSelector('#nav');
  await settle();
  check(problems.length === 0, 'signed in with the second factor', problems);
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  check(!/csrf|envoisms_session|env_live|env_test/.test(storage), 'no secret in browser storage or script-visible cookies', storage);
  const cookies = await context.cookies();
  const sessionCookie = cookies.find((c) => c.name === 'envoisms_session');
  check(sessionCookie && sessionCookie.httpOnly && sessionCookie.secure && sessionCookie.sameSite === 'Strict',
    'the session cookie is HttpOnly, Secure, SameSite=Strict', sessionCookie && { ...sessionCookie, value: '…' });

  await visit('overview', '#/overview');

  // ---- an API key, created here and used with curl
  await visit('api-keys', '#/keys');
  await page.fill('input[name=name]', 'Clé du parcours');
  await page.click('form button[type=submit]');
  await page.waitForSelector('#new-key');
  const key = (await page.textContent('#new-key')).trim();
  check(/^env_live_/.test(key), 'the new key is shown once', key.slice(0, 9));
  await screenshot('api-key-created');
  const to = '+212612345001';
  const sent = curl('POST', '/v1/messages', key, { to, message: XSS_BODY, metadata: { note: '<b>bold</b>' } });
  check(sent.status === 201 || sent.status === 200, 'curl with the new key sends a message', sent);
  const messageId = sent.json && sent.json.id;

  // ---- the message found by its number, its timeline, its body as text
  await visit('messages', `#/messages?to=${encodeURIComponent(to)}`, () => page.waitForSelector('main table a'));
  check((await page.textContent('main table')).includes(XSS_BODY), 'the message body is listed as text');
  let delivered = false;
  for (let i = 0; i < 40 && !delivered; i++) {
    await load(`#/messages/${messageId}`);
    delivered = (await page.locator('.timeline li').count()) >= 3;
    if (!delivered) await sleep(250);
  }
  check(delivered, 'the message shows its timeline: queued, sent, delivered');
  await visit('message-detail', `#/messages/${messageId}`);
  check((await page.textContent('pre.body')) === XSS_BODY && (await page.locator('main img').count()) === 0,
    'a body holding <script> and an onerror <img> is shown as text');
  const csv = await page.request.get(`${base}/v1/console/messages/export?to=${encodeURIComponent(to)}`);
  check(csv.status() === 200 && /text\/csv/.test(csv.headers()['content-type']) && (await csv.text()).includes(messageId),
    'the CSV export answers text/csv holding the message', csv.status());

  // ---- contacts: a list, a CSV import with progress, a name holding markup
  await visit('contacts', '#/contacts');
  await page.fill('input[name=list_name]', 'Clients du parcours');
  await page.click('form:has(input[name=list_name]) button[type=submit]');
  await page.waitForFunction(() => location.hash.includes('list_id='));
  await settle();
  const listId = new URL(page.url().replace('#/contacts', '')).searchParams.get('list_id');
  const rows = ['phone;name;email', `+212612345101;"${XSS_NAME.replace(/"/g, '""')}";karim@example.ma`];
  for (let i = 2; i <= 12; i++) rows.push(`+2126123451${String(i).padStart(2, '0')};Client ${i};`);
  await page.setInputFiles('input[type=file]', { name: 'contacts.csv', mimeType: 'text/csv', buffer: Buffer.from(rows.join('\r\n') + '\r\n') });
  await page.selectOption('select[name=import_list]', listId);
  await page.click('form:has(input[type=file]) button[type=submit]');
  await page.waitForFunction(() => /12/.test(document.querySelector('.progress-row')?.textContent || ''));
  const progressMax = await page.getAttribute('progress', 'max');
  check(progressMax === '12' && (await page.getAttribute('progress', 'value')) === '12', 'the CSV import shows its progress to 12 of 12');
  await screenshot('contacts-imported');
  await visit('contacts-list', `#/contacts?list_id=${listId}`, () => page.waitForSelector('main table'));
  check((await page.textContent('main table')).includes(XSS_NAME) && (await page.locator('main img').count()) === 0,
    'a contact name holding <script> and an onerror <img> is shown as text');

  // ---- a campaign to that list, watched to 100%
  await visit('campaigns', '#/campaigns');
  await page.fill('input[name=name]', 'Soldes du parcours');
  await page.fill('textarea[name=body]', 'Bonjour {{name}}, -20% ce week-end. STOP au 3030');
  await page.selectOption('select[name=list_id]', listId);
  await page.click('form:has(input[name=name]) button[type=submit]');
  await page.waitForFunction(() => /#\/campaigns\/cmp_/.test(location.hash));
  await settle();
  await page.click('text=Lancer maintenant');
  let seen = new Set();
  const started = Date.now();
  let pctNow = 0;
  while (Date.now() - started < 60000) {
    pctNow = Number(await page.getAttribute('.progress-pct', 'data-pct'));
    seen.add(pctNow);
    if (pctNow === 100) break;
    await sleep(200);
  }
  check(pctNow === 100, 'the campaign reaches 100% on the page', [...seen]);
  check(await page.textContent('.legend li[data-status=delivered] .count') === '12', 'its counts show 12 delivered');
  await settle();
  await screenshot('campaign-done');
  check(problems.length === 0, 'campaign page: no console error while it ran', problems);

  // ---- a webhook, its test event and its deliveries log
  await visit('webhooks', '#/webhooks');
  await page.fill('input[name=url]', env.WALK_HOOK_URL);
  await page.click('form button[type=submit]');
  await page.waitForSelector('main table a');
  await page.click('main table button:has-text("Tester")');
  await page.waitForSelector('.notice-ok');
  const hookHref = await page.getAttribute('main table a', 'href');
  let deliveries = 0;
  for (let i = 0; i < 40 && deliveries === 0; i++) {
    await load(hookHref);
    deliveries = await page.locator('main table tbody tr').count();
    if (deliveries === 0) await sleep(250);
  }
  check(deliveries > 0, 'the test event appears in the deliveries log');
  await visit('webhook-deliveries', hookHref);

  // a receiver answering 410 Gone: the delivery fails at once; it is replayed from the log
  await visit('webhooks-two', '#/webhooks');
  await page.fill('input[name=url]', env.WALK_GONE_HOOK_URL);
  await page.click('form button[type=submit]');
  const goneRow = `main table tr:has-text("${env.WALK_GONE_HOOK_URL}")`;
  await page.waitForSelector(goneRow);
  await page.click(`${goneRow} button:has-text("Tester")`);
  await page.waitForSelector('.notice-ok');
  const goneHref = await page.getAttribute(`${goneRow} a`, 'href');
  let failedRows = 0;
  for (let i = 0; i < 40 && failedRows === 0; i++) {
    await load(goneHref);
    failedRows = await page.locator('main table tbody tr:has(button:has-text("Rejouer"))').count();
    if (failedRows === 0) await sleep(250);
  }
  check(failedRows === 1, 'a delivery answered 410 shows as failed, with its code, and a replay button',
    await page.textContent('main').catch(() => ''));
  check((await page.textContent('main table')).includes('410'), 'the deliveries log shows the response code 410');
  problems = [];
  await page.click('main table button:has-text("Rejouer")');
  await page.waitForSelector('.notice-ok');
  await settle();
  check((await page.locator('main table tbody tr').count()) === 2 && problems.length === 0,
    'the replay queues a new delivery of the event', problems);
  await screenshot('webhook-replayed');

  await visit('otp', '#/otp', () => page.waitForSelector('main table'));
  check(!(await page.textContent('main')).includes(code), 'the OTP page shows sessions, never a code');

  // ---- a top-up through Stripe's stand-in: the balance grows, an invoice appears
  await visit('billing', '#/billing');
  const balanceBefore = await page.textContent('.stat-value');
  await page.fill('input[name=ice]', '001234567000089');
  await page.fill('input[name=if]', '12345678');
  await page.fill('input[name=rc]', 'Casa 123456');
  await page.fill('input[name=address]', '12 boulevard Zerktouni');
  await page.fill('input[name=city]', 'Casablanca');
  await page.click('form:has(input[name=ice]) button[type=submit]');
  await page.waitForSelector('form:has(input[name=ice]) .notice-ok');
  await page.fill('input[name=amount_mad]', '120');
  await page.selectOption('select[name=payment_method]', 'stripe');
  problems = [];
  await page.click('form:has(input[name=amount_mad]) button[type=submit]');
  await page.waitForSelector('#pay');
  await screenshot('stripe-checkout');
  await page.click('#pay');
  await page.waitForURL(/\/console\/#\/billing\?topup=/);
  await settle();
  check(problems.length === 0, 'back from the checkout: no console error, no failed request', problems);
  await page.waitForSelector('.notice-ok');
  const balanceAfter = await page.textContent('.stat-value');
  check(balanceAfter !== balanceBefore, 'the balance shown grew after the payment', { before: balanceBefore, after: balanceAfter });
  await screenshot('billing-after-topup');
  const invoiceLinks = await page.locator('main a[href^="#/invoice/"]').count();
  check(invoiceLinks >= 1, 'a new invoice is listed');
  const invoiceHref = await page.getAttribute('main a[href^="#/invoice/"]', 'href');
  await visit('invoice', invoiceHref, () => page.waitForSelector('.invoice'));
  const invoiceText = await page.textContent('.invoice');
  check(/001234567000089/.test(invoiceText) && /TVA/.test(invoiceText) && /\d{4}-\d{6}/.test(invoiceText),
    'the invoice holds the buyer ICE, the TVA and a yearly number');
  await page.emulateMedia({ media: 'print' });
  await page.pdf({ path: path.join(out, 'invoice.pdf'), format: 'A4', printBackground: true });
  await page.emulateMedia({ media: 'screen' });
  check(fs.statSync(path.join(out, 'invoice.pdf')).size > 1000, 'the invoice prints to PDF (Chromium print-to-PDF)');

  // ---- the key revoked here is refused by the API
  await visit('api-keys-list', '#/keys');
  await page.click(`main table tr:has-text("Clé du parcours") button:has-text("Révoquer")`);
  await page.waitForFunction(() => [...document.querySelectorAll('main table tr')].some((tr) => tr.textContent.includes('Clé du parcours') && tr.textContent.includes('Révoquée')));
  const refused = curl('GET', '/v1/messages?limit=1', key);
  check(refused.status === 401, 'the revoked key gets 401', refused.status);
  await screenshot('api-key-revoked');

  await visit('team', '#/team');
  await visit('profile', '#/profile');
  await visit('overview-after', '#/overview', () => page.waitForSelector('.chart'));

  // ---- English
  await page.click('button.lang');
  await page.waitForSelector('#nav a[data-page=overview]');
  await settle();
  check((await page.textContent('#nav')).includes('Overview') && (await page.getAttribute('html', 'lang')) === 'en', 'the English switch translates the console');
  await screenshot('overview-en');
  for (const route of ['messages', 'campaigns', 'contacts', 'keys', 'webhooks', 'otp', 'billing', 'team', 'profile']) {
    await visit(`${route}-en`, `#/${route}`);
  }
  await page.click('button.lang');
  await page.waitForSelector('#nav a[data-page=overview]');

  // ---- 360 px wide
  await page.setViewportSize({ width: 360, height: 780 });
  await visit('overview-360', '#/overview');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, 'nothing overflows sideways at 360 px', overflow);
  await page.click('.menu-toggle');
  await page.waitForSelector('#nav.open');
  await screenshot('menu-360');
  await visit('messages-360', `#/messages?to=${encodeURIComponent(to)}`);
  await visit('campaign-360', '#/campaigns');
  await page.setViewportSize({ width: 1440, height: 900 });

  // ---- keyboard: the sign-out button is reached and pressed by keyboard alone
  let reached = false;
  await page.goto(`${base}/console/#/overview`);
  await settle();
  for (let i = 0; i < 30 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.textContent === 'Se déconnecter');
  }
  check(reached, 'the sign-out button is reachable by keyboard');
  await page.keyboard.press('Enter');
  await page.waitForSelector('input[type=email]');
  // the old cookie, sent again by hand, is refused: the session was revoked, not only forgotten
  const replayed = execFileSync('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-H', `Cookie: envoisms_session=${sessionCookie.value}`,
    `${base}/v1/console/session`], { encoding: 'utf8' });
  check(replayed === '401', 'after sign-out the old session cookie gets 401', replayed);

  // ---- the operator area
  problems = [];
  await page.fill('input[type=email]', env.WALK_OPERATOR_EMAIL);
  await page.fill('input[type=password]', env.WALK_OPERATOR_PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForSelector('#nav a[data-page=operator]');
  await visit('operator-accounts', '#/operator/accounts', () => page.waitForSelector('main table'));
  await visit('operator-carriers', '#/operator/carriers');
  await visit('operator-workers', '#/operator/workers');
  await visit('operator-dead-letters', '#/operator/dead-letters');

}

main().then(() => check(true, 'the walk ran to its end'), (err) => {
  check(false, 'the walk ran to its end', String(err && err.stack || err));
}).finally(async () => {
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify(results, null, 2));
  if (browser) await browser.close().catch(() => {});
  process.exit(failures ? 1 : 0);
});
