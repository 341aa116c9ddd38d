-- campaigns.sql — GET/POST /v1/templates, GET/POST /v1/campaigns,
-- GET /v1/campaigns/:id, POST /v1/campaigns/:id/send, the scheduler entry
-- points and recurring campaigns.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(114);

SELECT pg_temp.new_account(100) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset
SELECT envoisms.contact_list_create(:'acc', 'Clients')->>'id' AS lst \gset
SELECT envoisms.contact_list_create(:'acc', 'Empty')->>'id' AS empty \gset
SELECT envoisms.contact_import(:'acc', '[
    {"phone": "+212611000001", "name": "Karim", "custom_fields": {"custom1": "VIP"}},
    {"phone": "+212611000002", "name": "Youssef"},
    {"phone": "+212611000003"},
    {"phone": "+212611000004", "name": "Stop"}]', :'lst') IS NOT NULL AS ok \gset
INSERT INTO envoisms.optouts (account_id, phone) VALUES (:'acc', '+212611000004');

-- ---- templates
CREATE TEMP TABLE t AS SELECT * FROM pg_temp.call('POST', '/v1/templates', '{"name": "promo", "body": "Salut {{name}} ({{custom1}})"}');
SELECT is((SELECT status FROM t), 201, 'POST /v1/templates → 201');
SELECT matches((SELECT body->>'id' FROM t), '^tpl_[0-9a-f]{28}$', 'template id is tpl_…');
SELECT is((SELECT body->>'status' FROM t), 'approved', 'templates are approved at once');
SELECT body->>'id' AS tpl FROM t \gset
CREATE TEMP TABLE tw AS SELECT * FROM pg_temp.call('POST', '/v1/templates', '{"name": "otp_fr", "body": "Code {{custom1}}", "channel": "whatsapp", "language": "fr"}');
SELECT is((SELECT body->>'language' || ' ' || (body->>'channel') FROM tw), 'fr whatsapp', 'a WhatsApp template carries a name and a language');
SELECT body->>'id' AS tplw FROM tw \gset
SELECT is((SELECT jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/templates')), 2, 'GET /v1/templates');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', '{"name": "x", "body": "b", "channel": "whatsapp"}', 400, 'VALIDATION_ERROR', 'WhatsApp template without language');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', '{"name": "x", "body": "b", "language": "french"}', 400, 'VALIDATION_ERROR', 'malformed language');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', '{"body": "b"}', 400, 'VALIDATION_ERROR', 'template without name');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', format('{"name": "%s", "body": "b"}', repeat('n', 101)), 400, 'VALIDATION_ERROR', 'template name of 101 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/templates', format('{"name": "%s", "body": "%s"}', repeat('n', 100), repeat('b', 1600)))), 201,
          'template name of 100 and body of 1600 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', format('{"name": "x", "body": "%s"}', repeat('b', 1601)), 400, 'VALIDATION_ERROR', 'template body of 1601 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/templates', '{"name": "x"}', 400, 'VALIDATION_ERROR', 'template without body');

-- ---- create
CREATE TEMP TABLE c AS SELECT * FROM pg_temp.call('POST', '/v1/campaigns', format(
    '{"name": "Soldes d''été 2026", "body": "Bonjour {{name}}, -50%% avec ETE50 {{custom1}}", "channel": "sms", "list_id": "%s", "sender_id": "SOLDES"}', :'lst'));
SELECT is((SELECT status FROM c), 201, 'POST /v1/campaigns → 201');
SELECT matches((SELECT body->>'id' FROM c), '^cmp_[0-9a-f]{28}$', 'campaign id is cmp_…');
SELECT is((SELECT body->>'status' FROM c), 'draft', 'a campaign without scheduled_at is a draft');
SELECT body->>'id' AS cmp FROM c \gset
CREATE TEMP TABLE g AS SELECT * FROM pg_temp.call('GET', '/v1/campaigns/' || :'cmp');
SELECT is((SELECT status FROM g), 200, 'GET /v1/campaigns/:id → 200');
SELECT ok((SELECT body ?& ARRAY['id', 'name', 'channel', 'list_id', 'body', 'sender_id', 'status', 'total_count', 'sent_count',
                                'started_at', 'created_at', 'template_id', 'scheduled_at'] FROM g), 'campaign: the contract''s fields');
SELECT is((SELECT body->>'sender_id' || ' ' || (body->>'total_count') || ' ' || (body->>'sent_count') FROM g), 'SOLDES 0 0', 'draft: no progress yet');
SELECT ok((SELECT body->'data' @> jsonb_build_array(jsonb_build_object('id', :'cmp')) FROM pg_temp.call('GET', '/v1/campaigns')), 'GET /v1/campaigns lists it');

SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"body": "b", "list_id": "%s"}', :'lst'), 400, 'VALIDATION_ERROR', 'campaign without name');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"name": "%s", "body": "b"}', repeat('n', 201)), 400, 'VALIDATION_ERROR', 'name of 201 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/campaigns', format('{"name": "%s", "body": "%s"}', repeat('n', 200), repeat('b', 1600)))), 201,
          'name of 200 and body of 1600 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"name": "n", "body": "%s"}', repeat('b', 1601)), 400, 'VALIDATION_ERROR', 'body of 1601 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n"}', 400, 'VALIDATION_ERROR', 'neither body nor template_id');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"name": "n", "body": "b", "template_id": "%s"}', :'tpl'), 400, 'VALIDATION_ERROR', 'both body and template_id');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "template_id": "tpl_nope"}', 404, 'NOT_FOUND', 'unknown template_id');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', format('{"name": "n", "template_id": "%s"}', :'tplw'), 400, 'VALIDATION_ERROR', 'a WhatsApp template for an SMS campaign');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "list_id": "lst_nope"}', 404, 'NOT_FOUND', 'unknown list_id');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "channel": "fax"}', 400, 'VALIDATION_ERROR', 'channel fax');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "sender_id": "TWELVECHARSX"}', 400, 'VALIDATION_ERROR', 'sender_id of 12 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/campaigns', '{"name": "n", "body": "b", "sender_id": "ELEVENCHARS"}')), 201, 'sender_id of 11 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "scheduled_at": "2001-01-01T00:00:00Z"}', 400, 'VALIDATION_ERROR', 'scheduled_at in the past');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "scheduled_at": "tomorrow"}', 400, 'VALIDATION_ERROR', 'scheduled_at not ISO 8601');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "scheduled_at": "2030-01-01T00:00:00+16:00"}', 400, 'VALIDATION_ERROR', 'scheduled_at with an offset of +16:00');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "buttons": [{"type": "url", "text": "t", "value": "https://x.ma"}]}',
                            400, 'VALIDATION_ERROR', 'buttons on an SMS campaign');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "channel": "whatsapp", "buttons": [{"type": "url", "text": "t", "value": "https://x.ma"},{"type": "url", "text": "t", "value": "https://x.ma"},{"type": "url", "text": "t", "value": "https://x.ma"},{"type": "url", "text": "t", "value": "https://x.ma"}]}',
                            400, 'VALIDATION_ERROR', 'four buttons');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "metadata": {"throttling": "50_day"}}', 400, 'VALIDATION_ERROR', 'throttling 50_day');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "metadata": {"throttling": "0_min"}}', 400, 'VALIDATION_ERROR', 'throttling 0_min');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns', '{"name": "n", "body": "b", "metadata": "x"}', 400, 'VALIDATION_ERROR', 'metadata not an object');
SELECT is(envoisms.campaign_throttle('{"throttling": "50_min"}'), 50.0, 'throttling 50_min = 50 per minute');
SELECT is(envoisms.campaign_throttle('{"throttling": "2_sec"}'), 120.0, 'throttling 2_sec = 120 per minute');
SELECT is(envoisms.campaign_throttle('{"throttling": "30_hour"}'), 0.5, 'throttling 30_hour = 0.5 per minute');
SELECT * FROM pg_temp.fails('GET', '/v1/campaigns/cmp_nope', NULL, 404, 'NOT_FOUND', 'GET an unknown campaign');

-- ---- send
SELECT envoisms.account_balance(:'acc') AS bal0 \gset
CREATE TEMP TABLE s AS SELECT * FROM pg_temp.call('POST', '/v1/campaigns/' || :'cmp' || '/send', '{}');
SELECT is((SELECT status FROM s), 200, 'POST /v1/campaigns/:id/send → 200');
SELECT is((SELECT body->>'queued' || ' ' || (body->>'total') || ' ' || (body->>'opted_out') FROM s), '3 4 1',
          'send: one message per member, the opted-out one left out');
SELECT is((SELECT string_agg(body, ' | ' ORDER BY to_number) FROM envoisms.messages WHERE campaign_id = :'cmp'),
          'Bonjour Karim, -50% avec ETE50 VIP | Bonjour Youssef, -50% avec ETE50  | Bonjour , -50% avec ETE50 ',
          'send: {{name}} and {{custom1}} personalised per recipient');
SELECT is((SELECT count(*)::int FROM envoisms.messages WHERE campaign_id = :'cmp' AND sender_id = 'SOLDES' AND status = 'queued'), 3,
          'send: queued with the campaign''s sender id');
