-- messages.sql — POST /v1/messages and GET /v1/messages[/:id] through
-- envoisms.api, as the contract shows them, and every bad input next to the
-- good one, each proving nothing changed (no message, no ledger row, same balance).
BEGIN;
SELECT plan(122);

SELECT envoisms.account_create('Acme', 100) AS acc \gset
SELECT envoisms.account_create('Other', 100) AS other \gset
SELECT envoisms.api_key_create(:'acc', 'live', true, rate_limit => NULL)->>'api_key' AS live \gset
SELECT envoisms.api_key_create(:'other', 'other', true, rate_limit => NULL)->>'api_key' AS other_key \gset
-- Acme's WhatsApp Business number, and the customer who wrote to it: free
-- text on WhatsApp reaches only that 24-hour window (whatsapp.sql tests the rule)
INSERT INTO envoisms.inbound_numbers (account_id, number, channel) VALUES (:'acc', '+212700000001', 'whatsapp');
SELECT envoisms.whatsapp_window_open(:'acc', '+212612345678', '+212700000001', now());

CREATE FUNCTION pg_temp.call(method text, path text, body text, key text, query text DEFAULT '')
RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM envoisms.api(method, path, query, jsonb_build_object('Authorization', 'Bearer ' || key), body, '127.0.0.1')
$$;
-- The state that an error must leave untouched.
CREATE FUNCTION pg_temp.state(acc text) RETURNS text LANGUAGE sql AS $$
    SELECT format('%s messages, %s ledger rows, %s MAD',
                  (SELECT count(*) FROM envoisms.messages WHERE account_id = acc),
                  (SELECT count(*) FROM envoisms.ledger WHERE account_id = acc),
                  envoisms.account_balance(acc))
$$;
-- Assert that a request fails with status/code and changes nothing.
CREATE FUNCTION pg_temp.rejects(method text, path text, body text, key text, status int, code text, what text,
                                query text DEFAULT '')
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    acc text := (SELECT account_id FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(key));
    before text := pg_temp.state(acc);
    r envoisms.api_reply := pg_temp.call(method, path, body, key, query);
BEGIN
    RETURN NEXT is(r.status || ' ' || (r.body->'error'->>'code'), status || ' ' || code, what || ': status and code');
    RETURN NEXT is(pg_temp.state(acc), before, what || ': nothing changed');
END
$$;

-- ---- the contract's example
SELECT pg_temp.call('POST', '/v1/messages', $${
    "to": "+212612345678",
    "message": "Votre code de validation est 849204",
    "from": "MaBoutique",
    "channel": "whatsapp"
  }$$, :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, 'send: 201');
SELECT (:'r'::envoisms.api_reply).body AS b \gset
SELECT ok(:'b'::jsonb->>'id' ~ '^msg_[0-9a-f]{28}$', 'send: id is msg_…');
SELECT is(:'b'::jsonb - 'id' - 'created_at' - 'message_id' - 'parts' - 'cost_mad' - 'cost_eur',
          '{"to": "+212612345678", "channel": "whatsapp", "cascade": false, "status": "queued",
            "cost": {"eur": 0.0118, "mad": 0.13}, "segments": 1}'::jsonb, 'send: the contract''s fields and values');
SELECT is(jsonb_build_array(:'b'::jsonb->'message_id', :'b'::jsonb->'parts', :'b'::jsonb->'cost_mad', :'b'::jsonb->'cost_eur'),
          jsonb_build_array(:'b'::jsonb->'id', :'b'::jsonb->'segments', :'b'::jsonb#>'{cost,mad}', :'b'::jsonb#>'{cost,eur}'),
          'send: message_id, parts, cost_mad and cost_eur, the names the official clients read, repeat id, segments and cost');
SELECT ok(:'b'::jsonb->>'created_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$', 'send: created_at in the contract''s format');
SELECT is(jsonb_typeof(:'b'::jsonb->'cost'->'mad'), 'number', 'send: cost is a JSON number');
SELECT is(envoisms.account_balance(:'acc'), 99.87::numeric, 'send: 0.13 MAD debited');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check(:'acc')), 'send: the ledger explains the balance');
SELECT :'b'::jsonb->>'id' AS wa_id \gset

