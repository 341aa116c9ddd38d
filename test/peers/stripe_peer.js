#!/usr/bin/env node
// stripe_peer.js — Stripe's API as documented, on 127.0.0.1, for the
// billing TAP test. It serves:
//   POST /v1/checkout/sessions   form-encoded (bracket notation, as Stripe
//       documents it), "Authorization: Bearer --key"; checks what Stripe
//       checks for a one-off payment session (mode, line_items with
//       price_data.currency / unit_amount / product_data.name and quantity,
//       success_url, metadata limits) and answers a checkout.session object
//       {id: "cs_test_...", object, url, amount_total, currency, metadata,
//       client_reference_id, payment_status: "unpaid", status: "open", ...}.
//       Idempotency-Key as Stripe: the same key and parameters replay the
//       first answer (Idempotent-Replayed: true), other parameters are a 400
//       idempotency_error. Errors are Stripe's {"error": {type, code,
//       message, param}} (401 for a wrong key, its message masking the key).
// and, for the test only (never Stripe's), under /_test:
//   POST /_test/mode   {"delay_ms": N, "status": S}: answer sessions after N ms,
//       or with HTTP S and an api_error (0 = normal again)
//   POST /_test/event  {"session": "cs_...", "type", "payment_status",
//       "amount_total", "secret", "offset" (seconds added to t), "header"
//       (a raw Stripe-Signature to send instead; "" sends none),
//       "extra_v1" (a wrong v1 before the right one, as during a secret
//       rotation), "send": false (build and sign only: /_test/replay sends
//       it)}: builds the event as Stripe does (pretty-printed JSON,
//       data.object the session with its payment state, a customer name
//       outside ASCII), signs it (t=<unix time>,v1=<HMAC-SHA256 of
//       "t.body" under --webhook-secret>,v0=...) and POSTs it to
//       --webhook-url; answers {"status", "body", "event_id", "header"}
//   POST /_test/replay {"index": i}: sends delivery i again, byte for byte
//       with its header (a replay within the tolerance)
// and Checkout's hosted page, as a browser sees it (for the console's
// browser test): GET /c/pay/<session id> is a page with the amount and a
// "Payer" button; its POST marks the session paid, delivers the signed
// checkout.session.completed (as /_test/event does) and answers 303 to the
// session's success_url with {CHECKOUT_SESSION_ID} filled in.
// Every API request and every event delivery is one JSON line in --log:
//   API:   {"n", "at", "kind": "api", "path", "auth", "idem", "content_type",
//           "form" (the raw body), "params" (decoded), "status", "replayed"}
//   event: {"n", "at", "kind": "event", "event_id", "type", "session",
//           "status" (our answer), "answer"}
// Prints "listening <port>" once ready. --port 0 picks a free port.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const crypto = require('node:crypto');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const key = args.key || 'sk_test_peer';
const webhookSecret = args['webhook-secret'] || '';
const log = args.log ? fs.openSync(args.log, 'a') : null;
const sessions = new Map();
const idempotent = new Map();
const deliveries = [];
let mode = { delay_ms: 0, status: 0 };
let n = 0;
let port = 0;

function record(line) {
  if (log) fs.writeSync(log, JSON.stringify({ n: ++n, at: Date.now() / 1000, ...line }) + '\n');
}

// a[b][0][c]=v → {a: {b: [{c: v}]}} (Stripe's form encoding)
function decodeForm(raw) {
  const out = {};
  for (const [name, value] of new URLSearchParams(raw)) {
    const m = name.match(/^([^[\]]+)((?:\[[^[\]]*\])*)$/);
    if (!m) return { error: `Invalid parameter name: ${name}` };
    const path = [m[1], ...[...m[2].matchAll(/\[([^[\]]*)\]/g)].map((x) => x[1])];
    let node = out;
    for (let i = 0; i < path.length; i++) {
      const k = /^\d+$/.test(path[i]) ? Number(path[i]) : path[i];
      if (i === path.length - 1) node[k] = value;
      else {
        if (node[k] === undefined) node[k] = /^\d+$/.test(path[i + 1]) ? [] : {};
        node = node[k];
      }
    }
  }
  return { params: out };
}

function stripeError(status, type, message, param, code) {
  return { status, body: { error: { type, message, ...(param ? { param } : {}), ...(code ? { code } : {}) } } };
}

const CURRENCIES = new Set(['mad', 'eur', 'usd', 'gbp']);

