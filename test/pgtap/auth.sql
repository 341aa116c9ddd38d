-- auth.sql — authentication, permissions, IP allowlists, the shared-memory
-- rate limiter, sandbox keys and channels, through envoisms.api.
BEGIN;
SELECT plan(65);

SELECT envoisms.account_create('Acme', 3) AS acc \gset
SELECT envoisms.account_create('SmsOnly', 10, 'starter', '{sms}') AS smsonly \gset
SELECT envoisms.api_key_create(:'acc', 'live', true, rate_limit => NULL)->>'api_key' AS live \gset
SELECT envoisms.api_key_create(:'acc', 'sandbox', false, rate_limit => NULL)->>'api_key' AS test \gset
SELECT envoisms.api_key_create(:'acc', 'status only', true, permissions => '{status}', rate_limit => NULL)->>'api_key' AS ro \gset
SELECT envoisms.api_key_create(:'acc', 'office', true, ip_whitelist => '{196.200.1.4,10.1.0.0/16}', rate_limit => NULL)->>'api_key' AS office \gset
SELECT envoisms.api_key_create(:'acc', 'limited', true, rate_limit => 10) AS limited_json \gset
SELECT :'limited_json'::jsonb->>'api_key' AS limited \gset
SELECT envoisms.api_key_create(:'acc', 'to revoke', true, rate_limit => NULL)->>'api_key' AS revoked \gset
SELECT envoisms.api_key_create(:'acc', 'to pause', true, rate_limit => NULL)->>'api_key' AS paused \gset
SELECT envoisms.api_key_create(:'smsonly', 'k', true, rate_limit => NULL)->>'api_key' AS smskey \gset
UPDATE envoisms.api_keys SET active = false, revoked_at = now() WHERE key_hash = envoisms.sha256_hex(:'revoked');
UPDATE envoisms.api_keys SET active = false WHERE key_hash = envoisms.sha256_hex(:'paused');

CREATE FUNCTION pg_temp.get(headers jsonb, ip inet DEFAULT '127.0.0.1') RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM envoisms.api('GET', '/v1/billing/balance', '', headers, NULL, ip)
$$;
CREATE FUNCTION pg_temp.bearer(key text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('Authorization', 'Bearer ' || key)
$$;

-- ---- the key file
SELECT ok(:'limited_json'::jsonb->>'api_key' ~ '^env_live_[0-9a-f]{48}$', 'api_key_create: env_live_ key');
SELECT is(:'limited_json'::jsonb->>'warning', 'The full API key is shown once. Store it securely.', 'api_key_create: the warning');
SELECT is((SELECT count(*) FROM envoisms.api_keys WHERE key_hash = :'limited'), 0::bigint, 'only the hash is stored, never the key');
SELECT is((SELECT count(*) FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'limited')), 1::bigint, 'the SHA-256 of the key is stored');
SELECT throws_ok(format('SELECT envoisms.api_key_create(%L, %L, true, %L)', :'acc', 'x', '{send,fly}'), 'EV400', NULL, 'unknown permission refused');
SELECT throws_ok(format('SELECT envoisms.api_key_create(%L, %L, true, NULL, %L)', :'acc', 'x', '{not-an-ip}'), 'EV400', NULL, 'bad IP refused');