-- body alias, default sender, SMS pricing per segment, Unicode
SELECT pg_temp.call('POST', '/v1/messages', '{"to": "+212612345678", "body": "مرحبا بكم في متجرنا، طلبكم في الطريق إليكم الآن. شكرا لثقتكم بنا"}', :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, 'body alias: 201');
SELECT (:'r'::envoisms.api_reply).body->>'id' AS ar_id \gset
SELECT is((SELECT sender_id || ' ' || channel || ' ' || encoding || ' ' || segments FROM envoisms.messages WHERE message_id = :'ar_id'),
          'ENVOISMS sms ucs2 1', 'body alias: default sender ENVOISMS, sms, ucs2');
SELECT pg_temp.call('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', repeat('a', 161))::text, :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).body->'cost', '{"eur": 0.056, "mad": 0.62}'::jsonb, '161 GSM characters: 2 segments, 0.62 MAD');
SELECT is((:'r'::envoisms.api_reply).body->'segments', '2'::jsonb, '161 GSM characters: segments 2');
SELECT pg_temp.call('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', repeat('é', 1600))::text, :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, '1600 characters: accepted');

-- metadata and buttons
SELECT pg_temp.call('POST', '/v1/messages', '{"to": "+212612345678", "message": "Code 1234", "channel": "whatsapp", "metadata": {"purpose": "otp"}, "buttons": [{"type": "call", "text": "Appeler le service", "value": "+212522000000"}]}', :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 201, 'a call button: accepted');
SELECT is((SELECT buttons FROM envoisms.messages WHERE message_id = (:'r'::envoisms.api_reply).body->>'id'),
          '[{"type": "call", "text": "Appeler le service", "value": "+212522000000"}]'::jsonb, 'a call button: kept with its number');
SELECT (:'r'::envoisms.api_reply).body->>'id' AS btn_id \gset

-- ---- GET /v1/messages/:id
SELECT pg_temp.call('GET', '/v1/messages/' || :'btn_id', NULL, :'live') AS r \gset
SELECT is((:'r'::envoisms.api_reply).status, 200, 'get: 200');
SELECT is((:'r'::envoisms.api_reply).body->>'metadata', '{"purpose": "otp"}', 'get: metadata as the contract shows it (a JSON string)');
SELECT ok((:'r'::envoisms.api_reply).body ?& ARRAY['id', 'account_id', 'api_key_id', 'campaign_id', 'to', 'channel', 'body',
          'sender_id', 'unicode', 'segments', 'status', 'cost_eur', 'cost_mad', 'metadata', 'created_at'], 'get: every field of the contract');
SELECT is((:'r'::envoisms.api_reply).body->'unicode', '0'::jsonb, 'get: unicode 0 for GSM text');
SELECT is((:'r'::envoisms.api_reply).body->'events'->0->>'status', 'queued', 'get: the delivery log starts with queued');
UPDATE envoisms.messages SET status = 'sent' WHERE message_id = :'btn_id';
SELECT is(jsonb_path_query_array((pg_temp.call('GET', '/v1/messages/' || :'btn_id', NULL, :'live')).body, '$.events[*].status'),
          '["queued", "sent"]'::jsonb, 'get: status changes are appended to the log');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages/msg_00000000000000000000000000', NULL, :'live', 404, 'NOT_FOUND', 'unknown id');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages/' || :'btn_id', NULL, :'other_key', 404, 'NOT_FOUND', 'another account''s id');

-- ---- GET /v1/messages
SELECT pg_temp.call('GET', '/v1/messages', NULL, :'live', 'limit=50&offset=0') AS r \gset
SELECT is((:'r'::envoisms.api_reply).body - 'data' - 'messages', '{"limit": 50, "offset": 0, "total": 5}'::jsonb, 'list: limit, offset, total');
SELECT is((:'r'::envoisms.api_reply).body->'messages', (:'r'::envoisms.api_reply).body->'data', 'list: the rows also under "messages" (the Node client reads it)');
SELECT ok((:'r'::envoisms.api_reply).body->'data'->0 ?& ARRAY['id', 'to', 'channel', 'body', 'sender_id', 'status', 'cost_mad', 'created_at'],
          'list: the contract''s fields');
