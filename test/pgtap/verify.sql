-- verify.sql — POST /v1/verify/send, POST /v1/verify/check, GET /v1/verify/:id
-- and the domain functions verify_send / verify_check / verify_get.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(129);

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset
CREATE TEMP TABLE r AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks',
    '{"url": "https://hooks.example.ma/v", "events": ["verify.success"]}');

-- ---- send: the contract's shape, a real debited message, only an HMAC stored
CREATE TEMP TABLE s AS SELECT * FROM pg_temp.call('POST', '/v1/verify/send',
    '{"to": "+212612345678", "brand": "MonApp", "channel": "sms", "code_length": 6, "expiry": 600}');
SELECT is((SELECT status FROM s), 201, 'send → 201');
SELECT is((SELECT array_agg(k ORDER BY k) FROM s, jsonb_object_keys(body) k),
          ARRAY['channel', 'expires_at', 'message_id', 'session_id', 'status', 'to'], 'send: the contract''s fields');
SELECT matches((SELECT body->>'session_id' FROM s), '^vrf_[0-9a-f]{28}$', 'send: session_id is vrf_…');
SELECT is((SELECT body->>'status' FROM s), 'sent', 'send: status sent');
SELECT is((SELECT body->>'to' FROM s), '+212612345678', 'send: to in E.164');
SELECT is((SELECT v.expires_at - v.created_at || ' ' || (envoisms.iso_time(v.expires_at) = s.body->>'expires_at')
             FROM s JOIN envoisms.verify_sessions v ON v.session_id = s.body->>'session_id'), '00:10:00 true',
          'send: expires_at = created + expiry');
SELECT body->>'session_id' AS sid, body->>'message_id' AS mid FROM s \gset
SELECT is((SELECT status || ' ' || channel || ' ' || charged_mad FROM envoisms.messages WHERE message_id = :'mid'),
          'queued sms 0.3100', 'send: a queued outbound message, charged like any other');
SELECT is(envoisms.account_balance(:'acc'), 99.69::numeric, 'send: the balance is debited');
SELECT matches((SELECT body FROM envoisms.messages WHERE message_id = :'mid'), '^MonApp : votre code de vérification est [0-9]{6}\.',
               'send: the default text carries the brand and a 6-digit code');
SELECT is((SELECT metadata->>'verify_session_id' FROM envoisms.messages WHERE message_id = :'mid'), :'sid',
          'send: the message points at its session');
SELECT substring(body FROM '[0-9]{6}') AS code FROM envoisms.messages WHERE message_id = :'mid' \gset
SELECT is((SELECT code_hmac FROM envoisms.verify_sessions WHERE session_id = :'sid'),
          envoisms.hmac_sha256_hex((SELECT secret FROM envoisms.verify_secret), :'sid' || ':' || :'code'),
          'send: the session stores HMAC(secret, session:code)');
SELECT is((SELECT count(*)::int FROM envoisms.verify_sessions v WHERE v::text LIKE '%' || :'code' || '%'), 0,
          'send: the code itself is stored nowhere in the session');
SELECT is((SELECT count(*)::int FROM pg_class c, aclexplode(c.relacl) a
            WHERE c.oid = 'envoisms.verify_secret'::regclass AND a.grantee = 0), 0,
          'the per-install secret is not readable by PUBLIC');
SELECT matches((SELECT secret FROM envoisms.verify_secret), '^[0-9a-f]{64}$', 'the secret is 32 random bytes');
SELECT ok((SELECT prosrc LIKE '%envoisms.random_digits(code_length)%' FROM pg_proc
            WHERE oid = 'envoisms.verify_send(text,text,text,text,int,int,text,text,text,boolean)'::regprocedure),
          'codes come from envoisms.random_digits (CSPRNG)');
SELECT ok((SELECT prosrc LIKE '%envoisms.secure_equals(given, x.code_hmac)%' FROM pg_proc
            WHERE oid = 'envoisms.verify_check(text,text,text)'::regprocedure),
          'check compares HMACs with secure_equals (constant time)');
