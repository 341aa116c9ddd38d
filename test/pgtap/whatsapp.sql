-- whatsapp.sql — WhatsApp sessions: free text reaches a number only from
-- the account's connected WhatsApp number and inside the 24-hour window its
-- last message opened (WHATSAPP_NOT_CONNECTED 403, OUT_OF_24H_WINDOW 409,
-- nothing written or charged), the SMS fallback of cascade, the sandbox and
-- its magic numbers, OTP and templates exempt, bulk and campaigns; Meta's
-- callbacks: customers' messages stored once, statuses, the handshake.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(90);

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.new_key(:'acc') AS live \gset
SELECT pg_temp.new_key(:'acc', live => false) AS test \gset
SELECT pg_temp.use_key(:'live') IS NOT NULL AS ok \gset
CREATE FUNCTION pg_temp.send(body text, key text DEFAULT NULL) RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT pg_temp.call('POST', '/v1/messages', body, key)
$$;
CREATE FUNCTION pg_temp.wa(phone text, extra text DEFAULT '') RETURNS text LANGUAGE sql AS $$
    SELECT format('{"to": "%s", "message": "Votre commande est prête", "channel": "whatsapp"%s}', phone, extra)
$$;

-- ---- not connected: no WhatsApp number of its own
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212612345678'), 403, 'WHATSAPP_NOT_CONNECTED',
                            'free text from an account without a WhatsApp number');
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'))).body->'error'->>'field', 'channel', 'WHATSAPP_NOT_CONNECTED names channel');
SELECT * FROM pg_temp.fails_sql(format($$SELECT envoisms.message_send(%L, '+212612345678', 'x', channel => 'whatsapp')$$, :'acc'),
                                'WHATSAPP_NOT_CONNECTED', 'SQL callers: SQLSTATE EV434');
SELECT is((SELECT sqlstate || ' ' || http_status FROM envoisms.error_codes WHERE code = 'WHATSAPP_NOT_CONNECTED'), 'EV434 403', 'WHATSAPP_NOT_CONNECTED: EV434, 403');
SELECT is((SELECT sqlstate || ' ' || http_status FROM envoisms.error_codes WHERE code = 'OUT_OF_24H_WINDOW'), 'EV493 409', 'OUT_OF_24H_WINDOW: EV493, 409');
-- cascade: the SMS at once, priced as an SMS
SELECT pg_temp.send(pg_temp.wa('+212612345678', ', "cascade": true')) AS r \gset
SELECT is((:'r'::envoisms.api_reply).body - 'id' - 'created_at' - 'message_id' - 'parts' - 'cost_mad' - 'cost_eur',
          '{"to": "+212612345678", "channel": "sms", "cascade": true, "status": "queued", "cost": {"eur": 0.028, "mad": 0.31}, "segments": 1}'::jsonb,
          'not connected, cascade: sent as an SMS, priced as an SMS');
SELECT is(envoisms.account_balance(:'acc'), 99.69::numeric, '… and charged 0.31 MAD');
-- OTP goes from the platform's shared sender: exempt
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/verify/send', '{"to": "+212612345678", "channel": "whatsapp"}')), 201,
          'OTP on WhatsApp: no connection needed');

-- ---- connected, but the customer never wrote
INSERT INTO envoisms.inbound_numbers (account_id, number, channel, phone_number_id) VALUES (:'acc', '+212700000001', 'whatsapp', '5551');
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212612345678'), 409, 'OUT_OF_24H_WINDOW',
                            'a number that never wrote to the account');
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'))).body->'error'->>'field', 'to', 'OUT_OF_24H_WINDOW names to');
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212612345678', ', "buttons": [{"type": "url", "text": "Suivre", "value": "https://exemple.ma"}]'),
                            409, 'OUT_OF_24H_WINDOW', 'with a button');
SELECT * FROM pg_temp.fails_sql(format($$SELECT envoisms.message_send(%L, '+212612345678', 'x', channel => 'whatsapp')$$, :'acc'),
                                'OUT_OF_24H_WINDOW', 'SQL callers: SQLSTATE EV493');
-- validation comes first: a bad number is INVALID_PHONE, not a window
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('0612345678'), 400, 'INVALID_PHONE', 'a local number on WhatsApp');
SELECT pg_temp.send(pg_temp.wa('+212612345678', ', "cascade": true, "buttons": [{"type": "url", "text": "Suivre", "value": "https://exemple.ma"}]')) AS r \gset
SELECT is((SELECT channel || ' ' || cascade || ' ' || cost_mad || ' ' || charged_mad || ' ' || coalesce(buttons::text, 'no buttons')
             FROM envoisms.messages WHERE message_id = (:'r'::envoisms.api_reply).body->>'id'),
          'sms true 0.3100 0.3100 no buttons', 'outside the window, cascade: an SMS (its buttons left, as a cascade does)');
