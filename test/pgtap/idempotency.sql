-- idempotency.sql — Idempotency-Key on POST requests (replay, mismatch,
-- per API key, 24 hours, key syntax, purge). The in-flight 409 needs two
-- sessions: see test/isolation/specs/idempotency.spec.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(30);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.new_key(:'acc') AS key1 \gset
SELECT pg_temp.new_key(:'acc') AS key2 \gset
SELECT pg_temp.use_key(:'key1') IS NOT NULL AS ok \gset
SELECT api_key_id AS key1_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'key1') \gset

CREATE FUNCTION pg_temp.send(idem text, body text DEFAULT '{"to": "+212612345678", "message": "hello"}', key text DEFAULT NULL)
RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM pg_temp.call('POST', '/v1/messages', body, key, '', jsonb_build_object('Idempotency-Key', idem))
$$;

CREATE TEMP TABLE a AS SELECT * FROM pg_temp.send('order-42');
SELECT is((SELECT status FROM a), 201, 'first request → 201');
SELECT is((SELECT headers ? 'Idempotent-Replayed' FROM a), false, 'first request is not a replay');
SELECT envoisms.account_balance(:'acc') AS bal \gset
CREATE TEMP TABLE b AS SELECT * FROM pg_temp.send('order-42');
SELECT is((SELECT status FROM b), 201, 'same key, same request → the stored status');
SELECT is((SELECT body FROM b), (SELECT body FROM a), '… the stored body');
SELECT is((SELECT headers->>'Idempotent-Replayed' FROM b), 'true', '… with Idempotent-Replayed: true');
SELECT is((SELECT count(*)::int FROM envoisms.messages), 1, 'the replay sent nothing');
SELECT is(envoisms.account_balance(:'acc'), :'bal'::numeric, 'the replay debited nothing');
SELECT is((SELECT status FROM pg_temp.send('order-42', '{"message": "hello", "to": "+212612345678"}')), 201,
          'key order and whitespace of the JSON body do not matter');
SELECT is((SELECT count(*)::int FROM envoisms.messages), 1, '… still one message');
SELECT pg_temp.state() AS before \gset
CREATE TEMP TABLE m AS SELECT * FROM pg_temp.send('order-42', '{"to": "+212612345678", "message": "other"}');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM m), '422 IDEMPOTENCY_MISMATCH', 'same key, another body → 422');
SELECT is(pg_temp.state(), :'before', 'mismatch: nothing changed');
CREATE TEMP TABLE m2 AS SELECT * FROM pg_temp.call('POST', '/v1/messages/bulk', '{"messages": [{"to": "+212612345678", "message": "hello"}]}',
                                                   NULL, '', '{"Idempotency-Key": "order-42"}');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM m2), '422 IDEMPOTENCY_MISMATCH', 'same key, another path → 422');
SELECT is(pg_temp.state(), :'before', 'path mismatch: nothing changed');
SELECT is((SELECT status FROM pg_temp.send('order-42', key => :'key2')), 201, 'keys are per API key: another key runs the request');
SELECT is((SELECT headers ? 'Idempotent-Replayed' FROM pg_temp.send('order-43', key => :'key2')), false, 'a new key is not a replay');
SELECT is((SELECT count(*)::int FROM envoisms.messages), 3, 'two more messages');

-- errors are not stored: the same key may be retried after fixing the balance
SELECT pg_temp.new_account(0) AS poor \gset
SELECT pg_temp.new_key(:'poor') AS poorkey \gset
SELECT is((SELECT status FROM pg_temp.send('retry-me', key => :'poorkey')), 402, 'a failed request → 402');
SELECT is((SELECT count(*)::int FROM envoisms.idempotency_keys WHERE idempotency_key = 'retry-me'), 0, 'a failed request stores no key');
SELECT envoisms.account_topup(:'poor', 1) IS NOT NULL AS ok \gset
SELECT is((SELECT status FROM pg_temp.send('retry-me', key => :'poorkey')), 201, 'the retry with the same key runs');

-- 24 hours
UPDATE envoisms.idempotency_keys SET expires_at = now() - interval '1 second' WHERE idempotency_key = 'order-42' AND api_key_id = :'key1_id';
SELECT is((SELECT headers ? 'Idempotent-Replayed' FROM pg_temp.send('order-42', '{"to": "+212612345678", "message": "next day"}')), false,
          'an expired key is free again');
SELECT is((SELECT expires_at FROM envoisms.idempotency_keys WHERE idempotency_key = 'order-42' AND api_key_id = :'key1_id'),
          now() + interval '24 hours', 'the new reply is stored for 24 hours');
UPDATE envoisms.idempotency_keys SET expires_at = now() - interval '1 second' WHERE idempotency_key = 'order-43';
SELECT is(envoisms.idempotency_purge(), 1, 'idempotency_purge deletes expired keys');
SELECT is((SELECT count(*)::int FROM envoisms.idempotency_keys WHERE idempotency_key = 'order-43'), 0, '… and only them');

-- key syntax
SELECT is((SELECT status FROM pg_temp.send(repeat('k', 255))), 201, 'a key of 255 characters');
SELECT pg_temp.state() AS before \gset
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM pg_temp.send(repeat('k', 256))), '400 VALIDATION_ERROR', 'a key of 256 characters → 400');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM pg_temp.send('')), '400 VALIDATION_ERROR', 'an empty key → 400');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM pg_temp.send(E'tab\there')), '400 VALIDATION_ERROR', 'a key with a control character → 400');
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') FROM pg_temp.send('clé')), '400 VALIDATION_ERROR', 'a non-ASCII key → 400');
SELECT is(pg_temp.state(), :'before', 'bad keys: nothing changed');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/messages', NULL, NULL, '', '{"Idempotency-Key": "x"}')), 200, 'GET ignores Idempotency-Key');

SELECT * FROM finish();
ROLLBACK;
