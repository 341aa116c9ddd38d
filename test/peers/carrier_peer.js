#!/usr/bin/env node
// carrier_peer.js — a real HTTP carrier on 127.0.0.1 for the TAP tests and
// the dispatch benchmark. Two shapes:
//   --kind http      the generic JSON carrier: POST <any path>, body
//                    {"id","to","from","body",...}; replies {"id": "c-<n>"}.
//   --kind whatsapp  the WhatsApp Cloud API: POST /<version>/<phone id>/messages
//                    with Bearer --token; replies {"messages":[{"id":"wamid.<n>"}]}.
// Behaviour, by recipient:
//   numbers ending in --reject-suffix (default 99) → 400 rejection (http: {"error":{"code":"INVALID_NUMBER"}},
//                          whatsapp: Meta error 131026, undeliverable)
//   --fail-first N       → the first N requests for each message answer
//                          --fail-status (default 503) before success
//   --delay MS           → every reply waits MS
//   --dlr-url URL        → after a success, POST a delivery report there
//                          (X-Carrier-Token: --dlr-token; Authorization: Bearer --dlr-key),
//                          after --dlr-delay MS; --dlr-first sends it before replying
// Every request is appended as one JSON line to --log (if given):
//   {"n", "at" (unix seconds), "id" (our message id), "to", "status", "auth", "idem", "body"}.
// Prints "listening <port>" once ready. --port 0 picks a free port.
//
// --kind whatsapp also plays what Meta checks and calls back:
//   - a message Meta would refuse gets 400 with Meta's error 131009
//     (Parameter value is not valid): an unknown type; interactive reply
//     buttons other than 1 to 3 with titles of 1 to 20 characters; a
//     cta_url without a url or with a display_text over 20 characters; an
//     interactive body over 1024 characters; a template without name and
//     language code;
//   - POST /_meta/inbound {"from", "text", "wamid", "phone_number_id",
//     "display_phone_number", "name", "timestamp", "times"} makes it deliver
//     a customer's message the way Meta does: a "messages" webhook to
//     --callback-url, signed X-Hub-Signature-256 with --app-secret, `times`
//     times (Meta retries); answers {"deliveries": [{"status", "body"}]}.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const crypto = require('node:crypto');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const kind = args.kind || 'http';
const failFirst = parseInt(args['fail-first'] || '0', 10);
const failStatus = parseInt(args['fail-status'] || '503', 10);
const delay = parseInt(args.delay || '0', 10);
const dlrDelay = parseInt(args['dlr-delay'] || '50', 10);
const rejectSuffix = args['reject-suffix'] || '99';
const log = args.log ? fs.openSync(args.log, 'a') : null;
const seen = new Map();
let n = 0;

function dlr(ref, status) {
  if (!args['dlr-url']) return Promise.resolve();
  return new Promise((resolve) => {
    const body = JSON.stringify({ id: ref, status });
    const req = http.request(args['dlr-url'], {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Carrier-Token': args['dlr-token'] || '',
                 Authorization: 'Bearer ' + (args['dlr-key'] || '') },
    }, (res) => { res.resume(); res.on('end', resolve); });
    req.on('error', resolve);
    req.end(body);
  });
}

// Why Meta would refuse this message body (null when it would take it).
function metaRefusal(body) {
  const len = (s) => (typeof s === 'string' ? [...s].length : 0);
  if (body.type === 'text') return len(body.text && body.text.body) >= 1 ? null : 'text.body is required';
  if (body.type === 'template') {
    const t = body.template || {};
    return t.name && t.language && t.language.code ? null : 'template.name and template.language.code are required';
  }
  if (body.type !== 'interactive') return 'unknown message type ' + body.type;
  const it = body.interactive || {};
  const text = len(it.body && it.body.text);
  if (text < 1 || text > 1024) return 'interactive.body.text must be 1 to 1024 characters';
  if (it.type === 'button') {
    const buttons = (it.action && it.action.buttons) || [];
    if (buttons.length < 1 || buttons.length > 3) return 'reply buttons: 1 to 3';
    for (const b of buttons) {
      const title = len(b.reply && b.reply.title);
      if (b.type !== 'reply' || title < 1 || title > 20) return 'a reply button title must be 1 to 20 characters';
    }
    return null;
  }
  if (it.type === 'cta_url') {
    const p = (it.action && it.action.parameters) || {};
    if (!it.action || it.action.name !== 'cta_url') return 'action.name must be cta_url';
    if (len(p.display_text) < 1 || len(p.display_text) > 20) return 'display_text must be 1 to 20 characters';
    return len(p.url) >= 1 ? null : 'url is required';
  }
  return 'unknown interactive type ' + it.type;
}