SELECT is(envoisms.account_balance(:'acc'), 99.25::numeric, '… charged as an SMS (0.31), after the OTP''s 0.13');

-- ---- the customer writes (a signed Meta callback): the window opens
INSERT INTO envoisms.carriers (carrier_id, kind, config)
VALUES ('wa', 'whatsapp_cloud', '{"phone_number_id": "1000", "token": "t", "app_secret": "app-secret", "verify_token": "verify-me"}');
SELECT envoisms.webhook_create(:'acc', 'https://hooks.example.com/in', ARRAY['message.received']) IS NOT NULL AS ok \gset
CREATE FUNCTION pg_temp.meta(body text, secret text DEFAULT 'app-secret') RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM envoisms.api('POST', '/v1/carriers/wa/whatsapp', '',
        jsonb_build_object('X-Hub-Signature-256', 'sha256=' || envoisms.hmac_sha256_hex(secret, body),
                           'Content-Type', 'application/json'), body, '127.0.0.1')
$$;
CREATE FUNCTION pg_temp.inbound(wamid text, from_digits text, text text, pnid text DEFAULT '5551',
                                display text DEFAULT '212700000001', ts bigint DEFAULT extract(epoch FROM now())::bigint)
RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object('object', 'whatsapp_business_account', 'entry', jsonb_build_array(jsonb_build_object(
        'id', 'waba', 'changes', jsonb_build_array(jsonb_build_object('field', 'messages', 'value', jsonb_build_object(
            'messaging_product', 'whatsapp',
            'metadata', jsonb_build_object('display_phone_number', display, 'phone_number_id', pnid),
            'contacts', jsonb_build_array(jsonb_build_object('profile', jsonb_build_object('name', 'Karim'), 'wa_id', from_digits)),
            'messages', jsonb_build_array(jsonb_build_object('from', from_digits, 'id', wamid, 'timestamp', ts::text,
                                                             'type', 'text', 'text', jsonb_build_object('body', text)))))))))::text
$$;
SELECT * FROM pg_temp.fails('POST', '/v1/carriers/wa/whatsapp', pg_temp.inbound('wamid.A', '212612345678', 'Salam'), 401, 'UNAUTHORIZED',
                            'an unsigned callback (no X-Hub-Signature-256)');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.A', '212612345678', 'Salam'), 'wrong')).status, 401, 'a callback signed with another secret: 401');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE direction = 'inbound'), 0::bigint, '… stores nothing');
SELECT is(row(r.status, r.body)::text, row(200, '{"received": 1}'::jsonb)::text, 'a signed messages callback: 200 {"received": 1}')
  FROM pg_temp.meta(pg_temp.inbound('wamid.A', '212612345678', 'Salam, ma commande ?')) r;
SELECT is((SELECT account_id || ' ' || status || ' ' || channel || ' ' || from_number || ' ' || to_number || ' ' || body || ' ' || carrier_ref
             FROM envoisms.messages WHERE direction = 'inbound'),
          :'acc' || ' received whatsapp +212612345678 +212700000001 Salam, ma commande ? wamid.A',
          'stored as an inbound WhatsApp message of the account owning phone_number_id 5551');
SELECT is((SELECT count(*) FROM envoisms.webhook_deliveries WHERE account_id = :'acc' AND event_type = 'message.received'), 1::bigint,
          'message.received queued');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.A', '212612345678', 'Salam, ma commande ?'))).body, '{"received": 1}'::jsonb, 'Meta retries the callback');
SELECT is((SELECT count(*) FROM envoisms.messages WHERE direction = 'inbound'), 1::bigint, '… the same wamid is stored once');
SELECT is((SELECT count(*) FROM envoisms.webhook_deliveries WHERE account_id = :'acc' AND event_type = 'message.received'), 1::bigint,
          '… and announced once');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/messages', NULL, NULL, 'direction=inbound')), '1'::jsonb,
          'GET /v1/messages?direction=inbound lists it');
SELECT is((SELECT number || ' ' || (now() - last_inbound_at < interval '1 minute') FROM envoisms.whatsapp_windows
            WHERE account_id = :'acc' AND phone = '+212612345678'), '+212700000001 true', 'the window is open, to the number written to');