-- ---- 401: one answer for every failure
SELECT is((pg_temp.get(pg_temp.bearer(:'live'))).status, 200, 'valid live key: 200');
SELECT is((pg_temp.get(pg_temp.bearer(:'test'))).status, 200, 'valid sandbox key: 200');
SELECT is((pg_temp.get(('{"aUtHoRiZaTiOn": "Bearer ' || :'live' || '"}')::jsonb)).status, 200, 'header names are case-insensitive');
SELECT is((pg_temp.get(('{"authorization": "bearer ' || :'live' || '"}')::jsonb)).status, 200, 'the scheme is case-insensitive');
SELECT (pg_temp.get('{}')).body AS nokey \gset
SELECT is((pg_temp.get('{}')).status, 401, 'no header: 401');
SELECT is(:'nokey'::jsonb->'error'->>'code', 'UNAUTHORIZED', 'no header: UNAUTHORIZED');
SELECT is((pg_temp.get('{"Authorization": "Basic dXNlcjpwYXNz"}')).body, :'nokey'::jsonb, 'Basic auth: the same answer');
SELECT is((pg_temp.get(pg_temp.bearer('env_live_' || repeat('0', 48)))).body, :'nokey'::jsonb, 'unknown key: the same answer');
SELECT is((pg_temp.get(pg_temp.bearer(:'revoked'))).body, :'nokey'::jsonb, 'revoked key: the same answer');
SELECT is((pg_temp.get(pg_temp.bearer(:'paused'))).body, :'nokey'::jsonb, 'inactive key: the same answer');
SELECT is((pg_temp.get(pg_temp.bearer(:'office'), '203.0.113.9')).body, :'nokey'::jsonb, 'IP not allowed: the same answer');
SELECT is((pg_temp.get(pg_temp.bearer(:'office'), NULL)).status, 401, 'allowlisted key without a client IP: 401');
SELECT is((pg_temp.get(pg_temp.bearer(:'office'), '196.200.1.4')).status, 200, 'allowlisted IP: 200');
SELECT is((pg_temp.get(pg_temp.bearer(:'office'), '10.1.200.7')).status, 200, 'IP inside an allowlisted CIDR: 200');
SELECT is((pg_temp.get(pg_temp.bearer(:'office'), '10.2.0.1')).status, 401, 'IP outside the CIDR: 401');
SELECT is((pg_temp.get(pg_temp.bearer(:'live') || '{"x": 1}')).status, 200, 'extra headers are ignored');
SELECT is((SELECT count(*) FROM envoisms.api_keys WHERE account_id = :'acc' AND last_used_at IS NOT NULL), 3::bigint, 'last_used_at is recorded for keys that authenticated');

-- ---- 403: permissions and channels
SELECT is((pg_temp.get(pg_temp.bearer(:'ro'))).body->'error'->>'code', 'FORBIDDEN', 'a key without "balance": 403 FORBIDDEN');
SELECT is((SELECT status FROM envoisms.api('GET', '/v1/messages', '', pg_temp.bearer(:'ro'))), 200, 'the same key may read messages');
SELECT is((SELECT body->'error'->>'code' FROM envoisms.api('POST', '/v1/messages', '', pg_temp.bearer(:'ro'), '{"to": "+212612345678", "message": "x"}')),
          'FORBIDDEN', 'the same key may not send');
SELECT is((SELECT status::text || (body->'error'->>'code') FROM envoisms.api('POST', '/v1/messages', '', pg_temp.bearer(:'smskey'),
          '{"to": "+212612345678", "message": "x", "channel": "whatsapp"}')), '403CHANNEL_NOT_ALLOWED', 'WhatsApp not enabled: 403 CHANNEL_NOT_ALLOWED');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE account_id = :'smsonly'), 0::bigint, 'CHANNEL_NOT_ALLOWED: no message');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/messages', '', pg_temp.bearer(:'smskey'),
          '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "cascade": true}')), 403, 'cascade needs WhatsApp too');

-- ---- 404 / 405
SELECT is((SELECT status::text || (body->'error'->>'code') FROM envoisms.api('GET', '/v1/nothing', '', pg_temp.bearer(:'live'))), '404NOT_FOUND', 'unknown route: 404');
SELECT is((SELECT status::text || (headers->>'Allow') FROM envoisms.api('DELETE', '/v1/messages', '', pg_temp.bearer(:'live'))), '405GET, POST', 'wrong method: 405 with Allow');
SELECT is((SELECT status FROM envoisms.api('GET', '/v1/messages/', '', pg_temp.bearer(:'live'))), 200, 'a trailing slash is ignored');