-- uniform digits: chi-square over 20,000 digits, 9 degrees of freedom, p = 0.001 → 27.88
SELECT cmp_ok((SELECT sum((n - 2000.0) ^ 2 / 2000.0)::float8 FROM (
                  SELECT count(*) AS n
                    FROM (SELECT envoisms.random_digits(8 + 0 * g) AS s FROM generate_series(1, 2500) g) r,
                         regexp_split_to_table(r.s, '') d GROUP BY d) x),
              '<', 27.88::float8, 'random digits are uniform (chi-square, p = 0.001)');

-- ---- check
CREATE TEMP TABLE c1 AS SELECT * FROM pg_temp.call('POST', '/v1/verify/check',
    format('{"session_id": "%s", "code": "%s"}', :'sid', CASE WHEN :'code' = '000000' THEN '111111' ELSE '000000' END));
SELECT is((SELECT status FROM c1), 200, 'wrong code → 200');
SELECT is((SELECT body FROM c1), jsonb_build_object('session_id', :'sid', 'verified', false, 'status', 'failed', 'verified_at', NULL),
          'wrong code → verified false');
SELECT is((SELECT attempts FROM envoisms.verify_sessions WHERE session_id = :'sid'), 1, 'wrong code counts an attempt');
CREATE TEMP TABLE c2 AS SELECT * FROM pg_temp.call('POST', '/v1/verify/check',
    format('{"session_id": "%s", "code": "%s"}', :'sid', :'code'));
SELECT is((SELECT status FROM c2), 200, 'right code → 200');
SELECT is((SELECT body->'verified' FROM c2), 'true'::jsonb, 'right code → verified true');
SELECT is((SELECT array_agg(k ORDER BY k) FROM c2, jsonb_object_keys(body) k),
          ARRAY['session_id', 'status', 'verified', 'verified_at'], 'check: the contract''s fields, and status (the official clients read it)');
SELECT is((SELECT body->>'status' FROM c2), 'verified', 'right code → status verified');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE event_type = 'verify.success'
             AND payload::jsonb #>> '{data,id}' = :'sid'), 1, 'verify.success is queued for the subscribed webhook');
SELECT is((SELECT body FROM pg_temp.call('POST', '/v1/verify/check',
             format('{"session_id": "%s", "code": "%s"}', :'sid', :'code'))),
          jsonb_build_object('session_id', :'sid', 'verified', false, 'status', 'failed', 'verified_at', NULL),
          'single use: a second right check fails');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE event_type = 'verify.success'), 1,
          'single use: no second verify.success');
SELECT is((SELECT body FROM pg_temp.call('POST', '/v1/verify/check', '{"session_id": "vrf_0000", "code": "123456"}')),
          jsonb_build_object('session_id', 'vrf_0000', 'verified', false, 'status', 'failed', 'verified_at', NULL),
          'unknown session: the same answer as a wrong code');
CREATE TEMP TABLE g AS SELECT * FROM pg_temp.call('GET', '/v1/verify/' || :'sid');
SELECT is((SELECT status FROM g), 200, 'GET /v1/verify/:id → 200');
SELECT is((SELECT body->>'status' FROM g), 'verified', 'GET: status verified');
SELECT ok((SELECT body ?& ARRAY['id', 'to', 'channel', 'expires_at', 'verified_at', 'created_at'] FROM g),
          'GET: the contract''s fields');
SELECT * FROM pg_temp.fails('GET', '/v1/verify/vrf_01a2000000000000000000000000', NULL, 404, 'NOT_FOUND', 'GET unknown session');

-- ---- at most 5 wrong checks, then dead even for the right code
SELECT (envoisms.verify_send(:'acc', '+212611000001'))->>'session_id' AS sid2 \gset
SELECT substring(m.body FROM '[0-9]{6}') AS code2 FROM envoisms.messages m
 WHERE m.metadata->>'verify_session_id' = :'sid2' \gset
SELECT is(envoisms.verify_check(:'acc', :'sid2', 'x' || g)->'verified', 'false'::jsonb, 'wrong check ' || g)
  FROM generate_series(1, 5) g;
SELECT is((SELECT attempts || ' ' || status FROM envoisms.verify_sessions WHERE session_id = :'sid2'), '5 failed',
          'five wrong checks: the session is dead');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s", "code": "%s"}', :'sid2', :'code2'),
                            429, 'TOO_MANY_ATTEMPTS', 'the right code after 5 wrong ones');