SELECT pg_temp.send(pg_temp.wa('+212612345678')) AS r \gset
SELECT is((:'r'::envoisms.api_reply).body - 'id' - 'created_at' - 'message_id' - 'parts' - 'cost_mad' - 'cost_eur',
          '{"to": "+212612345678", "channel": "whatsapp", "cascade": false, "status": "queued", "cost": {"eur": 0.0118, "mad": 0.13}, "segments": 1}'::jsonb,
          'inside the window: free text on WhatsApp, 0.13 MAD');
SELECT is(envoisms.account_balance(:'acc'), 99.12::numeric, '… charged');
SELECT is(envoisms.whatsapp_sender(:'acc', (:'r'::envoisms.api_reply).body->>'id', NULL, '+212612345678', NULL),
          '{"phone_number_id": "5551"}'::jsonb, 'it goes from the account''s own number (its phone_number_id)');
SELECT is(envoisms.whatsapp_sender(:'acc', v.message_id, NULL, v.to_number, m.metadata), '{}'::jsonb,
          'an OTP goes from the carrier''s shared sender')
  FROM envoisms.verify_sessions v JOIN envoisms.messages m USING (account_id, message_id) WHERE v.account_id = :'acc';
SELECT is(envoisms.whatsapp_sender(:'acc', 'msg_x', NULL, '+212612345678', '{"purpose": "otp", "verify_session_id": "vrf_forged"}'),
          '{"phone_number_id": "5551"}'::jsonb, 'an OTP''s metadata alone does not change the sender');

-- the window lasts 24 hours from the customer's message; older ones never shorten it
UPDATE envoisms.whatsapp_windows SET last_inbound_at = now() - interval '23 hours 59 minutes' WHERE account_id = :'acc';
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'))).status, 201, '23 h 59 min after: inside');
UPDATE envoisms.whatsapp_windows SET last_inbound_at = now() - interval '24 hours 1 minute' WHERE account_id = :'acc';
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212612345678'), 409, 'OUT_OF_24H_WINDOW', '24 h 1 min after');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.old', '212612345678', 'vieux', ts => extract(epoch FROM now() - interval '2 days')::bigint))).status,
          200, 'a message sent two days ago arrives late');
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212612345678'), 409, 'OUT_OF_24H_WINDOW',
                            '… it opens no window (the window starts when the customer wrote)');
SELECT pg_temp.meta(pg_temp.inbound('wamid.B', '212612345678', 'Merci')) IS NOT NULL AS ok \gset
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'))).status, 201, 'a new message opens the window again');
SELECT envoisms.whatsapp_window_open(:'acc', '+212612345678', '+212700000001', now() - interval '3 hours');
SELECT ok((SELECT now() - last_inbound_at < interval '1 minute' FROM envoisms.whatsapp_windows WHERE account_id = :'acc'),
          'an older message replayed does not move the window back');

-- ---- the sandbox: a connected sandbox sender every number wrote to, but two magic numbers
SELECT pg_temp.new_account(0) AS sbx \gset
SELECT pg_temp.new_key(:'sbx', live => false) AS sbx_key \gset
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'), :'sbx_key')).body->>'channel', 'whatsapp',
          'sandbox: the reference''s WhatsApp example works without a connection or a window');
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212600000005'), 409, 'OUT_OF_24H_WINDOW',
                            'sandbox magic number +212600000005', key => :'sbx_key');
SELECT * FROM pg_temp.fails('POST', '/v1/messages', pg_temp.wa('+212600000006'), 403, 'WHATSAPP_NOT_CONNECTED',
                            'sandbox magic number +212600000006', key => :'sbx_key');
SELECT is((pg_temp.send(pg_temp.wa('+212600000005', ', "cascade": true'), :'sbx_key')).body->>'channel', 'sms',
          'sandbox magic number +212600000005 with cascade: an SMS');
SELECT is((pg_temp.send('{"to": "+212600000005", "message": "x"}', :'sbx_key')).status, 201, 'the magic numbers are ordinary on SMS');
SELECT is((SELECT string_agg(outcome, ',' ORDER BY phone) FROM envoisms.sandbox_magic_numbers() WHERE phone IN ('+212600000005', '+212600000006')),
          'out_of_window,not_connected', 'sandbox_magic_numbers() lists them');