-- ---- 402 and the sandbox
SELECT is((SELECT status::text || (body->'error'->>'code') FROM envoisms.api('POST', '/v1/messages', '', pg_temp.bearer(:'live'),
          json_build_object('to', '+212612345678', 'message', repeat('x', 1600))::text)), '402INSUFFICIENT_BALANCE', '11 segments (3.41 MAD) on 3 MAD: 402');
SELECT is(envoisms.account_balance(:'acc'), 3::numeric, '402: nothing debited');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE account_id = :'acc'), 0::bigint, '402: no message');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/messages', '', pg_temp.bearer(:'test'),
          json_build_object('to', '+212612345678', 'message', repeat('x', 1600))::text)), 201, 'the same send with a sandbox key: 201');
SELECT is(envoisms.account_balance(:'acc'), 3::numeric, 'sandbox: never debits');
SELECT is((SELECT sandbox::text || ' ' || charged_mad FROM envoisms.messages WHERE account_id = :'acc'), 'true 0.0000', 'sandbox: marked, charged nothing');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check(:'acc')), 'the ledger explains the balance');

-- ---- the rate limiter (shared memory)
SELECT is((pg_temp.get(pg_temp.bearer(:'limited'))).headers - 'X-Envoisms-Key-Id' - 'X-Envoisms-Route', '{"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9"}'::jsonb, 'rate-limit headers');
CREATE FUNCTION pg_temp.burst(key text, n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    ok int := 0;
BEGIN
    FOR i IN 1..n LOOP
        IF (pg_temp.get(pg_temp.bearer(key))).status = 200 THEN ok := ok + 1; END IF;
    END LOOP;
    RETURN ok;
END
$$;
SELECT is(pg_temp.burst(:'limited', 12), 9,
          'the rest of the minute''s 10 requests pass');
SELECT pg_temp.get(pg_temp.bearer(:'limited')) AS r \gset
SELECT is((:'r'::envoisms.api_reply).status || ' ' || ((:'r'::envoisms.api_reply).body->'error'->>'code'), '429 RATE_LIMITED', 'then 429 RATE_LIMITED');
SELECT ok(((:'r'::envoisms.api_reply).headers->>'Retry-After')::int BETWEEN 1 AND 6, 'with Retry-After (one token every 6 s)');
SELECT is((:'r'::envoisms.api_reply).headers->>'X-RateLimit-Remaining', '0', 'and X-RateLimit-Remaining 0');

-- ---- public routes: carriers' delivery reports carry no API key
INSERT INTO envoisms.carriers (carrier_id, kind, name, config) VALUES ('dlrtest', 'http', 'DLR test', '{"dlr_token": "s3cret", "url": "https://carrier.example/send"}');
SELECT is((SELECT status FROM envoisms.api('POST', '/v1/carriers/dlrtest/dlr', '', '{"X-Carrier-Token": "s3cret"}', '{"id": "nope", "status": "delivered"}')),
          200, 'a carrier''s delivery report needs no API key');
SELECT is((SELECT headers ? 'X-RateLimit-Limit' FROM envoisms.api('POST', '/v1/carriers/dlrtest/dlr', '', '{"X-Carrier-Token": "s3cret"}', '{"id": "nope", "status": "delivered"}')),
          false, 'and is not rate-limited as a key');
SELECT is((SELECT status::text || (body->'error'->>'code') FROM envoisms.api('POST', '/v1/carriers/dlrtest/dlr', '', '{"X-Carrier-Token": "wrong"}', '{"id": "nope", "status": "delivered"}')),
          '401UNAUTHORIZED', 'but the carrier''s own token is checked');
SELECT is((SELECT status FROM envoisms.api('DELETE', '/v1/carriers/dlrtest/dlr', '', '{}')), 401, 'another method on a public path still needs a key');

-- ---- the rate limit is the account's too: a new key brings no new budget
SELECT envoisms.api_key_create(:'acc', 'rotated in', true, rate_limit => 10)->>'api_key' AS rotated \gset
SELECT is((pg_temp.get(pg_temp.bearer(:'rotated'))).status, 429,
          'a new key of the same account at the same limit finds the account''s minute spent (rotation multiplies nothing)');
SELECT envoisms.api_key_create(:'acc', 'sandbox limited', false, rate_limit => 10)->>'api_key' AS test_limited \gset
SELECT is((pg_temp.get(pg_temp.bearer(:'test_limited'))).status, 200, 'sandbox keys count apart from live keys');
SELECT envoisms.api_key_create(:'smsonly', 'other account', true, rate_limit => 10)->>'api_key' AS other_limited \gset
SELECT is((pg_temp.get(pg_temp.bearer(:'other_limited'))).status, 200, 'and another account is not touched');
SELECT is((envoisms.ratelimit_take(:'acc' || ':k1', 5, :'acc' || ':direct')).remaining, 4, 'ratelimit_take: a key and its account');
SELECT is((SELECT count(*)::int FROM generate_series(1, 6) i WHERE (envoisms.ratelimit_take(:'acc' || ':k2', 5, :'acc' || ':direct')).allowed),
          4, 'a second key of the account gets only the account''s 4 tokens left (5 in all, not 10)');
SELECT is((envoisms.ratelimit_take(:'acc' || ':k1', 5, :'acc' || ':direct')).allowed, false, '… and the first key too');
SELECT ok((SELECT buckets > 0 AND capacity >= buckets FROM envoisms.ratelimit_stats()), 'ratelimit_stats: buckets within capacity');

-- ---- api_precheck: the gateway's look at a request head before it reads a large body
SELECT is((SELECT count(*)::int FROM envoisms.api_precheck('POST', '/v1/messages/bulk', pg_temp.bearer(:'live'), '127.0.0.1')), 0,
          'precheck: a valid key with the permission → no refusal');
SELECT is((SELECT status || ' ' || (body->'error'->>'code') FROM envoisms.api_precheck('POST', '/v1/messages/bulk', '{}', '127.0.0.1')),
          '401 UNAUTHORIZED', 'precheck: no key → 401');
SELECT is((SELECT body FROM envoisms.api_precheck('POST', '/v1/messages/bulk', pg_temp.bearer('env_live_nope'), '127.0.0.1')),
          (SELECT body FROM envoisms.api('POST', '/v1/messages/bulk', '', pg_temp.bearer('env_live_nope'), '{}', '127.0.0.1')),
          'precheck: the same 401 envelope as the request itself');
SELECT is((SELECT status FROM envoisms.api_precheck('POST', '/v1/messages/bulk', pg_temp.bearer(:'office'), '8.8.8.8')), 401,
          'precheck: an address outside the key''s allowlist → 401');
SELECT is((SELECT status || ' ' || (body->'error'->>'code') FROM envoisms.api_precheck('POST', '/v1/messages/bulk', pg_temp.bearer(:'ro'), '127.0.0.1')),
          '403 FORBIDDEN', 'precheck: a key without the permission → 403');
SELECT is((SELECT status || ' ' || (headers->>'Allow') FROM envoisms.api_precheck('POST', '/v1/billing/balance', pg_temp.bearer(:'live'), '127.0.0.1')),
          '405 GET', 'precheck: another method → 405 with Allow');
SELECT is((SELECT status FROM envoisms.api_precheck('POST', '/v1/nothing', pg_temp.bearer(:'live'), '127.0.0.1')), 404,
          'precheck: no route → 404');
SELECT is((SELECT count(*)::int FROM envoisms.api_precheck('POST', '/v1/carriers/dlrtest/dlr', '{}', '127.0.0.1')), 0,
          'precheck: a public route is read (its handler checks the carrier)');
SELECT is((SELECT count(*)::int FROM generate_series(1, 20) i, envoisms.api_precheck('GET', '/v1/billing/balance', pg_temp.bearer(:'test_limited'), '127.0.0.1')),
          0, 'precheck: takes no rate-limit token …');
SELECT is((pg_temp.get(pg_temp.bearer(:'test_limited'))).headers->>'X-RateLimit-Remaining', '8', '… (the key''s next request has 8 left)');

SELECT * FROM finish();
ROLLBACK;