function createSession(p) {
  if (!p.mode) return stripeError(400, 'invalid_request_error', 'Missing required param: mode.', 'mode');
  if (!['payment', 'setup', 'subscription'].includes(p.mode))
    return stripeError(400, 'invalid_request_error', `Invalid mode: must be one of payment, setup, or subscription`, 'mode');
  if (!p.success_url) return stripeError(400, 'invalid_request_error', 'Missing required param: success_url.', 'success_url');
  const items = p.line_items;
  if (!Array.isArray(items) || items.length === 0)
    return stripeError(400, 'invalid_request_error', 'You must provide at least one line item.', 'line_items');
  let total = 0;
  let currency = null;
  for (let i = 0; i < items.length; i++) {
    const it = items[i] || {};
    const pd = it.price_data || {};
    const at = `line_items[${i}]`;
    if (!pd.currency) return stripeError(400, 'invalid_request_error', 'Missing required param: currency.', `${at}[price_data][currency]`);
    if (!CURRENCIES.has(pd.currency)) return stripeError(400, 'invalid_request_error', `Invalid currency: ${pd.currency}.`, `${at}[price_data][currency]`);
    if (!/^\d+$/.test(pd.unit_amount || '')) return stripeError(400, 'invalid_request_error', 'Invalid integer: ' + pd.unit_amount, `${at}[price_data][unit_amount]`);
    if (!pd.product_data || !pd.product_data.name) return stripeError(400, 'invalid_request_error', 'Missing required param: product_data[name].', `${at}[price_data][product_data][name]`);
    if (!/^[1-9]\d*$/.test(it.quantity || '')) return stripeError(400, 'invalid_request_error', 'Missing required param: quantity.', `${at}[quantity]`);
    if (currency && currency !== pd.currency) return stripeError(400, 'invalid_request_error', 'All line items must use the same currency.', `${at}[price_data][currency]`);
    currency = pd.currency;
    total += Number(pd.unit_amount) * Number(it.quantity);
  }
  if (total < 50) return stripeError(400, 'invalid_request_error', 'The Checkout Session\'s total amount due must add up to at least 0.50', 'line_items', 'amount_too_small');
  const meta = p.metadata || {};
  for (const [k, v] of Object.entries(meta)) {
    if (k.length > 40 || String(v).length > 500) return stripeError(400, 'invalid_request_error', 'Invalid metadata', `metadata[${k}]`);
  }
  const id = 'cs_test_' + crypto.randomBytes(24).toString('base64url').replace(/[-_]/g, 'x');
  const now = Math.floor(Date.now() / 1000);
  const session = {
    id, object: 'checkout.session', amount_subtotal: total, amount_total: total, cancel_url: p.cancel_url || null,
    client_reference_id: p.client_reference_id || null, created: now, currency, customer: null,
    customer_details: null, expires_at: now + 86400, livemode: false, metadata: meta, mode: p.mode,
    payment_intent: null, payment_status: 'unpaid', status: 'open', success_url: p.success_url,
    url: `http://127.0.0.1:${port}/c/pay/${id}`,
  };
  sessions.set(id, session);
  return { status: 200, body: session };
}

