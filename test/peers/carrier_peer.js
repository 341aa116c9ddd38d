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
'use strict';
const http = require('node:http');
const fs = require('node:fs');

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

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const raw = Buffer.concat(chunks).toString();
    let body = {};
    try { body = JSON.parse(raw); } catch (e) { /* logged as is */ }
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
