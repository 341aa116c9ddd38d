-- bulk.sql — POST /v1/messages/bulk: the contract's example, 10,000
-- messages, and all-or-nothing rejection (one bad entry or a short balance
-- writes nothing), plus billing and analytics routes.
BEGIN;
SELECT plan(34);

SELECT envoisms.account_create('Acme', 5000, 'croissance') AS acc \gset
SELECT envoisms.api_key_create(:'acc', 'live', true, rate_limit => NULL)->>'api_key' AS live \gset
SELECT envoisms.api_key_create(:'acc', 'test', false, rate_limit => NULL)->>'api_key' AS test \gset

CREATE FUNCTION pg_temp.call(method text, path text, body text, key text, query text DEFAULT '')
RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM envoisms.api(method, path, query, jsonb_build_object('Authorization', 'Bearer ' || key), body, '127.0.0.1')
$$;
CREATE FUNCTION pg_temp.state(acc text) RETURNS text LANGUAGE sql AS $$
    SELECT format('%s messages, %s batches, %s ledger rows, %s MAD',
                  (SELECT count(*) FROM envoisms.messages WHERE account_id = acc),
                  (SELECT count(*) FROM envoisms.batches WHERE account_id = acc),
                  (SELECT count(*) FROM envoisms.ledger WHERE account_id = acc),
                  envoisms.account_balance(acc))
$$;
-- A bulk body of n entries, entry `bad` (1-based) replaced by `bad_entry`.
CREATE FUNCTION pg_temp.bulk(n int, bad int DEFAULT 0, bad_entry jsonb DEFAULT NULL) RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object('messages', coalesce(jsonb_agg(CASE WHEN i = bad THEN bad_entry
              ELSE jsonb_build_object('to', '+2126' || lpad((10000000 + i)::text, 8, '0'), 'message', 'Bonjour client ' || i) END ORDER BY i), '[]'),
              'from', 'ENVOISMS', 'channel', 'sms')::text
      FROM generate_series(1, n) i
$$;

-- ---- the contract's example
SELECT pg_temp.call('POST', '/v1/messages/bulk', $${
    "messages": [
      {"to": "+212611111111", "message": "Hello Client 1"},
      {"to": "+212622222222", "message": "Hello Client 2"}
    ],
    "from": "ENVOISMS",
    "channel": "sms"
  }$$, :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, 'bulk: 201');
SELECT (:'r'::envoisms.api_reply).body AS b \gset
SELECT ok(:'b'::jsonb->>'batch_id' ~ '^batch_[0-9a-f]{28}$', 'bulk: batch_id');
SELECT is(:'b'::jsonb - 'batch_id' - 'messages', '{"total": 2, "channel": "sms", "estimated_cost": {"eur": 0.056, "mad": 0.62},
                                                   "queued": 2, "failed": 0}'::jsonb,
          'bulk: total, channel, estimated_cost, and the queued and failed counts the official clients read');
SELECT is(jsonb_path_query_array(:'b'::jsonb, '$.messages[*].to'), '["+212611111111", "+212622222222"]'::jsonb, 'bulk: messages in request order');
SELECT is(jsonb_path_query_array(:'b'::jsonb, '$.messages[*].status'), '["queued", "queued"]'::jsonb, 'bulk: queued');
SELECT ok((SELECT bool_and(id #>> '{}' ~ '^msg_') FROM jsonb_path_query(:'b'::jsonb, '$.messages[*].id') id(id)), 'bulk: message ids');
SELECT is(envoisms.account_balance(:'acc'), 4999.38::numeric, 'bulk: debited once for the whole batch');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE batch_id = :'b'::jsonb->>'batch_id'), 2::bigint, 'bulk: two message rows in the batch');

-- metadata per entry, body alias, WhatsApp pricing (to numbers that wrote
-- to the account's WhatsApp number: whatsapp.sql tests the 24-hour window)
INSERT INTO envoisms.inbound_numbers (account_id, number, channel) VALUES (:'acc', '+212700000001', 'whatsapp');
SELECT envoisms.whatsapp_window_open(:'acc', p, '+212700000001', now()) FROM unnest(ARRAY['+212611111111', '+33612345678']) p;
SELECT pg_temp.call('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212611111111", "body": "a", "metadata": {"order": 1}}, {"to": "+33612345678", "message": "b"}]}', :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).body->'estimated_cost', '{"eur": 0.0236, "mad": 0.26}'::jsonb, 'bulk WhatsApp: per message price');
SELECT is((SELECT metadata FROM envoisms.messages WHERE to_number = '+212611111111' AND channel = 'whatsapp'), '{"order": 1}'::jsonb, 'bulk: metadata kept');

-- ---- 10,000 messages in one call
SELECT pg_temp.state(:'acc') AS before \gset
SELECT pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(10000), :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, '10,000 messages: 201');
SELECT is(jsonb_array_length((:'r'::envoisms.api_reply).body->'messages'), 10000, '10,000 messages: 10,000 ids');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE batch_id = (:'r'::envoisms.api_reply).body->>'batch_id'), 10000::bigint, '10,000 rows');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check(:'acc')), '10,000 messages: the ledger explains the balance');