function api(req, res, raw) {
  const idem = req.headers['idempotency-key'] || null;
  const finish = (out, replayed) => {
    record({ kind: 'api', path: req.url, auth: req.headers.authorization || null, idem,
      content_type: req.headers['content-type'] || null, form: raw, params: out.params || null,
      status: out.status, replayed: !!replayed });
    const headers = { 'Content-Type': 'application/json', 'Request-Id': 'req_' + crypto.randomBytes(7).toString('hex') };
    if (idem) headers['Idempotency-Key'] = idem;
    if (replayed) headers['Idempotent-Replayed'] = 'true';
    const send = () => { res.writeHead(out.status, headers); res.end(JSON.stringify(out.body, null, 2)); };
    if (mode.delay_ms > 0) setTimeout(send, mode.delay_ms); else send();
  };
  if (req.method !== 'POST' || req.url !== '/v1/checkout/sessions') {
    return finish(stripeError(404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${req.url}).`));
  }
  const auth = req.headers.authorization || '';
  if (auth !== 'Bearer ' + key) {
    const given = auth.replace(/^Bearer /, '');
    return finish(stripeError(401, 'invalid_request_error',
      `Invalid API Key provided: ${given.slice(0, 8)}********${given.slice(-4)}`, null, 'api_key_invalid'));
  }
  if (mode.status) return finish(stripeError(mode.status, 'api_error', 'An unknown error occurred'));
  const decoded = decodeForm(raw);
  if (decoded.error) return finish(stripeError(400, 'invalid_request_error', decoded.error));
  if (idem && idempotent.has(idem)) {
    const first = idempotent.get(idem);
    if (first.raw !== raw) {
      return finish({ ...stripeError(400, 'idempotency_error',
        'Keys for idempotent requests can only be used with the same parameters they were first used with.'),
        params: decoded.params });
    }
    return finish({ ...first.out, params: decoded.params }, true);
  }
  const out = createSession(decoded.params);
  out.params = decoded.params;
  if (idem) idempotent.set(idem, { raw, out });
  finish(out);
}

function deliver(payload, header) {
  return new Promise((resolve) => {
    const headers = { 'Content-Type': 'application/json; charset=utf-8', 'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)' };
    if (header !== '') headers['Stripe-Signature'] = header;
    const req = http.request(args['webhook-url'], { method: 'POST', headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', (e) => resolve({ status: 0, body: String(e) }));
    req.end(payload);
  });
}

function sign(payload, secret, t) {
  return crypto.createHmac('sha256', secret).update(`${t}.${payload}`, 'utf8').digest('hex');
}

async function event(opts) {
  const base = sessions.get(opts.session) || { id: opts.session, object: 'checkout.session', amount_total: 1000, currency: 'eur', metadata: {} };
  const type = opts.type || 'checkout.session.completed';
  const object = { ...base };
  if (type === 'checkout.session.completed' || type === 'checkout.session.async_payment_succeeded') {
    object.status = 'complete';
    object.payment_status = opts.payment_status || 'paid';
    object.payment_intent = 'pi_' + crypto.randomBytes(12).toString('hex');
    object.customer_details = { email: 'said@example.ma', name: 'Saïd El Amrani — client', address: { country: 'MA' } };
  } else if (type === 'checkout.session.expired') {
    object.status = 'expired';
  } else if (type === 'checkout.session.async_payment_failed') {
    object.status = 'complete';
    object.payment_status = 'unpaid';
  }
  if (opts.amount_total !== undefined) object.amount_total = opts.amount_total;
  const t = Math.floor(Date.now() / 1000) + (opts.offset || 0);
  const ev = {
    id: 'evt_' + crypto.randomBytes(12).toString('hex'), object: 'event', api_version: '2024-06-20', created: t,
    data: { object }, livemode: false, pending_webhooks: 1, request: { id: null, idempotency_key: null }, type,
  };
  const payload = JSON.stringify(ev, null, 2);
  const v1 = sign(payload, opts.secret || webhookSecret, t);
  let header = `t=${t},` + (opts.extra_v1 ? `v1=${'0'.repeat(64)},` : '') + `v1=${v1},v0=${sign(payload, 'v0-' + webhookSecret, t)}`;
  if (opts.header !== undefined) header = opts.header;
  deliveries.push({ payload, header, event_id: ev.id, type, session: opts.session });
  if (opts.send === false) return { index: deliveries.length - 1, event_id: ev.id, header };
  return send(deliveries.length - 1);
}

async function send(index) {
  const d = deliveries[index];
  const answer = await deliver(d.payload, d.header);
  record({ kind: 'event', event_id: d.event_id, type: d.type, session: d.session, status: answer.status, answer: answer.body });
  return { index, status: answer.status, body: answer.body, event_id: d.event_id, header: d.header };
}

async function testApi(req, res, raw) {
  let body = {};
  try { body = JSON.parse(raw || '{}'); } catch (e) { /* empty */ }
  let out;
  if (req.url === '/_test/mode') {
    mode = { delay_ms: body.delay_ms || 0, status: body.status || 0 };
    out = mode;
  } else if (req.url === '/_test/event') {
    out = await event(body);
  } else if (req.url === '/_test/replay') {
    out = deliveries[body.index] ? await send(body.index) : { error: 'no such delivery' };
  } else {
    res.writeHead(404); res.end(); return;
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(out));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Checkout's hosted page: the session's amount and one button that pays.
async function checkoutPage(req, res) {
  const id = decodeURIComponent(req.url.slice('/c/pay/'.length));
  const session = sessions.get(id);
  if (!session) {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('no such checkout session');
    return;
  }
  if (req.method === 'POST') {
    const sent = await event({ session: id });
    record({ kind: 'checkout', session: id, status: sent.status });
    res.writeHead(303, { Location: session.success_url.replace('{CHECKOUT_SESSION_ID}', id) });
    res.end();
    return;
  }
  const amount = (session.amount_total / 100).toFixed(2) + ' ' + session.currency.toUpperCase();
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>Checkout (test)</title><link rel="icon" href="data:,"></head>
<body><h1>Paiement test</h1><p id="amount">${escapeHtml(amount)}</p>
<form method="post" action="/c/pay/${encodeURIComponent(id)}"><button type="submit" id="pay">Payer ${escapeHtml(amount)}</button></form>
</body></html>`);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8');
    if (req.url.startsWith('/_test/')) testApi(req, res, raw);
    else if (req.url.startsWith('/c/pay/')) checkoutPage(req, res);
    else api(req, res, raw);
  });
});
server.keepAliveTimeout = 60000;
server.listen(parseInt(args.port || '0', 10), '127.0.0.1', () => {
  port = server.address().port;
  process.stdout.write('listening ' + port + '\n');
});
process.on('SIGTERM', () => process.exit(0));