SELECT is((:'r'::envoisms.api_reply).body->'data'->0->>'id', :'btn_id', 'list: newest first');
SELECT is(jsonb_array_length((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'limit=2&offset=1')).body->'data'), 2, 'list: limit and offset');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'channel=whatsapp')).body->'total', '2'::jsonb, 'list: channel filter');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'status=sent')).body->'total', '1'::jsonb, 'list: status filter');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'from_date=2000-01-01&to_date=2001-01-01')).body->'total', '0'::jsonb, 'list: date filters');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'from_date=2000-01-01T00%3A00%3A00Z')).body->'total', '5'::jsonb, 'list: URL-encoded ISO time');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'other_key')).body->'total', '0'::jsonb, 'list: another account sees none of them');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'limit=0', 'limit=0');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'limit=201', 'limit=201');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'limit=-1', 'limit=-1');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'limit=abc', 'limit=abc');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'offset=-5', 'offset=-5');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'status=lost', 'status=lost');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'from_date=yesterday', 'from_date=yesterday');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'a time zone offset of +16:00', 'from_date=2026-01-01T00:00:00%2B16:00');
SELECT * FROM pg_temp.rejects('GET', '/v1/messages', NULL, :'live', 400, 'VALIDATION_ERROR', 'a time zone offset of -19:00', 'to_date=2026-01-01T00:00:00-1900');
SELECT is((pg_temp.call('GET', '/v1/messages', NULL, :'live', 'from_date=2000-01-01T00:00:00%2B15:59')).status, 200, 'an offset of +15:59 is a time');
SELECT * FROM pg_temp.rejects('GET', '/v1/analytics', NULL, :'live', 400, 'VALIDATION_ERROR', 'analytics: an offset of +16:00', 'from_date=2026-01-01T00:00:00%2B16:00');

-- ---- bad input to POST /v1/messages: a clear error, nothing changed
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+2126', :'live', 400, 'INVALID_JSON', 'non-JSON body');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '[{"to": "+212612345678", "message": "x"}]', :'live', 400, 'VALIDATION_ERROR', 'array body');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "metadata": {"n": 1e1000000}}', :'live', 400, 'VALIDATION_ERROR', 'a number jsonb cannot hold');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "metadata": {"n": 0e-100000}}', :'live', 400, 'VALIDATION_ERROR', 'a zero of scale 100000 (it was a 500)');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "metadata": {"n": 0e2000000000}}', :'live', 400, 'VALIDATION_ERROR', 'a zero of exponent 2e9 (it was a 500)');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+4964000079640000", "message": "x"}', :'live', 400, 'INVALID_PHONE', 'a 16-digit recipient (it was sent)');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "\ud800"}', :'live', 400, 'INVALID_JSON', 'a lone surrogate escape');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": 212612345678, "message": "x"}', :'live', 400, 'INVALID_PHONE', 'number for to');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": 42}', :'live', 400, 'VALIDATION_ERROR', 'number for message');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "cascade": "yes"}', :'live', 400, 'VALIDATION_ERROR', 'string for cascade');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "0612345678", "message": "x"}', :'live', 400, 'INVALID_PHONE', 'local form without region');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+2126123ABCDE", "message": "x"}', :'live', 400, 'INVALID_PHONE', 'letters in to');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"message": "x"}', :'live', 400, 'INVALID_PHONE', 'missing to');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": ""}', :'live', 400, 'VALIDATION_ERROR', '0 characters');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', repeat('a', 1601))::text, :'live', 400, 'VALIDATION_ERROR', '1601 characters');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "telegram"}', :'live', 400, 'VALIDATION_ERROR', 'unknown channel');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "buttons": [{"type":"copy","text":"a","value":"1"},{"type":"copy","text":"b","value":"2"},{"type":"copy","text":"c","value":"3"},{"type":"copy","text":"d","value":"4"}]}', :'live', 400, 'VALIDATION_ERROR', '4 buttons');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "buttons": [{"type": "reply", "text": "Oui"}]}', :'live', 400, 'VALIDATION_ERROR', 'unknown button type');
-- only what Meta can carry: one call-to-action (url or call, text ≤ 20) or one copy-code button
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "Code 1234", "channel": "whatsapp", "buttons": [{"type": "copy", "text": "Copier", "value": "1234"}, {"type": "url", "text": "Ouvrir", "value": "https://exemple.ma"}, {"type": "call", "text": "Appeler", "value": "+212522000000"}]}', :'live', 400, 'VALIDATION_ERROR', 'copy + url + call (Meta carries one)');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "buttons": [{"type": "url", "text": "Ouvrir", "value": "https://exemple.ma"}, {"type": "call", "text": "Appeler", "value": "+212522000000"}]}', :'live', 400, 'VALIDATION_ERROR', 'url + call');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "buttons": [{"type": "url", "text": "Ouvrir", "value": "https://exemple.ma"}, {"type": "url", "text": "Suivre", "value": "https://exemple.ma/b"}]}', :'live', 400, 'VALIDATION_ERROR', 'two url buttons');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', 'x', 'channel', 'whatsapp', 'buttons', json_build_array(json_build_object('type', 'url', 'text', repeat('é', 21), 'value', 'https://exemple.ma')))::text, :'live', 400, 'VALIDATION_ERROR', 'a url button text of 21 characters');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', 'x', 'channel', 'whatsapp', 'buttons', json_build_array(json_build_object('type', 'call', 'text', repeat('a', 21), 'value', '+212522000000')))::text, :'live', 400, 'VALIDATION_ERROR', 'a call button text of 21 characters');
SELECT is((pg_temp.call('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', 'x', 'channel', 'whatsapp', 'buttons', json_build_array(json_build_object('type', 'url', 'text', repeat('é', 20), 'value', 'https://exemple.ma')))::text, :'live')).status,
          201, 'a url button text of 20 characters: accepted');
