-- optouts.sql — GET/POST /v1/optouts, DELETE /v1/optouts/:phone, and what an
-- opt-out does to sends (messages, bulk, campaigns refused or skipped; OTP exempt).
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(41);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset

CREATE TEMP TABLE o AS SELECT * FROM pg_temp.call('POST', '/v1/optouts', '{"phone": "+212612345678", "reason": "STOP"}');
SELECT is((SELECT status FROM o), 201, 'POST /v1/optouts → 201');
SELECT is((SELECT body - 'created_at' FROM o), '{"phone": "+212612345678", "reason": "STOP", "source": "api", "created": true}'::jsonb, 'opt-out shape');
CREATE TEMP TABLE o2 AS SELECT * FROM pg_temp.call('POST', '/v1/optouts', '{"phone": "+212612345678", "reason": "again"}');
SELECT is((SELECT status FROM o2), 200, 'the same number again → 200');
SELECT is((SELECT body->>'reason' || ' ' || (body->>'created') FROM o2), 'STOP false', '… the first entry is kept');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/optouts')), '1'::jsonb, 'GET /v1/optouts: total');
SELECT is((SELECT body->'data'->0->>'phone' FROM pg_temp.call('GET', '/v1/optouts')), '+212612345678', 'GET /v1/optouts: the number');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/optouts', query => 'phone=%2B212612345678')), '1'::jsonb, 'GET ?phone= looks one number up');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/optouts', query => 'phone=%2B212600000000')), '0'::jsonb, 'GET ?phone= of a number not listed');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/optouts', query => 'limit=500')), 200, 'limit=500');
SELECT * FROM pg_temp.fails('GET', '/v1/optouts', NULL, 400, 'VALIDATION_ERROR', 'limit=501', query => 'limit=501');
SELECT * FROM pg_temp.fails('GET', '/v1/optouts', NULL, 400, 'VALIDATION_ERROR', 'limit=0', query => 'limit=0');

-- effects on sending
SELECT * FROM pg_temp.fails('POST', '/v1/messages', '{"to": "+212612345678", "message": "promo"}', 403, 'OPTED_OUT', 'sending to an opted-out number');
SELECT * FROM pg_temp.fails('POST', '/v1/messages/bulk', '{"messages": [{"to": "+212600000001", "message": "a"}, {"to": "+212612345678", "message": "b"}]}',
                            403, 'OPTED_OUT', 'a bulk holding an opted-out number');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212612345678"}')), 201, 'OTP is exempt: the recipient asked for it');
SELECT envoisms.contact_list_create(:'acc', 'L')->>'id' AS lst \gset
SELECT envoisms.contact_import(:'acc', '[{"phone": "+212612345678"}, {"phone": "+212600000001"}]', :'lst') IS NOT NULL AS ok \gset
SELECT envoisms.campaign_create(:'acc', 'c', 'Hi', list_id => :'lst')->>'id' AS cmp \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmp')->>'queued', '1', 'a campaign leaves the opted-out number out');

-- errors
SELECT * FROM pg_temp.fails('POST', '/v1/optouts', '{"phone": "0612345678"}', 400, 'INVALID_PHONE', 'phone in local format');
SELECT * FROM pg_temp.fails('POST', '/v1/optouts', '{}', 400, 'INVALID_PHONE', 'phone missing');
SELECT * FROM pg_temp.fails('POST', '/v1/optouts', '{"phone": 212612345678}', 400, 'INVALID_PHONE', 'phone as a number');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/optouts', format('{"phone": "+212600000002", "reason": "%s"}', repeat('r', 500)))), 201, 'reason of 500 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/optouts', format('{"phone": "+212600000003", "reason": "%s"}', repeat('r', 501)), 400, 'VALIDATION_ERROR', 'reason of 501 characters');

-- delete: "+" may arrive encoded, raw (decoded to a space) or left out
SELECT is((SELECT body FROM pg_temp.call('DELETE', '/v1/optouts/%2B212612345678')), '{"deleted": true, "phone": "+212612345678"}'::jsonb,
          'DELETE /v1/optouts/%2B212… → deleted');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/messages', '{"to": "+212612345678", "message": "welcome back"}')), 201, 'sending works again');
SELECT is((SELECT status FROM pg_temp.call('DELETE', '/v1/optouts/+212600000002')), 200, 'DELETE /v1/optouts/+212… (raw plus)');
INSERT INTO envoisms.optouts (account_id, phone) VALUES (:'acc', '+212600000009');
SELECT is((SELECT status FROM pg_temp.call('DELETE', '/v1/optouts/212600000009')), 200, 'DELETE /v1/optouts/212… (no plus)');
SELECT * FROM pg_temp.fails('DELETE', '/v1/optouts/%2B212612345678', NULL, 404, 'NOT_FOUND', 'delete a number not on the list');
SELECT * FROM pg_temp.fails('DELETE', '/v1/optouts/garbage', NULL, 400, 'INVALID_PHONE', 'delete garbage');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.optout_add(%L, %L, source => %L)', :'acc', '+212600000004', 'carrier'), 'VALIDATION_ERROR', 'optout_add(unknown source)');
SELECT is(envoisms.optout_add(:'acc', '+212600000004', source => 'inbound')->>'source', 'inbound', 'optout_add with source inbound (STOP handling)');
SELECT * FROM pg_temp.fails('GET', '/v1/optouts', NULL, 403, 'FORBIDDEN', 'a key without optouts', pg_temp.new_key(:'acc', '{send}'));

SELECT * FROM finish();
ROLLBACK;