-- ---- all or nothing
SELECT pg_temp.state(:'acc') AS before \gset
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(10001), :'live')).body->'error'->>'code', 'PAYLOAD_TOO_LARGE', '10,001 messages: PAYLOAD_TOO_LARGE');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(10001), :'live')).status, 413, '10,001 messages: 413');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(0), :'live')).body->'error'->>'code', 'VALIDATION_ERROR', '0 messages: VALIDATION_ERROR');
SELECT pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(10000, 9999, '{"to": "+2126ABC", "message": "x"}'), :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status || ' ' || ((:'r'::envoisms.api_reply).body->'error'->>'code'), '400 INVALID_PHONE', 'entry 9,999 bad: 400 INVALID_PHONE');
SELECT is((:'r'::envoisms.api_reply).body->'error'->>'field', 'messages[9998].to', 'entry 9,999 bad: the field is named');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(3, 2, json_build_object('to', '+212612345678', 'message', repeat('x', 1601))::jsonb), :'live')).body->'error'->>'field',
          'messages[1].message', '1601 characters in one entry: refused, field named');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(3, 3, '"+212612345678"'), :'live')).body->'error'->>'code', 'VALIDATION_ERROR', 'a string entry: refused');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', '{"messages": {"to": "+212612345678"}}', :'live')).body->'error'->>'code', 'VALIDATION_ERROR', 'messages not an array: refused');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', '{"messages": [{"to": "+212612345678", "message": "x"}], "channel": "pigeon"}', :'live')).body->'error'->>'code', 'VALIDATION_ERROR', 'unknown channel: refused');
SELECT is(pg_temp.state(:'acc'), :'before', 'every rejected batch changed nothing');

-- a batch the balance cannot pay: 402, nothing written
SELECT envoisms.account_create('Poor', 1) AS poor \gset
SELECT envoisms.api_key_create(:'poor', 'k', true, rate_limit => NULL)->>'api_key' AS poorkey \gset
SELECT pg_temp.state(:'poor') AS before \gset
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(4), :'poorkey')).status, 402, '4 × 0.31 MAD on 1 MAD: 402');
SELECT is(pg_temp.state(:'poor'), :'before', '402: nothing written');
SELECT is((pg_temp.call('POST', '/v1/messages/bulk', pg_temp.bulk(3), :'poorkey')).status, 201, '3 × 0.31 MAD on 1 MAD: 201');

-- ---- billing and analytics
SELECT is((pg_temp.call('GET', '/v1/billing/balance', NULL, :'poorkey')).body, '{"balance_mad": 0.07, "balance_eur": 0.0063, "currency": "MAD", "plan": "starter"}'::jsonb, 'balance: the contract''s shape, and balance_eur for the official clients');
UPDATE envoisms.messages SET status = 'delivered' WHERE account_id = :'poor' AND to_number <> '+212610000003';
UPDATE envoisms.messages SET status = 'failed' WHERE account_id = :'poor' AND to_number = '+212610000003';
SELECT envoisms.message_refund(:'poor', message_id) FROM envoisms.messages WHERE account_id = :'poor' AND status = 'failed';
SELECT is((pg_temp.call('GET', '/v1/analytics', NULL, :'poorkey')).body,
          '{"summary": {"total": 3, "delivered": 2, "failed": 1, "delivery_rate": 66.7, "cost_mad": 0.62}}'::jsonb, 'analytics: totals, rate, billed cost after the refund');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check(:'poor')), 'refund: the ledger explains the balance');
UPDATE envoisms.messages SET created_at = now() - interval '40 days' WHERE account_id = :'poor' AND to_number = '+212610000001';
SELECT is((pg_temp.call('GET', '/v1/analytics', NULL, :'poorkey', 'days=30')).body->'summary'->'total', '2'::jsonb,
          'analytics?days=30 (what the official clients send): the last 30 days');
SELECT is((pg_temp.call('GET', '/v1/analytics', NULL, :'poorkey', 'days=30&from_date=2000-01-01')).body->'summary'->'total', '3'::jsonb,
          'from_date wins over days');
SELECT is((SELECT status || ' ' || (body #>> '{error,field}') FROM pg_temp.call('GET', '/v1/analytics', NULL, :'poorkey', 'days=0')),
          '400 days', 'analytics?days=0 → 400 naming days');
SELECT is(envoisms.message_refund(:'poor', (SELECT message_id FROM envoisms.messages WHERE account_id = :'poor' AND status = 'failed')), 0::numeric, 'a second refund refunds nothing');

SELECT * FROM finish();
ROLLBACK;