SELECT is(envoisms.account_balance(:'acc'), :'bal0'::numeric - 0.93, 'send: the whole campaign debited (3 × 0.31)');
SELECT is((SELECT body->>'status' || ' ' || (body->>'total_count') FROM pg_temp.call('GET', '/v1/campaigns/' || :'cmp')), 'running 3',
          'after send: running, total_count 3');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/' || :'cmp' || '/send', '{}', 409, 'CONFLICT', 'a second send');
UPDATE envoisms.messages SET status = 'sent' WHERE campaign_id = :'cmp' AND to_number = '+212611000001';
SELECT is((SELECT body->'sent_count' FROM pg_temp.call('GET', '/v1/campaigns/' || :'cmp')), '1'::jsonb, 'sent_count is live');
SELECT is(envoisms.campaigns_complete_finished(), 0, 'not completed while messages are queued');
UPDATE envoisms.messages SET status = 'delivered' WHERE campaign_id = :'cmp';
SELECT is(envoisms.campaigns_complete_finished(), 1, 'completed once no message is queued');
SELECT is((SELECT body->>'status' || ' ' || (body->>'sent_count') FROM pg_temp.call('GET', '/v1/campaigns/' || :'cmp')), 'completed 3',
          'completed, sent_count 3');

-- segments per recipient: a long name makes a two-part SMS for one recipient only
SELECT envoisms.contact_list_create(:'acc', 'Seg')->>'id' AS seg \gset
SELECT envoisms.contact_import(:'acc', format('[{"phone": "+212611000011", "name": "A"}, {"phone": "+212611000012", "name": "%s"}]', repeat('B', 160))::jsonb, :'seg') IS NOT NULL AS ok \gset
SELECT envoisms.campaign_create(:'acc', 'seg', 'Hello {{name}}', list_id => :'seg')->>'id' AS cmpseg \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmpseg')->'cost'->'mad', '0.93'::jsonb, 'cost counts segments per recipient (1 + 2)');
SELECT is((SELECT array_agg(segments::int ORDER BY to_number) FROM envoisms.messages WHERE campaign_id = :'cmpseg'), ARRAY[1, 2], 'segments per message');

-- throttling spreads next_attempt_at
SELECT envoisms.campaign_create(:'acc', 'slow', 'Hi', list_id => :'lst', metadata => '{"throttling": "2_min"}')->>'id' AS cmpslow \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmpslow')->'queued', '3'::jsonb, 'throttled campaign queued');
SELECT is((SELECT array_agg(extract(epoch FROM next_attempt_at - created_at)::int ORDER BY next_attempt_at) FROM envoisms.messages WHERE campaign_id = :'cmpslow'),
          ARRAY[0, 30, 60], '2_min: one message every 30 s');

-- templates in campaigns
SELECT envoisms.campaign_create(:'acc', 'tpl', template_id => :'tpl', list_id => :'lst')->>'id' AS cmptpl \gset
SELECT is(envoisms.campaign_launch(:'acc', :'cmptpl')->'queued', '3'::jsonb, 'a template campaign is sent');
SELECT is((SELECT body FROM envoisms.messages WHERE campaign_id = :'cmptpl' AND to_number = '+212611000001'), 'Salut Karim (VIP)', 'template body personalised');
SELECT is((SELECT metadata->'template'->>'id' FROM envoisms.messages WHERE campaign_id = :'cmptpl' LIMIT 1), :'tpl', 'the message records its template');

-- send errors leave nothing behind
SELECT envoisms.campaign_create(:'acc', 'no list', 'Hi')->>'id' AS nolist \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/' || :'nolist' || '/send', '{}', 400, 'VALIDATION_ERROR', 'send without list_id');
SELECT envoisms.campaign_create(:'acc', 'empty', 'Hi', list_id => :'empty')->>'id' AS cmpempty \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/' || :'cmpempty' || '/send', '{}', 400, 'VALIDATION_ERROR', 'send to an empty list');
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/cmp_nope/send', '{}', 404, 'NOT_FOUND', 'send an unknown campaign');
SELECT pg_temp.new_account(0.5) AS poor \gset
SELECT envoisms.contact_list_create(:'poor', 'P')->>'id' AS plst \gset
SELECT envoisms.contact_import(:'poor', '[{"phone": "+212611000001"}, {"phone": "+212611000002"}]', :'plst') IS NOT NULL AS ok \gset
SELECT envoisms.campaign_create(:'poor', 'poor', 'Hi', list_id => :'plst')->>'id' AS pcmp \gset
SELECT * FROM pg_temp.fails('POST', '/v1/campaigns/' || :'pcmp' || '/send', '{}', 402, 'INSUFFICIENT_BALANCE', 'send without enough balance (0.62 > 0.5)',
                            pg_temp.new_key(:'poor'));