// Deliver a customer's message as Meta does: a signed "messages" webhook.
function postSigned(url, raw) {
  return new Promise((resolve) => {
    const sig = 'sha256=' + crypto.createHmac('sha256', args['app-secret'] || '').update(raw).digest('hex');
    const req = http.request(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Hub-Signature-256': sig },
    }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString() }));
    });
    req.on('error', (e) => resolve({ status: 0, body: String(e) }));
    req.end(raw);
  });
}

async function inbound(spec) {
  const from = String(spec.from || '').replace(/^\+/, '');
  const message = { from, id: spec.wamid || 'wamid.in' + (++n),
                    timestamp: String(spec.timestamp || Math.floor(Date.now() / 1000)), type: 'text',
                    text: { body: spec.text || '' } };
  const raw = JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: 'waba-1', changes: [{
    field: 'messages',
    value: { messaging_product: 'whatsapp',
             metadata: { display_phone_number: String(spec.display_phone_number || '').replace(/^\+/, ''),
                         phone_number_id: String(spec.phone_number_id || '') },
             contacts: [{ profile: { name: spec.name || 'Client' }, wa_id: from }],
             messages: [message] } }] }] });
  const deliveries = [];
  for (let i = 0; i < (spec.times || 1); i++) deliveries.push(await postSigned(args['callback-url'], raw));
  return { deliveries };
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const raw = Buffer.concat(chunks).toString();
    let body = {};
    try { body = JSON.parse(raw); } catch (e) { /* logged as is */ }
    if (kind === 'whatsapp' && req.url === '/_meta/inbound') {
      const answer = await inbound(body);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(answer));
      return;
    }
    const num = ++n;
    const to = kind === 'whatsapp' ? '+' + (body.to || '') : body.to || '';
    const key = kind === 'whatsapp' ? raw : body.id;
    const count = (seen.get(key) || 0) + 1;
    seen.set(key, count);
    let status = 200;
    let reply;
    let ref = null;
    if (kind === 'whatsapp' && req.headers.authorization !== 'Bearer ' + (args.token || 'wa-token')) {
      status = 401;
      reply = { error: { code: 190, message: 'Invalid OAuth access token' } };
    } else if (kind === 'whatsapp' && metaRefusal(body)) {
      status = 400;
      reply = { error: { code: 131009, message: '(#131009) Parameter value is not valid: ' + metaRefusal(body) } };
    } else if (to.endsWith(rejectSuffix)) {
      status = 400;
      reply = kind === 'whatsapp'
        ? { error: { code: 131026, message: 'Message undeliverable' } }
        : { error: { code: 'INVALID_NUMBER', message: 'the number does not exist' } };
    } else if (count <= failFirst) {
      status = failStatus;
      reply = { error: 'temporarily unavailable' };
    } else {
      ref = kind === 'whatsapp' ? 'wamid.' + num : 'c-' + num;
      reply = kind === 'whatsapp'
        ? { messaging_product: 'whatsapp', contacts: [{ input: body.to, wa_id: body.to }], messages: [{ id: ref }] }
        : { id: ref, status: 'accepted' };
    }
    if (log) {
      fs.writeSync(log, JSON.stringify({ n: num, at: Date.now() / 1000, id: body.id || null, to, status, path: req.url,
        auth: req.headers.authorization || null, idem: req.headers['idempotency-key'] || null,
        body }) + '\n');
    }
    if (ref && args['dlr-first']) await dlr(ref, 'delivered');
    const send = () => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(reply));
      if (ref && !args['dlr-first'] && args['dlr-url']) setTimeout(() => dlr(ref, 'delivered'), dlrDelay);
    };
    if (delay > 0) setTimeout(send, delay); else send();
  });
});
server.keepAliveTimeout = 60000;
server.listen(parseInt(args.port || '0', 10), '127.0.0.1', () => {
  process.stdout.write('listening ' + server.address().port + '\n');
});
process.on('SIGTERM', () => process.exit(0));
