#!/usr/bin/env node
// webhook_receiver.js — a customer's webhook endpoint on 127.0.0.1 for the
// TAP tests and the webhook benchmark. It verifies every signature scheme
// of every delivery:
//   - the contract's X-EnvoiSMS.ma-Signature, with the contract's own Node
//     snippet (verifySignature below, the Webhooks Guide's code minus its
//     TypeScript annotations);
//   - X-EnvoiSMS-Signature as a receiver written from the official SDKs'
//     READMEs checks it: the SDKs' verifyWebhookSignature algorithm (both
//     the "sha256=<hex>" form and the "t=<unix>,v1=<hex of HMAC(secret,
//     t.body)>" form, t within 300 s), and the contract's snippet over that
//     header too;
//   - Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature:
//     v1,<base64 HMAC-SHA256 of "id.timestamp.body">, the key being the
//     base64-decoded part after "whsec_").
// Options: --secret S (required), --port P (0 = free), --log FILE (one JSON
// line per request: {"path","event_id","type","status","sig_ok","std_ok",
// "answered","at", "sdk_ok","ref_ok","sdk_signature","same_signature",
// "event","timestamp","created_at"}), --answer CODE (default 200), --fail-first N (answer
// 500 to the first N attempts of each event), --redirect (answer 302 to
// /redirected, which logs path "/redirected" if ever followed), --delay MS
// (answer after MS: a slow receiver), --host H (default 127.0.0.1).
// Prints "listening <port>" once ready.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const crypto = require('node:crypto');

// ---- the contract's snippet (Webhooks Guide, "Signature Validation")
function verifySignature(body, sig, secret) {
  const hmac = crypto.createHmac('sha256', secret)
    .update(body)
    .digest('hex');

  return crypto.timingSafeEqual(Buffer.from(sig), Buffer.from('sha256=' + hmac));
}
// ----

// The official SDKs' algorithm (Node and Python clients 1.1.0, written anew
// from their documented behaviour): a header holding "t=" and "v1=" is the
// timestamped form, anything else "sha256=<hex>" or a bare hex digest.
function verifySdk(body, header, secret, toleranceSeconds = 300) {
  if (!body || !header || !secret) return false;
  let signed;
  let given;
  if (header.includes('t=') && header.includes('v1=')) {
    const parts = {};
    for (const item of header.split(',')) {
      const at = item.indexOf('=');
      if (at > 0) parts[item.slice(0, at).trim()] = item.slice(at + 1).trim();
    }
    const t = parseInt(parts.t, 10);
    if (!t || !parts.v1 || Math.abs(Math.floor(Date.now() / 1000) - t) > toleranceSeconds) return false;
    signed = t + '.' + body;
    given = parts.v1;
  } else {
    signed = body;
    given = header.replace(/^sha256=/, '');
  }
  const expected = crypto.createHmac('sha256', secret).update(signed).digest('hex');
  return given.length === expected.length && crypto.timingSafeEqual(Buffer.from(given, 'hex'), Buffer.from(expected, 'hex'));
}

function verifyStandard(headers, body, secret) {
  const id = headers['webhook-id'];
  const ts = headers['webhook-timestamp'];
  const sigs = (headers['webhook-signature'] || '').split(' ');
  if (!id || !ts) return false;
  if (Math.abs(Date.now() / 1000 - parseInt(ts, 10)) > 300) return false;
  const key = secret.startsWith('whsec_') ? Buffer.from(secret.slice(6), 'base64') : Buffer.from(secret);
  const expected = crypto.createHmac('sha256', key).update(id + '.' + ts + '.' + body).digest('base64');
  return sigs.some((s) => {
    const [v, sig] = s.split(',');
    return v === 'v1' && sig && sig.length === expected.length
      && crypto.timingSafeEqual(Buffer.from(sig), Buffer.from(expected));
  });
}

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const k = process.argv[i].replace(/^--/, '');
  if (k === 'redirect') { args.redirect = true; continue; }
  args[k] = process.argv[++i];
}
const secret = args.secret || '';
const answer = parseInt(args.answer || '200', 10);
const failFirst = parseInt(args['fail-first'] || '0', 10);
const delay = parseInt(args.delay || '0', 10);
const log = args.log ? fs.openSync(args.log, 'a') : null;
const attempts = new Map();

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    let event = {};
    try { event = JSON.parse(body); } catch (e) { /* logged */ }
    const sig = req.headers['x-envoisms.ma-signature'] || '';
    let sigOk = false;
    try { sigOk = verifySignature(body, sig, secret); } catch (e) { sigOk = false; }
    const stdOk = verifyStandard(req.headers, body, secret);
    const sdkSig = req.headers['x-envoisms-signature'] || '';
    let sdkOk = false;
    try { sdkOk = verifySdk(body, sdkSig, secret); } catch (e) { sdkOk = false; }
    let refOk = false;
    try { refOk = verifySignature(body, sdkSig, secret); } catch (e) { refOk = false; }
    const count = (attempts.get(event.id) || 0) + 1;
    attempts.set(event.id, count);
    let code = answer;
    const headers = { 'Content-Type': 'text/plain' };
    if (req.url === '/redirected') code = 200;
    else if (args.redirect) { code = 302; headers.Location = '/redirected'; }
    else if (count <= failFirst) code = 500;
    if (log) {
      fs.writeSync(log, JSON.stringify({
        path: req.url, event_id: event.id || null, type: event.type || null,
        status: event.data ? event.data.status : null, message_id: event.data ? event.data.id : null,
        metadata: event.data ? event.data.metadata : null, sig_ok: sigOk, std_ok: stdOk,
        sdk_ok: sdkOk, ref_ok: refOk, sdk_signature: sdkSig, same_signature: sdkSig === sig,
        event: event.event || null, timestamp: event.timestamp || null, created_at: event.created_at || null,
        webhook_id: req.headers['webhook-id'] || null, answered: code, attempt: count, at: Date.now() / 1000,
      }) + '\n');
    }
    const send = () => { res.writeHead(code, headers); res.end(code === 200 ? 'ok' : 'no'); };
    if (delay > 0) setTimeout(send, delay); else send();
  });
});
server.keepAliveTimeout = 60000;
server.listen(parseInt(args.port || '0', 10), args.host || '127.0.0.1', () => {
  process.stdout.write('listening ' + server.address().port + '\n');
});
process.on('SIGTERM', () => process.exit(0));