SELECT is((SELECT status FROM envoisms.campaigns WHERE campaign_id = :'pcmp'), 'draft', '402: the campaign stays a draft');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.campaign_launch(%L, %L)', :'acc', :'cmp'), 'CONFLICT', 'campaign_launch(running campaign)');

-- sandbox: a test key sends without debit
SELECT envoisms.account_balance(:'acc') AS bal1 \gset
SELECT envoisms.campaign_create(:'acc', 'sandbox', 'Hi', list_id => :'lst')->>'id' AS cmpsb \gset
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/campaigns/' || :'cmpsb' || '/send', '{}', pg_temp.new_key(:'acc', live => false))), 200, 'test key sends');
SELECT is(envoisms.account_balance(:'acc'), :'bal1'::numeric, 'test key: no debit');
SELECT is((SELECT bool_and(sandbox) FROM envoisms.messages WHERE campaign_id = :'cmpsb'), true, 'test key: sandbox messages');

-- ---- scheduled campaigns
CREATE TEMP TABLE sc AS SELECT * FROM pg_temp.call('POST', '/v1/campaigns',
    format('{"name": "later", "body": "Hi", "list_id": "%s", "scheduled_at": "%s"}', :'lst', envoisms.iso_time(now() + interval '1 hour')));
SELECT is((SELECT body->>'status' FROM sc), 'scheduled', 'scheduled_at → scheduled');
SELECT body->>'id' AS cmpsched FROM sc \gset
SELECT is(envoisms.campaigns_start_due(), 0, 'not due yet');
UPDATE envoisms.campaigns SET scheduled_at = now() - interval '1 second' WHERE campaign_id = :'cmpsched';
SELECT envoisms.campaign_create(:'poor', 'poor later', 'Hi', list_id => :'plst', scheduled_at => now() + interval '1 hour')->>'id' AS psched \gset
UPDATE envoisms.campaigns SET scheduled_at = now() - interval '1 second' WHERE campaign_id = :'psched';
SELECT is(envoisms.campaigns_start_due(), 1, 'start_due launches the due campaign');
SELECT is((SELECT status FROM envoisms.campaigns WHERE campaign_id = :'cmpsched'), 'running', 'due campaign running');
SELECT is((SELECT status || ' ' || error_code FROM envoisms.campaigns WHERE campaign_id = :'psched'), 'cancelled INSUFFICIENT_BALANCE',
          'a due campaign that cannot start is cancelled with its reason');
SELECT is(envoisms.campaigns_start_due(), 0, 'nothing left to start');

-- ---- recurring (pg_cron when this database has it)
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron') AS cron_available \gset
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN CREATE EXTENSION pg_cron; END IF; EXCEPTION WHEN OTHERS THEN NULL; END $$;
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') AS has_cron \gset
\if :has_cron
SELECT ok(envoisms.campaign_schedule_recurring(:'acc', :'cmp', '0 9 * * 1') > 0, 'campaign_schedule_recurring returns a pg_cron job id');
SELECT is((SELECT command FROM cron.job WHERE jobname = 'envoisms_' || :'cmp'),
          format('SELECT envoisms.campaign_clone_and_launch(%L, %L)', :'acc', :'cmp'), 'the job clones and launches the campaign');
SELECT is(envoisms.campaign_unschedule_recurring(:'acc', :'cmp'), true, 'campaign_unschedule_recurring removes it');
\else
SELECT throws_ok(format('SELECT envoisms.campaign_schedule_recurring(%L, %L, %L)', :'acc', :'cmp', '0 9 * * 1'), '0A000',
                 'recurring campaigns need the pg_cron extension', 'without pg_cron: feature_not_supported');
SELECT skip('pg_cron is not installed in this database', 2);
\endif
SELECT matches(envoisms.campaign_clone_and_launch(:'acc', :'cmp'), '^cmp_', 'campaign_clone_and_launch makes and launches a copy');
SELECT is((SELECT count(*)::int FROM envoisms.campaigns WHERE cloned_from = :'cmp' AND status = 'running'), 1, 'the copy is running');
SELECT * FROM pg_temp.fails('GET', '/v1/campaigns', NULL, 403, 'FORBIDDEN', 'a key without campaigns', pg_temp.new_key(:'acc', '{send}'));

SELECT * FROM finish();
ROLLBACK;
