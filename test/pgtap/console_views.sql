-- console_views.sql — the console's own reads: the overview from rollups
-- (checked against the messages themselves), the messages as CSV, a
-- webhook's deliveries and their replay, OTP sessions and their conversion,
-- a campaign's progress, the ledger.
BEGIN;
SELECT plan(78);
\ir lib/api_helpers.psql
\ir lib/console_helpers.psql

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.new_account(100) AS other \gset
SELECT pg_temp.console_user(:'acc', 'owner@acme.ma') AS owner_id \gset
SELECT pg_temp.console_user(:'acc', 'viewer@acme.ma', 'viewer') AS viewer_id \gset
SELECT pg_temp.console_user(:'other', 'owner@other.ma') AS other_id \gset
SELECT pg_temp.session('owner@acme.ma') AS s \gset
SELECT pg_temp.session('viewer@acme.ma') AS v \gset
SELECT pg_temp.session('owner@other.ma') AS o \gset

-- ---- messages in every state: IAM (+21266…), Orange (+21261 2…), Inwi (+21260…)
CREATE TEMP TABLE sent AS
SELECT n, envoisms.message_send(:'acc', CASE n % 3 WHEN 0 THEN '+2126612345' || lpad(n::text, 2, '0')
                                                  WHEN 1 THEN '+2126121234' || lpad(n::text, 2, '0')
                                                  ELSE '+2126001234' || lpad(n::text, 2, '0') END,
                                     'Bonjour, message ' || n)->>'id' AS id
  FROM generate_series(1, 12) n;
-- 1..9 handed to the carrier; 1..6 delivered; 7 failed (refunded); 10..12 stay queued
SELECT envoisms.dispatch_sent(:'acc', id, 'sandbox', 'ref-' || n) FROM sent WHERE n <= 9;
SELECT envoisms.dlr_apply_message(:'acc', id, 'delivered', NULL, NULL) FROM sent WHERE n <= 6;
SELECT envoisms.message_fail(:'acc', id, 'UNDELIVERABLE', 'no such subscriber') FROM sent WHERE n = 7;
SELECT envoisms.message_send(:'other', '+212661111111', 'other account')->>'id' AS other_msg \gset
SELECT envoisms.dispatch_sent(:'other', :'other_msg', 'sandbox', 'other-ref');

SELECT cmp_ok((SELECT count(*) FROM envoisms.console_rollup_deltas WHERE account_id = :'acc'), '>', 0::bigint,
              'status changes appended rollup deltas');
SELECT * INTO TEMP ov1 FROM pg_temp.ccall('GET', '/v1/console/overview', NULL, :'s', 'days=7');
SELECT is((SELECT status FROM ov1), 200, 'GET /v1/console/overview → 200');
SELECT is((SELECT count(*)::int FROM envoisms.console_rollup_deltas WHERE account_id = :'acc'), 0,
          'the overview folded its account''s deltas');
SELECT cmp_ok((SELECT count(*)::int FROM envoisms.console_rollup_deltas WHERE account_id = :'other'), '>', 0,
              'and left the other account''s');
SELECT is((SELECT body->'totals'->'today'->'sms' FROM ov1),
          '{"queued": 3, "sent": 2, "delivered": 6, "failed": 1, "expired": 0}', 'today, SMS: the counts by status');
SELECT is((SELECT body->'totals'->'today'->'sms' FROM ov1),
          (SELECT jsonb_object_agg(st, (SELECT count(*) FROM envoisms.messages m WHERE m.account_id = :'acc' AND m.status = st))
             FROM unnest(ARRAY['queued', 'sent', 'delivered', 'failed', 'expired']) st),
          'they agree with the messages themselves');