SELECT is((pg_temp.call('POST', '/v1/messages', json_build_object('to', '+212612345678', 'message', 'x', 'channel', 'whatsapp', 'buttons', json_build_array(json_build_object('type', 'copy', 'text', repeat('c', 25), 'value', '1234')))::text, :'live')).body->'error'->>'field',
          NULL, 'a copy button text of 25 characters: accepted (the template''s button has its own)');
SELECT is((pg_temp.call('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "channel": "whatsapp", "buttons": [{"type": "url", "text": "Ouvrir", "value": "https://exemple.ma"}, {"type": "call", "text": "Appeler", "value": "+212522000000"}]}', :'live')).body->'error'->>'field',
          'buttons', 'a refused combination names the field buttons');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "buttons": [{"type": "copy", "text": "Copier", "value": "1234"}]}', :'live', 400, 'VALIDATION_ERROR', 'buttons on an SMS');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x\u0000y"}', :'live', 400, 'VALIDATION_ERROR', 'NUL in message');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+2126\u000012345678", "message": "x"}', :'live', 400, 'VALIDATION_ERROR', 'NUL in to');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "from": "A\u0000B"}', :'live', 400, 'VALIDATION_ERROR', 'NUL in from');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x", "from": "Robert''); DROP TABLE envoisms.messages;--"}', :'live', 400, 'VALIDATION_ERROR', 'SQL in from');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678'' OR 1=1 --", "message": "x"}', :'live', 400, 'INVALID_PHONE', 'SQL in to');

-- SQL metacharacters in the body are stored verbatim (data, never code)
SELECT pg_temp.call('POST', '/v1/messages', $${"to": "+212612345678", "message": "'); DELETE FROM envoisms.messages; -- $1 %s \\\"}"}$$, :'live') AS r \gset
SELECT is((SELECT body FROM envoisms.messages WHERE message_id = (:'r'::envoisms.api_reply).body->>'id'),
          $$'); DELETE FROM envoisms.messages; -- $1 %s \"}$$, 'SQL metacharacters are stored verbatim');

-- ---- a 5xx leaves nothing behind: an error nobody expected, raised after
-- the message row and its debit were written, rolls both back, so a client
-- that retries after a 500 does not send or pay twice
CREATE FUNCTION pg_temp.explode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a fault after the insert' USING ERRCODE = 'XX001';
END
$$;
CREATE TRIGGER explode AFTER INSERT ON envoisms.messages FOR EACH ROW EXECUTE FUNCTION pg_temp.explode();
SET LOCAL client_min_messages = error;   -- the 500's logged WARNING
SELECT * FROM pg_temp.rejects('POST', '/v1/messages', '{"to": "+212612345678", "message": "x"}', :'live', 500, 'INTERNAL_ERROR',
                              'a send that fails after its insert');
SELECT * FROM pg_temp.rejects('POST', '/v1/messages/bulk', '{"messages": [{"to": "+212612345678", "message": "x"}]}', :'live', 500,
                              'INTERNAL_ERROR', 'a bulk that fails after its insert');
DROP TRIGGER explode ON envoisms.messages;
RESET client_min_messages;

SELECT * FROM finish();
ROLLBACK;