SELECT is((SELECT body->>'status' FROM pg_temp.call('GET', '/v1/verify/' || :'sid2')), 'failed', 'GET: status failed');

-- ---- expiry
SELECT (envoisms.verify_send(:'acc', '+212611000002', expiry => 60))->>'session_id' AS sid3 \gset
UPDATE envoisms.verify_sessions SET expires_at = now() - interval '1 second', created_at = now() - interval '61 seconds'
 WHERE session_id = :'sid3';
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s", "code": "123456"}', :'sid3'),
                            410, 'EXPIRED', 'check of an expired session');
SELECT is((SELECT body->>'status' FROM pg_temp.call('GET', '/v1/verify/' || :'sid3')), 'expired', 'GET: status expired');

-- ---- pending sessions count their attempts; a session can be voided
SELECT (envoisms.verify_send(:'acc', '+212611000003'))->>'session_id' AS sid4 \gset
SELECT substring(m.body FROM '[0-9]{6}') AS code4 FROM envoisms.messages m WHERE m.metadata->>'verify_session_id' = :'sid4' \gset
SELECT is(envoisms.verify_check(:'acc', :'sid4', '000')->'verified', 'false'::jsonb, 'a wrong check on a fresh session');
SELECT is((SELECT body->>'status' || ' ' || (body->>'attempts') FROM pg_temp.call('GET', '/v1/verify/' || :'sid4')), 'pending 1',
          'GET: status pending (the official clients'' name for a live session) and attempts');
CREATE TEMP TABLE v AS SELECT * FROM pg_temp.call('POST', '/v1/verify/' || :'sid4' || '/cancel', '{}');
SELECT is((SELECT status || ' ' || (body->>'status') || ' ' || (body->>'id') FROM v), '200 voided ' || :'sid4',
          'POST /v1/verify/:id/cancel → 200, status voided');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s", "code": "%s"}', :'sid4', :'code4'),
                            410, 'EXPIRED', 'the right code on a voided session');
SELECT is((SELECT status || ' ' || (body->>'status') FROM pg_temp.call('POST', '/v1/verify/' || :'sid4' || '/cancel', '{}')), '200 voided',
          'voiding twice answers the same');
SELECT is((SELECT body->>'status' FROM pg_temp.call('GET', '/v1/verify/' || :'sid4')), 'voided', 'GET: status voided');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/' || :'sid' || '/cancel', '{}', 409, 'CONFLICT', 'voiding a verified session');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/vrf_01a2000000000000000000000000/cancel', '{}', 404, 'NOT_FOUND', 'voiding an unknown session');
SELECT is((SELECT status || ' ' || (body->>'status') FROM pg_temp.call('POST', '/v1/verify/' || :'sid3' || '/cancel', '{}')), '200 expired',
          'voiding an expired session leaves it expired');

-- ---- check: bad input
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', '{"code": "123456"}', 400, 'VALIDATION_ERROR', 'check without session_id');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s"}', :'sid2'), 400, 'VALIDATION_ERROR', 'check without code');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s", "code": ""}', :'sid2'), 400, 'VALIDATION_ERROR', 'check with an empty code');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/check', format('{"session_id": "%s", "code": true}', :'sid2'), 400, 'VALIDATION_ERROR', 'check with a boolean code');

-- ---- send: field limits (at, below, above each bound)
SELECT is(length(substring(m.body FROM '[0-9]{4,8}')), 4, 'code_length 4 → 4 digits')
  FROM (SELECT envoisms.verify_send(:'acc', '+212611000010', code_length => 4) AS r OFFSET 0) v JOIN envoisms.messages m ON m.message_id = v.r->>'message_id';