SELECT is((pg_temp.send(pg_temp.wa('+212612345678'), :'test')).status, 201, 'a live account''s test key: sandbox rules');

-- ---- bulk: the rule per entry, reported like any bad entry (all or nothing)
SELECT pg_temp.new_account(100) AS nc \gset
SELECT * FROM pg_temp.fails('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212612345678", "message": "a"}]}',
                            403, 'WHATSAPP_NOT_CONNECTED', 'bulk on WhatsApp without a number', key => pg_temp.new_key(:'nc'));
SELECT * FROM pg_temp.fails('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212612345678", "message": "a"}, {"to": "+212622222222", "message": "b"}]}',
                            409, 'OUT_OF_24H_WINDOW', 'bulk with one number outside its window');
SELECT is((SELECT body->'error'->>'field' FROM pg_temp.call('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212612345678", "message": "a"}, {"to": "+212622222222", "message": "b"}]}')),
          'messages[1].to', '… naming the entry');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212612345678", "message": "a"}]}')),
          201, 'bulk inside the window: 201');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/messages/bulk', '{"channel": "sms", "messages": [{"to": "+212622222222", "message": "b"}]}')),
          201, 'bulk SMS: no window');
SELECT * FROM pg_temp.fails('POST', '/v1/messages/bulk', '{"channel": "whatsapp", "messages": [{"to": "+212612345678", "message": "a"}, {"to": "+212600000005", "message": "b"}]}',
                            409, 'OUT_OF_24H_WINDOW', 'sandbox bulk with the magic number', key => :'sbx_key');

-- ---- campaigns: free text to the members inside their window; a template to all
SELECT envoisms.contact_list_create(:'acc', 'Clients')->>'id' AS lst \gset
SELECT envoisms.contact_import(:'acc', '[{"phone": "+212612345678", "name": "Karim", "custom_fields": {"custom1": "A-17"}}, {"phone": "+212622222222", "name": "Salma"}]', :'lst') IS NOT NULL AS ok \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "channel": "whatsapp"}', 403, 'WHATSAPP_NOT_CONNECTED',
                            'a WhatsApp campaign without a number', key => pg_temp.new_key(:'nc'));
SELECT envoisms.campaign_create(:'acc', 'free', 'Bonjour {{name}}', channel => 'whatsapp', list_id => :'lst')->>'id' AS cmp \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmp') - 'id' - 'cost',
          '{"queued": 1, "total": 2, "opted_out": 0, "out_of_window": 1}'::jsonb, 'a free-text campaign reaches the member inside the window');
SELECT is((SELECT string_agg(to_number, ',') FROM envoisms.messages WHERE campaign_id = :'cmp'), '+212612345678', '… only that one');
UPDATE envoisms.whatsapp_windows SET last_inbound_at = now() - interval '2 days' WHERE account_id = :'acc';
SELECT envoisms.campaign_create(:'acc', 'late', 'Bonjour {{name}}', channel => 'whatsapp', list_id => :'lst')->>'id' AS cmp2 \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/' || :'cmp2' || '/send', '{}', 409, 'OUT_OF_24H_WINDOW',
                            'a free-text campaign whose members are all outside their window');
SELECT envoisms.template_create(:'acc', 'commande_prete', 'Bonjour {{name}}, votre commande {{custom1}} est prête. {{name}}, merci !', 'whatsapp', 'fr')->>'id' AS tpl \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"name": "t", "template_id": "%s", "channel": "whatsapp", "buttons": [{"type": "url", "text": "Suivre", "value": "https://exemple.ma"}]}', :'tpl'),
                            400, 'VALIDATION_ERROR', 'buttons with a WhatsApp template (it carries its own)');
SELECT envoisms.campaign_create(:'acc', 'tpl', template_id => :'tpl', channel => 'whatsapp', list_id => :'lst')->>'id' AS cmp3 \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmp3') - 'id' - 'cost', '{"queued": 2, "total": 2, "opted_out": 0}'::jsonb,
          'a template campaign reaches every member, window or not');
SELECT is((SELECT metadata->'template'->'parameters' FROM envoisms.messages WHERE campaign_id = :'cmp3' AND to_number = '+212612345678'),
          '[{"name": "name", "text": "Karim"}, {"name": "custom1", "text": "A-17"}]'::jsonb, 'each message carries its template parameters');
SELECT is(envoisms.whatsapp_sender(m.account_id, m.message_id, m.campaign_id, m.to_number, m.metadata)->'template'->>'name',
          'commande_prete', 'the dispatcher sends it as the template')
  FROM envoisms.messages m WHERE m.campaign_id = :'cmp3' AND m.to_number = '+212622222222';
