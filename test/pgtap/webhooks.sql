-- webhooks.sql — GET/POST /v1/webhooks, PATCH/DELETE /v1/webhooks/:id,
-- POST /v1/webhooks/:id/test, and deliveries queued by status changes.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(72);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset

CREATE TEMP TABLE w AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks',
    '{"url": "https://mon-serveur.ma/api/envoisms-receiver", "events": ["message.delivered", "message.failed"]}');
SELECT is((SELECT status FROM w), 201, 'POST /v1/webhooks → 201');
SELECT is((SELECT body - 'id' - 'secret' - 'created_at' FROM w),
          '{"url": "https://mon-serveur.ma/api/envoisms-receiver", "events": ["message.delivered", "message.failed"], "active": true,
            "signature_format": "sha256"}'::jsonb,
          'create: the contract''s fields');
SELECT matches((SELECT body->>'id' FROM w), '^whk_[0-9a-f]{28}$', 'webhook id is whk_…');
SELECT matches((SELECT body->>'secret' FROM w), '^whsec_[0-9a-f]{48}$', 'a secret whsec_… is generated and shown on create');
SELECT body->>'id' AS whk, body->>'secret' AS secret FROM w \gset
SELECT is((SELECT secret FROM envoisms.webhooks WHERE webhook_id = :'whk'), :'secret', 'the secret is stored for signing');

CREATE TEMP TABLE l AS SELECT * FROM pg_temp.call('GET', '/v1/webhooks');
SELECT is((SELECT status FROM l), 200, 'GET /v1/webhooks → 200');
SELECT is((SELECT array_agg(k ORDER BY k) FROM l, jsonb_object_keys(body->'data'->0) k),
          ARRAY['active', 'created_at', 'events', 'id', 'last_status', 'last_triggered_at', 'signature_format', 'url'],
          'list: the contract''s fields and signature_format, no secret');

CREATE TEMP TABLE w2 AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks', '{"url": "https://example.ma/all", "secret": "my-own-secret-1234"}');
SELECT is((SELECT body->'events' FROM w2), to_jsonb(envoisms.webhook_default_events()), 'events default to every event');
SELECT is((SELECT body->>'secret' FROM w2), 'my-own-secret-1234', 'a given secret is kept');
SELECT body->>'id' AS whk2 FROM w2 \gset

-- deliveries: status changes and verify.success, in the same transaction, for subscribed active webhooks only
SELECT envoisms.message_send(:'acc', '+212612345678', 'hello')->>'id' AS mid \gset
UPDATE envoisms.messages SET status = 'delivered' WHERE message_id = :'mid';
SELECT is((SELECT array_agg(webhook_id ORDER BY webhook_id) FROM envoisms.webhook_deliveries WHERE event_type = 'message.delivered'),
          ARRAY[:'whk', :'whk2'], 'message.delivered is queued for both subscribed webhooks');
UPDATE envoisms.messages SET status = 'sent' WHERE message_id = :'mid';
SELECT is((SELECT array_agg(webhook_id) FROM envoisms.webhook_deliveries WHERE event_type = 'message.sent'),
          ARRAY[:'whk2'], 'message.sent only for the webhook subscribed to it');

-- field limits and errors
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "http://example.ma/h"}', 400, 'VALIDATION_ERROR', 'http:// URL');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "ftp://example.ma/h"}', 400, 'VALIDATION_ERROR', 'ftp:// URL');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "https://"}', 400, 'VALIDATION_ERROR', 'URL without host');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{}', 400, 'VALIDATION_ERROR', 'URL missing');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/webhooks', format('{"url": "https://e.ma/%s"}', repeat('p', 2048 - 13)))), 201, 'URL of 2048 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', format('{"url": "https://e.ma/%s"}', repeat('p', 2049 - 13)), 400, 'VALIDATION_ERROR', 'URL of 2049 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "https://e.ma/h", "events": ["message.exploded"]}', 400, 'VALIDATION_ERROR', 'unknown event');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "https://e.ma/h", "events": []}', 400, 'VALIDATION_ERROR', 'empty events');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', '{"url": "https://e.ma/h", "events": "message.sent"}', 400, 'VALIDATION_ERROR', 'events not an array');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', format('{"url": "https://e.ma/h", "secret": "%s"}', repeat('s', 15)), 400, 'VALIDATION_ERROR', 'secret of 15 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/webhooks', format('{"url": "https://e.ma/h", "secret": "%s"}', repeat('s', 16)))), 201, 'secret of 16 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/webhooks', format('{"url": "https://e.ma/h", "secret": "%s"}', repeat('s', 256)))), 201, 'secret of 256 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks', format('{"url": "https://e.ma/h", "secret": "%s"}', repeat('s', 257)), 400, 'VALIDATION_ERROR', 'secret of 257 characters');
-- http:// is refused above unless the operator turned envoisms.webhook_allow_http on (not settable per session)
SELECT coalesce(current_setting('envoisms.webhook_allow_http', true), 'off') IN ('on', 'true', 'yes', '1') AS http_allowed \gset
\if :http_allowed
SELECT skip('envoisms.webhook_allow_http is on in this cluster: the http:// refusals above do not apply', 1);
\else
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/webhooks', '{"url": "http://127.0.0.1:8080/h"}')), 400, 'http:// to loopback refused too');
\endif