SELECT is(length(substring(m.body FROM '[0-9]{4,8}')), 8, 'code_length 8 → 8 digits')
  FROM (SELECT envoisms.verify_send(:'acc', '+212611000011', code_length => 8) AS r OFFSET 0) v JOIN envoisms.messages m ON m.message_id = v.r->>'message_id';
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "code_length": 3}', 400, 'VALIDATION_ERROR', 'code_length 3');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "code_length": 9}', 400, 'VALIDATION_ERROR', 'code_length 9');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "code_length": "6"}', 400, 'VALIDATION_ERROR', 'code_length as a string');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212611000013", "expiry": 60}')), 201, 'expiry 60 → 201');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212611000014", "expiry": 1800}')), 201, 'expiry 1800 → 201');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "expiry": 59}', 400, 'VALIDATION_ERROR', 'expiry 59');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "expiry": 1801}', 400, 'VALIDATION_ERROR', 'expiry 1801');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', format('{"to": "+212611000015", "brand": "%s"}', repeat('b', 32)))),
          201, 'brand of 32 characters → 201');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', format('{"to": "+212611000012", "brand": "%s"}', repeat('b', 33)),
                            400, 'VALIDATION_ERROR', 'brand of 33 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "brand": ""}', 400, 'VALIDATION_ERROR', 'empty brand');
SELECT matches(m.body, '^Code Shop: [0-9]{6}$', 'template: {{brand}} and {{code}} replaced')
  FROM (SELECT envoisms.verify_send(:'acc', '+212611000016', brand => 'Shop', template => 'Code {{brand}}: {{code}}') AS r OFFSET 0) v JOIN envoisms.messages m ON m.message_id = v.r->>'message_id';
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "template": "no code here"}',
                            400, 'VALIDATION_ERROR', 'template without {{code}}');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', format('{"to": "+212611000012", "template": "{{code}}%s"}', repeat('x', 993)),
                            400, 'VALIDATION_ERROR', 'template of 1001 characters');
SELECT is(m.buttons, jsonb_build_array(jsonb_build_object('type', 'copy', 'text', repeat('t', 25),
                                                          'value', substring(m.body FROM '[0-9]{6}'))),
          'whatsapp: a copy button with otp_button_text (25 characters) and the code')
  FROM (SELECT envoisms.verify_send(:'acc', '+212611000017', 'whatsapp', otp_button_text => repeat('t', 25)) AS r OFFSET 0) v JOIN envoisms.messages m ON m.message_id = v.r->>'message_id';
SELECT is(m.buttons->0->>'text', 'Copier le code', 'whatsapp: default button text')
  FROM (SELECT envoisms.verify_send(:'acc', '+212611000018', 'whatsapp') AS r OFFSET 0) v JOIN envoisms.messages m ON m.message_id = v.r->>'message_id';
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', format('{"to": "+212611000012", "channel": "whatsapp", "otp_button_text": "%s"}', repeat('t', 26)),
                            400, 'VALIDATION_ERROR', 'otp_button_text of 26 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000012", "channel": "fax"}', 400, 'VALIDATION_ERROR', 'channel fax');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "0612345678"}', 400, 'INVALID_PHONE', 'to in local format');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{}', 400, 'INVALID_PHONE', 'to missing');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": 212612345678}', 400, 'INVALID_PHONE', 'to as a number');

-- ---- money: no balance → 402 and nothing written; sandbox keys never debit
SELECT pg_temp.new_account(0) AS poor \gset
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000020"}', 402, 'INSUFFICIENT_BALANCE',
                            'send without balance', pg_temp.new_key(:'poor'));
SELECT pg_temp.new_key(:'acc', live => false) AS testkey \gset
SELECT envoisms.account_balance(:'acc') AS bal \gset
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212611000021"}', :'testkey')), 201, 'sandbox key → 201');
SELECT is(envoisms.account_balance(:'acc'), :'bal'::numeric, 'sandbox send does not debit');
SELECT is((SELECT sandbox FROM envoisms.verify_sessions ORDER BY session_id DESC LIMIT 1), true, 'sandbox session');

-- ---- OTP is exempt from opt-outs
INSERT INTO envoisms.optouts (account_id, phone) VALUES (:'acc', '+212611000022');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212611000022"}')), 201,
          'an opted-out number still receives an OTP it asked for');

-- ---- anti-pumping caps
SELECT is((SELECT count(*)::int FROM (SELECT envoisms.verify_send(:'acc', '+212611000030', brand => 'b' || g)
                                        FROM generate_series(1, 5) g) s), 5,
          'five sends to one number in 10 minutes');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000030"}', 429, 'TOO_MANY_ATTEMPTS', 'a sixth send to one number');
