-- cross_account.sql — a key of account A gets 404 NOT_FOUND for every id of
-- account B, on every :id route and for every id given in a body or query,
-- and B's objects stay as they were.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(51);

SELECT pg_temp.new_account(10) AS a \gset
SELECT pg_temp.new_account(10) AS b \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'a')) IS NOT NULL AS ok \gset
SELECT pg_temp.new_key(:'b') AS bkey \gset

-- one object of every kind in account B
SELECT api_key_id AS b_key FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex(:'bkey') \gset
SELECT envoisms.verify_send(:'b', '+212612345678')->>'session_id' AS b_vrf \gset
SELECT envoisms.message_send(:'b', '+212612345679', 'hello')->>'id' AS b_msg \gset
SELECT envoisms.contact_list_create(:'b', 'B list')->>'id' AS b_lst \gset
SELECT envoisms.contact_create(:'b', '+212612345670', 'B', list_id => :'b_lst')->>'id' AS b_ctc \gset
SELECT envoisms.template_create(:'b', 'B tpl', 'Hi')->>'id' AS b_tpl \gset
SELECT envoisms.campaign_create(:'b', 'B cmp', 'Hi', list_id => :'b_lst')->>'id' AS b_cmp \gset
SELECT envoisms.webhook_create(:'b', 'https://b.example.ma/h')->>'id' AS b_whk \gset
SELECT envoisms.optout_add(:'b', '+212612345671') IS NOT NULL AS ok \gset
INSERT INTO envoisms.billing_settings (name, value) VALUES ('bank_transfer_details', '{"rib": "190 780 2111122223333444 55"}');
SELECT envoisms.topup_create(:'b', 'bank_transfer', 100)->>'id' AS b_top \gset
SELECT envoisms.topup_confirm(envoisms.topup_create(:'b', 'bank_transfer', 50)->>'id') AS ok \gset
SELECT invoice_id AS b_inv FROM envoisms.console_invoices WHERE account_id = :'b' \gset
SELECT envoisms.webhook_test(:'b', :'b_whk') IS NOT NULL AS ok \gset
UPDATE envoisms.webhook_deliveries SET status = 'failed' WHERE account_id = :'b' RETURNING delivery_id AS b_dlv \gset

CREATE TEMP TABLE probes (method text, path text, body text, covers text);
INSERT INTO probes VALUES
    ('GET',    '/v1/verify/' || :'b_vrf',                NULL, '/v1/verify/:id'),
    ('POST',   '/v1/verify/' || :'b_vrf' || '/cancel',   '{}', '/v1/verify/:id/cancel'),
    ('GET',    '/v1/messages/' || :'b_msg',              NULL, '/v1/messages/:id'),
    ('DELETE', '/v1/contacts/' || :'b_ctc',              NULL, '/v1/contacts/:id'),
    ('GET',    '/v1/campaigns/' || :'b_cmp',             NULL, '/v1/campaigns/:id'),
    ('POST',   '/v1/campaigns/' || :'b_cmp' || '/send',  '{}', '/v1/campaigns/:id/send'),
    ('PATCH',  '/v1/webhooks/' || :'b_whk',              '{"active": false}', '/v1/webhooks/:id'),
    ('DELETE', '/v1/webhooks/' || :'b_whk',              NULL, '/v1/webhooks/:id'),
    ('POST',   '/v1/webhooks/' || :'b_whk' || '/test',   '{}', '/v1/webhooks/:id/test'),
    ('PATCH',  '/v1/api-keys/' || :'b_key',              '{"active": false}', '/v1/api-keys/:id'),
    ('DELETE', '/v1/api-keys/' || :'b_key',              NULL, '/v1/api-keys/:id'),
    ('DELETE', '/v1/optouts/%2B212612345671',            NULL, '/v1/optouts/:id'),
    ('GET',    '/v1/billing/topups/' || :'b_top',        NULL, '/v1/billing/topups/:id'),
    ('GET',    '/v1/console/invoices/' || :'b_inv',      NULL, '/v1/console/invoices/:id'),
    ('GET',    '/v1/console/campaigns/' || :'b_cmp' || '/progress', NULL, '/v1/console/campaigns/:id/progress'),
    ('GET',    '/v1/console/webhooks/' || :'b_whk' || '/deliveries', NULL, '/v1/console/webhooks/:id/deliveries'),
    ('POST',   '/v1/console/webhook-deliveries/' || :'b_dlv' || '/replay', NULL, '/v1/console/webhook-deliveries/:id/replay'),
    -- ids given in bodies
    ('POST',   '/v1/contacts',        format('{"phone": "+212600000001", "list_id": "%s"}', :'b_lst'), 'body list_id'),
    ('POST',   '/v1/contacts/import', format('{"contacts": [{"phone": "+212600000001"}], "list_id": "%s"}', :'b_lst'), 'body list_id'),
    ('POST',   '/v1/campaigns',       format('{"name": "x", "body": "Hi", "list_id": "%s"}', :'b_lst'), 'body list_id'),
    ('POST',   '/v1/campaigns',       format('{"name": "x", "template_id": "%s"}', :'b_tpl'), 'body template_id');

SELECT pg_temp.state() AS b_before \gset
SELECT f.* FROM probes p, LATERAL pg_temp.fails(p.method, p.path, p.body, 404, 'NOT_FOUND', p.method || ' ' || p.covers || ' with B''s id') f;
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 404, 'NOT_FOUND', 'GET /v1/contacts?list_id= with B''s list', query => 'list_id=' || :'b_lst');

-- a session of B cannot be checked by A: the uniform failure, and B's session untouched
SELECT is((SELECT body->'verified' FROM pg_temp.call('POST', '/v1/verify/check', format('{"session_id": "%s", "code": "123456"}', :'b_vrf'))),
          'false'::jsonb, 'verify/check of B''s session → verified false');
SELECT is((SELECT attempts FROM envoisms.verify_sessions WHERE session_id = :'b_vrf'), 0, '… and B''s session counts no attempt');
SELECT is(pg_temp.state(), :'b_before', 'nothing of B changed');

-- every :id route of an account's objects is probed above (a new one without
-- a probe fails here); /v1/carriers/:id/… are carrier callbacks, not account
-- objects; the console's users and invitations answer a session only (an
-- owner of A gets 404 for B's: console_roles.sql), and the operator's
-- /v1/console/operator-accounts/:id… span accounts by design (refused to
-- everyone but the operator: console_billing.sql)
SELECT is((SELECT array_agg(DISTINCT e.template ORDER BY e.template) FROM envoisms.api_endpoints e
            WHERE e.template LIKE '%:id%' AND e.template NOT LIKE '/v1/carriers/%'
              AND e.template NOT IN ('/v1/console/users/:id', '/v1/console/invitations/:id')
              AND e.template NOT LIKE '/v1/console/operator-accounts/%'),
          (SELECT array_agg(DISTINCT p.covers ORDER BY p.covers) FROM probes p WHERE p.covers LIKE '/v1/%'),
          'every :id route has a cross-account probe');
-- lists of A show nothing of B
SELECT is((SELECT count(*)::int FROM pg_temp.call('GET', '/v1/contacts') r, jsonb_array_elements(r.body->'data') d), 0, 'A lists no contact of B');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/billing/topups')), '0'::jsonb, 'A lists no top-up of B');
SELECT is((SELECT jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/webhooks')), 0, 'A lists no webhook of B');

SELECT * FROM finish();
ROLLBACK;