-- PATCH
SELECT is((SELECT body FROM pg_temp.call('PATCH', '/v1/webhooks/' || :'whk', '{"url": "https://mon-serveur.ma/api/updated", "active": false}')),
          jsonb_build_object('updated', true, 'id', :'whk'), 'PATCH → {"updated": true, "id"}');
SELECT is((SELECT url || ' ' || active FROM envoisms.webhooks WHERE webhook_id = :'whk'), 'https://mon-serveur.ma/api/updated false', 'PATCH changed url and active');
UPDATE envoisms.messages SET status = 'failed' WHERE message_id = :'mid';
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE event_type = 'message.failed' AND webhook_id = :'whk'), 0,
          'an inactive webhook gets no delivery');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE event_type = 'message.failed' AND webhook_id = :'whk2'), 1,
          '… while an active subscribed one does');
SELECT is((SELECT status FROM pg_temp.call('PATCH', '/v1/webhooks/' || :'whk', '{"events": ["message.sent"], "active": true}')), 200, 'PATCH events and active');
SELECT is((SELECT events FROM envoisms.webhooks WHERE webhook_id = :'whk'), ARRAY['message.sent'], 'events replaced');
SELECT * FROM pg_temp.fails('PATCH', '/v1/webhooks/' || :'whk', '{}', 400, 'VALIDATION_ERROR', 'PATCH with nothing to change');
SELECT * FROM pg_temp.fails('PATCH', '/v1/webhooks/' || :'whk', '{"url": "http://e.ma"}', 400, 'VALIDATION_ERROR', 'PATCH to an http:// URL');
SELECT * FROM pg_temp.fails('PATCH', '/v1/webhooks/' || :'whk', '{"active": "yes"}', 400, 'VALIDATION_ERROR', 'PATCH active not a boolean');
SELECT * FROM pg_temp.fails('PATCH', '/v1/webhooks/' || :'whk', '{"events": ["nope"]}', 400, 'VALIDATION_ERROR', 'PATCH unknown event');
SELECT * FROM pg_temp.fails('PATCH', '/v1/webhooks/whk_nope', '{"active": true}', 404, 'NOT_FOUND', 'PATCH unknown webhook');

-- test
CREATE TEMP TABLE t AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks/' || :'whk' || '/test', '{}');
SELECT is((SELECT status FROM t), 200, 'POST /v1/webhooks/:id/test → 200');
SELECT is((SELECT body FROM t), jsonb_build_object('queued', true, 'id', :'whk'), 'test → {"queued": true, "id"}');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE event_type = 'message.test'), 1, 'exactly one message.test queued');
SELECT is((SELECT webhook_id FROM envoisms.webhook_deliveries WHERE event_type = 'message.test'), :'whk', '… for that webhook only');
SELECT is((SELECT payload::jsonb->>'type' FROM envoisms.webhook_deliveries WHERE event_type = 'message.test'), 'message.test', 'payload type');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks/whk_nope/test', '{}', 404, 'NOT_FOUND', 'test an unknown webhook');

-- DELETE (logical) cancels pending deliveries
CREATE TEMP TABLE d AS SELECT * FROM pg_temp.call('DELETE', '/v1/webhooks/' || :'whk2');
SELECT is((SELECT body FROM d), jsonb_build_object('deleted', true, 'id', :'whk2'), 'DELETE → {"deleted": true, "id"}');
SELECT is((SELECT deleted_at IS NOT NULL AND NOT active FROM envoisms.webhooks WHERE webhook_id = :'whk2'), true, 'delete is logical');
SELECT is((SELECT count(*)::int FROM envoisms.webhook_deliveries WHERE webhook_id = :'whk2' AND status = 'pending'), 0, 'its pending deliveries are cancelled');
SELECT ok(NOT (SELECT body->'data' @> jsonb_build_array(jsonb_build_object('id', :'whk2')) FROM pg_temp.call('GET', '/v1/webhooks')), 'a deleted webhook is not listed');
SELECT * FROM pg_temp.fails('DELETE', '/v1/webhooks/' || :'whk2', NULL, 404, 'NOT_FOUND', 'delete twice');
SELECT * FROM pg_temp.fails('POST', '/v1/webhooks/' || :'whk2' || '/test', '{}', 404, 'NOT_FOUND', 'test a deleted webhook');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.webhook_create(%L, %L)', :'acc', 'http://x.ma'), 'VALIDATION_ERROR', 'webhook_create(http)');
SELECT * FROM pg_temp.fails('GET', '/v1/webhooks', NULL, 403, 'FORBIDDEN', 'a key without webhooks', pg_temp.new_key(:'acc', '{send}'));

-- an Idempotency-Key replay of a webhook creation does not hold the secret
CREATE TEMP TABLE wi1 AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks', '{"url": "https://hooks.example.ma/replay"}', headers => '{"Idempotency-Key": "wh-1"}');
CREATE TEMP TABLE wi2 AS SELECT * FROM pg_temp.call('POST', '/v1/webhooks', '{"url": "https://hooks.example.ma/replay"}', headers => '{"Idempotency-Key": "wh-1"}');
SELECT is((SELECT status || ' ' || (body ? 'secret')::text || ' ' || (body->>'id') FROM wi2),
          (SELECT '201 false ' || (body->>'id') FROM wi1), 'the replay answers the same webhook without its secret');
SELECT is((SELECT count(*)::int FROM envoisms.idempotency_keys x, wi1 WHERE x.body::text LIKE '%' || (wi1.body->>'secret') || '%'), 0,
          'the secret is not kept for the replay');

SELECT * FROM finish();
ROLLBACK;