INSERT INTO envoisms.verify_limits (account_id, sends_per_block_daily) VALUES (:'acc', 3);
SELECT is((SELECT count(*)::int FROM (SELECT envoisms.verify_send(:'acc', '+21261112000' || g)
                                        FROM generate_series(1, 3) g) s), 3,
          'three sends into one 10,000-number block');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611120009"}', 429, 'TOO_MANY_ATTEMPTS',
                            'a fourth send into the block past the daily cap');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212611130009"}')), 201,
          'another block is not affected');

-- ---- permissions and the domain functions called directly
SELECT * FROM pg_temp.fails('POST', '/v1/verify/send', '{"to": "+212611000040"}', 403, 'FORBIDDEN', 'a key without verify',
                            pg_temp.new_key(:'acc', '{send}'));
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.verify_send(%L, %L, code_length => 9)', :'acc', '+212611000041'),
                                'VALIDATION_ERROR', 'verify_send(code_length 9)');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.verify_send(%L, %L)', :'acc', 'garbage'), 'INVALID_PHONE', 'verify_send(garbage)');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.verify_get(%L, %L)', :'acc', 'vrf_nope'), 'NOT_FOUND', 'verify_get(unknown)');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.verify_check(%L, %L, %L)', :'acc', :'sid2', '1'), 'TOO_MANY_ATTEMPTS',
                                'verify_check(dead session)');
SELECT is(envoisms.verify_get(:'acc', :'sid')->>'id', :'sid', 'verify_get returns the session');

-- the code leaves the database only towards the carrier: the API and the
-- webhooks show the OTP message with its digits masked
SELECT is((SELECT body->>'body' FROM pg_temp.call('GET', '/v1/messages/' || :'mid')),
          'MonApp : votre code de vérification est ••••••. Il expire dans 10 min.', 'GET /v1/messages/:id masks the code while queued');
SELECT is((SELECT count(*)::int FROM pg_temp.call('GET', '/v1/messages', query => 'limit=200') r, jsonb_array_elements(r.body->'data') d
            WHERE d->>'body' LIKE '%' || :'code' || '%'), 0, 'GET /v1/messages shows the code nowhere');
CREATE TEMP TABLE wh AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks',
    '{"url": "https://hooks.example.ma/sent", "events": ["message.sent", "message.delivered"]}');
SELECT envoisms.message_send(:'acc', '+212611000099', 'not a code 123456')->>'id' AS plain_mid \gset
UPDATE envoisms.messages SET status = 'sent' WHERE message_id IN (:'mid', :'plain_mid');
SELECT is((SELECT (payload::jsonb)->'data'->>'body' FROM envoisms.webhook_deliveries
            WHERE event_type = 'message.sent' AND (payload::jsonb)->'data'->>'id' = :'mid'),
          'MonApp : votre code de vérification est ••••••. Il expire dans 10 min.', 'the message.sent webhook carries the code masked');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE payload LIKE '%' || :'code' || '%'), 0,
          'no webhook payload carries the code');
SELECT is((SELECT (payload::jsonb)->'data'->>'body' FROM envoisms.webhook_deliveries
            WHERE event_type = 'message.sent' AND (payload::jsonb)->'data'->>'id' = :'plain_mid'), 'not a code 123456',
          'other messages are shown as sent');
SELECT ok((SELECT body FROM envoisms.messages WHERE message_id = :'mid') IS NOT NULL, 'OTP body kept while sent (a retry or cascade may need it)');
UPDATE envoisms.messages SET status = 'delivered' WHERE message_id IN (:'mid', :'plain_mid');
SELECT is((SELECT body FROM envoisms.messages WHERE message_id = :'mid'), NULL, 'OTP body purged once delivered');
SELECT is((SELECT body->>'body' FROM pg_temp.call('GET', '/v1/messages/' || :'mid')), NULL, 'GET /v1/messages/:id no longer shows the code');
SELECT is((SELECT body FROM envoisms.messages WHERE message_id = :'plain_mid'), 'not a code 123456', 'a plain message keeps its body when delivered');

SELECT * FROM finish();
ROLLBACK;