SELECT is((SELECT body->'totals'->'7d' FROM ov1), (SELECT body->'totals'->'today' FROM ov1), '7 days: the same (all sent today)');
SELECT is((SELECT body->'totals'->'today'->'whatsapp'->'delivered' FROM ov1), '0', 'no WhatsApp');
SELECT is((SELECT jsonb_array_length(body->'daily') FROM ov1), 7, 'daily: one row per day of the window');
SELECT is((SELECT body->'daily'->0->'sent' FROM ov1), '0', 'a day without messages is 0');
SELECT is((SELECT (body->'daily'->6) - 'date' FROM ov1),
          '{"sent": 9, "failed": 1, "delivered": 6, "spend_mad": 3.41, "delivery_rate": 0.8571}',
          'today: 9 left the queue, 6 delivered of 7 final, spend = 11 charged × 0.31 (the failed one refunded)');
SELECT is((SELECT (body->'daily'->6->>'spend_mad')::numeric FROM ov1),
          (SELECT sum(charged_mad - refunded_mad) FROM envoisms.messages WHERE account_id = :'acc'),
          'spend agrees with the messages'' charges less refunds');
SELECT is((SELECT body->'daily'->6->>'date' FROM ov1), to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD'), 'the last day is today (UTC)');
SELECT is((SELECT jsonb_agg(o->>'operator' ORDER BY o->>'operator') FROM ov1, jsonb_array_elements(body->'operators') o),
          '["IAM", "Inwi", "Orange"]', 'per operator: IAM, Inwi, Orange');
SELECT is((SELECT o - 'median_delivery_seconds' FROM ov1, jsonb_array_elements(body->'operators') o WHERE o->>'operator' = 'Orange'),
          '{"operator": "Orange", "messages": 3, "delivered": 2, "delivery_rate": 0.6667}',
          'Orange: 3 handed over (1, 4, 7), 2 delivered, 1 failed');
SELECT is((SELECT o->'median_delivery_seconds' FROM ov1, jsonb_array_elements(body->'operators') o WHERE o->>'operator' = 'IAM'),
          '1', 'the median delivery time, from the time buckets (delivered within a second here)');
SELECT is((SELECT body->'balance'->'mad' FROM ov1), to_jsonb(envoisms.account_balance(:'acc')), 'the balance in MAD');
-- a second look reads the same from the folded rollups
SELECT is((pg_temp.ccall('GET', '/v1/console/overview', NULL, :'s', 'days=7')).body, (SELECT body FROM ov1),
          'folded or not, the same overview');
SELECT is((SELECT sum(messages)::int FROM envoisms.console_rollups WHERE account_id = :'acc'), 9,
          'the rollups hold the 9 messages that left the queue');
SELECT is((pg_temp.ccall('GET', '/v1/console/overview', NULL, :'o')).body->'totals'->'today'->'sms'->'sent', '1',
          'another account sees only its own');
SELECT is((pg_temp.ccall('GET', '/v1/console/overview', NULL, :'v')).status, 200, 'a viewer sees the overview');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/overview', NULL, :'s', 400, 'VALIDATION_ERROR', 'days=0', '{}', 'days=0');
-- rebuilt from the messages (the upgrade's backfill): the same figures
SELECT is(envoisms.console_rollup_rebuild(:'acc'), 9::bigint, 'console_rollup_rebuild() counts the 9 messages again');
SELECT is((pg_temp.ccall('GET', '/v1/console/overview', NULL, :'s', 'days=7')).body, (SELECT body FROM ov1),
          'and the overview is the same as from the trigger''s deltas');
-- the scheduler's fold: every account
SELECT is(envoisms.console_rollup_fold(), (SELECT count(*)::int FROM envoisms.console_rollup_deltas), 'console_rollup_fold() folds all deltas');
SELECT is((SELECT count(*)::int FROM envoisms.console_rollup_deltas), 0, 'none left');

-- ---- GET /v1/messages with the console's filters
SELECT is((pg_temp.ccall('GET', '/v1/messages', NULL, :'s', 'to=%2B212661234503')).body->'total', '1', 'filter by number');
SELECT is((pg_temp.ccall('GET', '/v1/messages', NULL, :'s', 'status=delivered&channel=sms')).body->'total', '6', 'by status and channel');
SELECT * FROM pg_temp.cfails('GET', '/v1/messages', NULL, :'s', 400, 'INVALID_PHONE', 'a bad number filter', '{}', 'to=abc');

-- "total" from the rollups, the queue and the inbound index: exactly count(*)
INSERT INTO envoisms.messages (account_id, message_id, direction, to_number, from_number, channel, encoding, segments, status)
VALUES (:'acc', envoisms.new_id('msg'), 'inbound', '+212522000000', '+212661000001', 'sms', 'gsm7', 1, 'received');
UPDATE envoisms.messages SET channel = 'whatsapp' WHERE message_id = (SELECT id FROM sent WHERE n = 10);
SELECT envoisms.dispatch_sent(:'acc', (SELECT id FROM sent WHERE n = 10), 'sandbox', 'wa-ref');
SELECT is(jsonb_agg(DISTINCT (envoisms.message_list(:'acc', 1, 0, st, ch, NULL, NULL, dir)->'total')::bigint
                    = (SELECT count(*) FROM envoisms.messages m WHERE m.account_id = :'acc'
                          AND (st IS NULL OR m.status = st) AND (ch IS NULL OR m.channel = ch) AND (dir IS NULL OR m.direction = dir))),
          '[true]', 'GET /v1/messages'' total is count(*) for every status, channel and direction')
  FROM unnest(ARRAY[NULL, 'queued', 'sent', 'delivered', 'failed', 'expired', 'received']) st,
       unnest(ARRAY[NULL, 'sms', 'whatsapp']) ch, unnest(ARRAY[NULL, 'outbound', 'inbound']) dir;
SELECT is((pg_temp.ccall('GET', '/v1/messages', NULL, :'s')).body->'total', '13', 'all 13: 11 SMS, 1 WhatsApp, 1 inbound');

-- ---- CSV export
SELECT envoisms.message_send(:'acc', '+212661999999', E'=HYPERLINK("http://evil")\n"quoted", text')->>'id' AS tricky \gset
SELECT * INTO TEMP csv FROM pg_temp.ccall('GET', '/v1/console/messages/export', NULL, :'s');
SELECT is((SELECT status FROM csv), 200, 'GET /v1/console/messages/export → 200');
SELECT is((SELECT headers->>'Content-Type' FROM csv), 'text/csv; charset=utf-8', 'as text/csv');
SELECT is((SELECT headers->>'Content-Disposition' FROM csv), 'attachment; filename="messages.csv"', 'as an attachment');
SELECT is((SELECT jsonb_typeof(body) FROM csv), 'string', 'the body is the CSV text');
SELECT is((SELECT split_part(body #>> '{}', E'\r\n', 1) FROM csv),
          'id,created_at,to,channel,status,segments,cost_mad,campaign_id,error_code,body', 'a header line');
SELECT is((SELECT array_length(string_to_array(rtrim(body #>> '{}', E'\r\n'), E'\r\n'), 1) FROM csv), 15, 'and one line per message (14)');
SELECT ok((SELECT (body #>> '{}') LIKE '%"''=HYPERLINK(""http://evil"")' || E'\n' || '""quoted"", text"%' FROM csv),
          'fields are quoted, quotes doubled, and a leading = made inert');
SELECT is((pg_temp.ccall('GET', '/v1/console/messages/export', NULL, :'s', 'status=failed')).body #>> '{}',
          'id,created_at,to,channel,status,segments,cost_mad,campaign_id,error_code,body' || E'\r\n'
          || (SELECT concat_ws(',', message_id, envoisms.iso_time(created_at), to_number, channel, status, segments, cost_mad, '',
                               '"UNDELIVERABLE"', '"Bonjour, message 7"')
                FROM envoisms.messages WHERE message_id = (SELECT id FROM sent WHERE n = 7)) || E'\r\n',
          'filtered by status: exactly the failed message');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/messages/export', NULL, :'s', 400, 'VALIDATION_ERROR', 'a bad status', '{}', 'status=lost');
SELECT ok((pg_temp.ccall('GET', '/v1/console/messages/export', NULL, :'o')).body #>> '{}' NOT LIKE '%Bonjour%',
          'another account exports only its own');

-- ---- webhooks: deliveries and replay
SELECT (pg_temp.ccall('POST', '/v1/webhooks', '{"url": "https://hooks.acme.ma/in", "events": ["message.delivered"]}', :'s')).body->>'id' AS whk \gset
SELECT envoisms.webhook_test(:'acc', :'whk');
SELECT envoisms.webhook_test(:'acc', :'whk');
SELECT min(delivery_id) AS d1, max(delivery_id) AS d2 FROM envoisms.webhook_deliveries WHERE webhook_id = :'whk' \gset
-- the worker's outcomes: d1 answered 500 in 120 ms, for the last time; d2 204 in 35 ms
UPDATE envoisms.webhook_deliveries SET attempts = 8 WHERE delivery_id = :d1;
SELECT envoisms.webhook_record(jsonb_build_array(
    jsonb_build_object('a', :'acc', 'd', :d1, 's', 500, 'e', '<script>alert(1)</script>', 'l', 120),
    jsonb_build_object('a', :'acc', 'd', :d2, 's', 204, 'l', 35)));
SELECT envoisms.webhook_test(:'acc', :'whk');
SELECT max(delivery_id) AS d2 FROM envoisms.webhook_deliveries WHERE webhook_id = :'whk' \gset
SELECT * INTO TEMP dl FROM pg_temp.ccall('GET', '/v1/console/webhooks/' || :'whk' || '/deliveries', NULL, :'s');
SELECT is((SELECT status FROM dl), 200, 'GET /v1/console/webhooks/:id/deliveries → 200');
SELECT is((SELECT jsonb_array_length(body->'data') FROM dl), 3, 'the three deliveries, newest first');
SELECT is((SELECT (body->'data'->2) - 'created_at' - 'event_id' FROM dl),
          jsonb_build_object('delivery_id', :'d1', 'webhook_id', :'whk', 'event', 'message.test', 'status', 'failed',
                             'attempts', 8, 'response_code', 500, 'latency_ms', 120,
                             'last_attempt_at', envoisms.iso_time(now()),
                             'next_attempt_at', NULL, 'error', '<script>alert(1)</script>'),
          'a failed delivery: status, attempts, response code, latency, error (as data, for the page to render as text)');
SELECT is((SELECT (body->'data'->1)->'latency_ms' FROM dl), '35', 'a delivered one: its latency');
SELECT is((pg_temp.ccall('GET', '/v1/console/webhooks/' || :'whk' || '/deliveries', NULL, :'s', 'status=failed')).body->'data'->0->>'delivery_id',
          :'d1', 'filtered by status');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/webhooks/' || :'whk' || '/deliveries', NULL, :'o', 404, 'NOT_FOUND',
                             'another account''s webhook');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/webhook-deliveries/' || :'d2' || '/replay', NULL, :'s', 409, 'CONFLICT',
                             'replaying a pending delivery');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/webhook-deliveries/' || :'d1' || '/replay', NULL, :'o', 404, 'NOT_FOUND',
                             'replaying another account''s delivery');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/webhook-deliveries/abc/replay', NULL, :'s', 404, 'NOT_FOUND', 'replaying a bad id');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/webhook-deliveries/' || :'d1' || '/replay', NULL, :'v', 403, 'FORBIDDEN',
                             'a viewer replays');
SELECT * INTO TEMP rp FROM pg_temp.ccall('POST', '/v1/console/webhook-deliveries/' || :'d1' || '/replay', NULL, :'s');
SELECT is((SELECT status FROM rp), 202, 'replaying a failed delivery → 202');
SELECT is((SELECT body->>'status' FROM rp), 'queued', 'queued');
SELECT is((SELECT event_id || payload || status || attempts FROM envoisms.webhook_deliveries WHERE delivery_id = (SELECT (body->>'delivery_id')::bigint FROM rp)),
          (SELECT event_id || payload || 'pending0' FROM envoisms.webhook_deliveries WHERE delivery_id = :d1),
          'a new pending delivery of the same event and bytes');
SELECT is((SELECT status FROM envoisms.webhook_deliveries WHERE delivery_id = :d1), 'failed', 'the failed one stays in the log');

-- ---- OTP sessions: never a code
SELECT envoisms.verify_send(:'acc', '+212612000001')->>'session_id' AS vrf1 \gset
SELECT envoisms.verify_send(:'acc', '+212612000002')->>'session_id' AS vrf2 \gset
SELECT substring(body FROM '[0-9]{6}') AS code1 FROM envoisms.messages WHERE metadata->>'verify_session_id' = :'vrf1' \gset
SELECT envoisms.verify_check(:'acc', :'vrf1', :'code1');
SELECT * INTO TEMP vr FROM pg_temp.ccall('GET', '/v1/console/verifications', NULL, :'v');
SELECT is((SELECT status FROM vr), 200, 'GET /v1/console/verifications → 200 (a viewer too)');
SELECT is((SELECT jsonb_agg(e->>'status' ORDER BY e->>'verification_id') FROM vr, jsonb_array_elements(body->'data') e),
          '["verified", "pending"]', 'a verified and a pending session');
SELECT is((SELECT body->'conversion_rate' FROM vr), '0.5000', 'the conversion rate: 1 of 2');
SELECT ok((SELECT body::text NOT LIKE '%' || :'code1' || '%' FROM vr), 'no code in the answer');
SELECT is((pg_temp.ccall('GET', '/v1/console/verifications', NULL, :'v', 'status=pending')).body->'data'->0->>'verification_id', :'vrf2',
          'filtered by status');
SELECT is(jsonb_array_length((pg_temp.ccall('GET', '/v1/console/verifications', NULL, :'o')).body->'data'), 0,
          'another account sees none of them');

-- ---- a campaign's progress
SELECT envoisms.contact_list_create(:'acc', 'Clients')->>'id' AS lst \gset
SELECT envoisms.contact_import(:'acc', '[{"phone": "+212611000001", "name": "A"}, {"phone": "+212611000002", "name": "B"}]', :'lst') IS NOT NULL AS imported \gset
SELECT envoisms.campaign_create(:'acc', 'Soldes', 'Bonjour {{name}}', list_id => :'lst')->>'id' AS cmp \gset
SELECT envoisms.campaign_launch(:'acc', :'cmp') IS NOT NULL AS launched \gset
SELECT envoisms.dispatch_sent(:'acc', message_id, 'sandbox', 'c-' || message_id) FROM envoisms.messages
 WHERE campaign_id = :'cmp' ORDER BY message_id LIMIT 1;
SELECT * INTO TEMP cp FROM pg_temp.ccall('GET', '/v1/console/campaigns/' || :'cmp' || '/progress', NULL, :'s');
SELECT is((SELECT body->'counts' FROM cp), '{"queued": 1, "sent": 1, "delivered": 0, "failed": 0, "expired": 0}',
          'campaign progress: counts by status');
SELECT is((SELECT body->'total_count' FROM cp), '2', 'and the total');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/campaigns/' || :'cmp' || '/progress', NULL, :'o', 404, 'NOT_FOUND',
                             'another account''s campaign');
SELECT is((pg_temp.ccall('GET', '/v1/messages', NULL, :'s', 'campaign_id=' || :'cmp')).body->'total', '2', 'GET /v1/messages by campaign');

-- ---- the ledger
SELECT * INTO TEMP lg FROM pg_temp.ccall('GET', '/v1/console/ledger', NULL, :'s');
SELECT is((SELECT body->'total' FROM lg), (SELECT to_jsonb(count(*)) FROM envoisms.ledger WHERE account_id = :'acc'), 'the ledger: every entry of the account');
SELECT is((SELECT body->'data'->0->>'kind' FROM lg), 'refund', 'newest first: the refund of the failed message');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/ledger', NULL, :'v', 403, 'FORBIDDEN', 'a viewer reads the ledger');

SELECT * FROM finish();
ROLLBACK;