SELECT is(envoisms.whatsapp_sender(m.account_id, m.message_id, NULL, m.to_number, m.metadata) ? 'template', false,
          'a message''s own metadata does not make it a template')
  FROM envoisms.messages m WHERE m.campaign_id = :'cmp3' AND m.to_number = '+212622222222';
SELECT envoisms.campaign_create(:'sbx', 'sbx', 'Bonjour', channel => 'whatsapp', list_id => envoisms.contact_list_create(:'sbx', 'S')->>'id', sandbox => true)->>'id' AS cmp4 \gset
SELECT envoisms.contact_import(:'sbx', '[{"phone": "+212612345678"}, {"phone": "+212600000005"}]', (SELECT list_id FROM envoisms.campaigns WHERE campaign_id = :'cmp4')) IS NOT NULL AS ok \gset
SELECT is(envoisms.campaign_launch(:'sbx', :'cmp4', sandbox => true)->'out_of_window', '1'::jsonb, 'a sandbox campaign leaves the magic number out');

-- ---- Meta's other callbacks
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.U', '212633333333', 'pour qui ?', pnid => '999', display => '212799999999'))).body,
          '{"received": 1}'::jsonb, 'a message to a number nobody owns is taken');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.U', '212633333333', 'pour qui ?', pnid => '999', display => '212799999999'))).status,
          200, '… and retried');
SELECT is((SELECT count(*) || ' ' || min(from_number) || ' ' || min(to_number) FROM envoisms.inbound_unmatched WHERE carrier_ref = 'wamid.U'),
          '1 +212633333333 +212799999999', '… kept once for the operator');
INSERT INTO envoisms.inbound_numbers (account_id, number, channel) VALUES (:'nc', '+212700000009', 'whatsapp');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.D', '212644444444', 'Salut', pnid => '424242', display => '212700000009'))).body,
          '{"received": 1}'::jsonb, 'a number without phone_number_id is found by display_phone_number');
SELECT is((SELECT account_id FROM envoisms.messages WHERE carrier_ref = 'wamid.D'), :'nc', '… for its account');
SELECT is((pg_temp.meta(pg_temp.inbound('wamid.S', '212655555555', 'STOP'))).status, 200, 'STOP on WhatsApp');
SELECT ok(EXISTS (SELECT 1 FROM envoisms.optouts WHERE account_id = :'acc' AND phone = '+212655555555'), '… opts the sender out');

-- a failed status: the code stored as WHATSAPP_<code>, as at submit
INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('whatsapp', '', 'wa');
SELECT envoisms.whatsapp_window_open(:'acc', '+212612345678', '+212700000001', now());
SELECT pg_temp.send(pg_temp.wa('+212612345678')) AS r \gset
SELECT (:'r'::envoisms.api_reply).body->>'id' AS fid \gset
SELECT envoisms.dispatch_sent(:'acc', :'fid', 'wa', 'wamid.out1');
SELECT is((pg_temp.meta('{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"statuses":[{"id":"wamid.out1","status":"failed","timestamp":"1700000000","recipient_id":"212612345678","errors":[{"code":131047,"title":"Re-engagement message"}]}]}}]}]}')).body,
          '{"received": 1}'::jsonb, 'a failed status callback');
SELECT is((SELECT status || ' ' || error_code || ' ' || error_message FROM envoisms.messages WHERE message_id = :'fid'),
          'failed WHATSAPP_131047 Re-engagement message', 'its code as WHATSAPP_<code>');

-- the handshake: the challenge as plain text (the gateway writes a text/plain string as is)
SELECT is(row(r.status, r.headers->>'Content-Type', r.body)::text, row(200, 'text/plain; charset=utf-8', '"abc-123"'::jsonb)::text,
          'hub.challenge echoed as text/plain')
  FROM envoisms.api('GET', '/v1/carriers/wa/whatsapp', 'hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=abc-123') r;
SELECT is((SELECT body FROM envoisms.api('GET', '/v1/carriers/wa/whatsapp', 'hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444')),
          '"1158201444"'::jsonb, 'a numeric challenge too');
SELECT is((SELECT status FROM envoisms.api('GET', '/v1/carriers/wa/whatsapp', 'hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1')),
          403, 'a wrong verify_token: 403');

SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check()), 'the ledger explains every balance');

SELECT * FROM finish();
ROLLBACK;
