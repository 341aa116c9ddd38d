-- console_billing.sql — invoices (one per completed top-up, numbered
-- without gaps per year, TVA 20% included in the amount, the legal
-- identifiers of both parties), the account's identifiers, and the
-- operator's area, refused to everyone else.
BEGIN;
SELECT plan(78);
\ir lib/api_helpers.psql
\ir lib/console_helpers.psql

INSERT INTO envoisms.billing_settings (name, value) VALUES ('bank_transfer_details', '{"rib": "190 780 2111122223333444 55"}')
ON CONFLICT (name) DO UPDATE SET value = excluded.value;
INSERT INTO envoisms.console_settings (name, value) VALUES
    ('seller_name', 'EnvoiSMS SARL'), ('seller_ice', '001234567000089'), ('seller_if', '12345678'),
    ('seller_rc', 'Casablanca 123456'), ('seller_address', '10 rue Tahar Sebti'), ('seller_city', 'Casablanca');
SELECT pg_temp.new_account(0) AS acc \gset
SELECT pg_temp.new_account(0) AS other \gset
SELECT pg_temp.console_user(:'acc', 'owner@acme.ma') AS owner_id \gset
SELECT pg_temp.console_user(:'acc', 'billing@acme.ma', 'billing') AS billing_id \gset
SELECT pg_temp.console_user(:'acc', 'dev@acme.ma', 'developer') AS dev_id \gset
SELECT pg_temp.console_user(:'other', 'owner@other.ma', 'owner', true) AS op_id \gset
SELECT pg_temp.session('owner@acme.ma') AS s \gset
SELECT pg_temp.session('billing@acme.ma') AS b \gset
SELECT pg_temp.session('dev@acme.ma') AS d \gset
SELECT pg_temp.session('owner@other.ma') AS op \gset

-- ---- the account's legal identifiers
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{"ice": "12345"}', :'s', 400, 'VALIDATION_ERROR', 'an ICE of 5 digits');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{"if": "12a"}', :'s', 400, 'VALIDATION_ERROR', 'an IF with a letter');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{"rc": ""}', :'s', 400, 'VALIDATION_ERROR', 'an empty RC');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{}', :'s', 400, 'VALIDATION_ERROR', 'nothing to change');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/account', '{"name": "X"}', :'d', 403, 'FORBIDDEN', 'a developer changes them');
SELECT * INTO TEMP legal FROM pg_temp.ccall('PATCH', '/v1/console/account',
    '{"name": "Acme Maroc SARL", "ice": "002345678000012", "if": "87654321", "rc": "Rabat 4567", "address": "5 avenue Hassan II", "city": "Rabat"}', :'b');
SELECT is((SELECT status FROM legal), 200, 'billing sets the identifiers → 200');
SELECT is((SELECT body - 'account_id' - 'balance_mad' - 'balance_eur' - 'status' FROM legal),
          '{"name": "Acme Maroc SARL", "ice": "002345678000012", "if": "87654321", "rc": "Rabat 4567", "address": "5 avenue Hassan II", "city": "Rabat"}',
          'and reads them back');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/account', '{"city": "Salé"}', :'s')).body->>'ice', '002345678000012',
          'a partial change keeps the others');
SELECT is((pg_temp.ccall('GET', '/v1/console/account', NULL, :'d')).body->>'city', 'Salé', 'every role reads them');

-- ---- invoices: one per completed top-up
SELECT envoisms.topup_create(:'acc', 'bank_transfer', 120)->>'id' AS t1 \gset
SELECT is((SELECT count(*)::int FROM envoisms.console_invoices), 0, 'a pending top-up has no invoice');
SELECT envoisms.topup_confirm(:'t1');
SELECT is((SELECT count(*)::int FROM envoisms.console_invoices WHERE topup_id = :'t1'), 1, 'completing it issues one');
SELECT envoisms.topup_confirm(:'t1');
SELECT is((SELECT count(*)::int FROM envoisms.console_invoices WHERE topup_id = :'t1'), 1, 'confirming again issues no second');
SELECT envoisms.topup_create(:'acc', 'bank_transfer', 99.99)->>'id' AS t2 \gset
SELECT envoisms.topup_create(:'other', 'bank_transfer', 50)->>'id' AS t3 \gset
SELECT envoisms.topup_create(:'acc', 'bank_transfer', 10)->>'id' AS t4 \gset
SELECT envoisms.topup_fail(:'t4', 'never paid');
SELECT envoisms.topup_confirm(:'t2');
SELECT envoisms.topup_confirm(:'t3');
SELECT is((SELECT count(*)::int FROM envoisms.console_invoices WHERE topup_id = :'t4'), 0, 'a failed top-up has none');
SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int AS year \gset
SELECT is((SELECT array_agg(number ORDER BY issued_at, number) FROM envoisms.console_invoices WHERE year = :year),
          '{1,2,3}', 'numbers follow each other without gaps, across accounts');
SELECT is((SELECT last_number FROM envoisms.console_invoice_counters WHERE year = :year), 3, 'the year''s counter');
-- a rolled-back completion gives its number back
SAVEPOINT before_rollback;
SELECT envoisms.topup_create(:'acc', 'bank_transfer', 15)->>'id' AS t5 \gset
SELECT envoisms.topup_confirm(:'t5');
ROLLBACK TO SAVEPOINT before_rollback;
SELECT envoisms.topup_create(:'acc', 'bank_transfer', 17)->>'id' AS t6 \gset
SELECT envoisms.topup_confirm(:'t6');
SELECT is((SELECT number FROM envoisms.console_invoices WHERE topup_id = :'t6'), 4, 'a rolled-back completion leaves no gap');
-- another year starts at 1
INSERT INTO envoisms.console_invoice_counters (year, last_number) VALUES (:year + 1, 41);
SELECT is((SELECT number FROM envoisms.console_invoices WHERE topup_id = :'t6'), 4, '(next year''s counter is its own)');

SELECT * INTO TEMP inv_list FROM pg_temp.ccall('GET', '/v1/console/invoices', NULL, :'b');
SELECT is((SELECT status FROM inv_list), 200, 'GET /v1/console/invoices → 200');
SELECT is((SELECT jsonb_agg(e->>'number' ORDER BY e->>'number') FROM inv_list, jsonb_array_elements(body->'data') e),
          jsonb_build_array(:year || '-000001', :year || '-000002', :year || '-000004'),
          'the account''s invoices, numbered YYYY-NNNNNN (000003 is the other account''s)');
SELECT (SELECT e->>'invoice_id' FROM inv_list, jsonb_array_elements(body->'data') e WHERE e->>'topup_id' = :'t2') AS inv2 \gset
SELECT * INTO TEMP inv FROM pg_temp.ccall('GET', '/v1/console/invoices/' || :'inv2', NULL, :'b');
SELECT is((SELECT status FROM inv), 200, 'GET /v1/console/invoices/:id → 200');
SELECT is((SELECT body->'total_ttc_mad' FROM inv), '99.99', 'the top-up amount is the total TTC');
SELECT is((SELECT body->'total_ht_mad' FROM inv), '83.33', 'HT = TTC / 1.20, rounded to the centime');
SELECT is((SELECT body->'tva_mad' FROM inv), '16.66', 'TVA = TTC − HT');
SELECT is((SELECT body->'tva_rate' FROM inv), '0.2', 'at 20%');
SELECT is((SELECT (body->>'total_ht_mad')::numeric + (body->>'tva_mad')::numeric FROM inv), 99.99, 'HT + TVA = TTC exactly');
SELECT is((SELECT body->'lines'->0->'total_ht_mad' FROM inv), '83.33', 'one line, HT');
SELECT is((SELECT body->'seller' FROM inv),
          '{"name": "EnvoiSMS SARL", "ice": "001234567000089", "if": "12345678", "rc": "Casablanca 123456", "address": "10 rue Tahar Sebti", "city": "Casablanca", "email": null}',
          'the seller''s legal identifiers, from console_settings');
SELECT is((SELECT body->'buyer' FROM inv),
          '{"name": "Acme Maroc SARL", "ice": "002345678000012", "if": "87654321", "rc": "Rabat 4567", "address": "5 avenue Hassan II", "city": "Salé"}',
          'the buyer''s, as they were at issue');
SELECT is((SELECT body->>'paid_with' FROM inv), 'bank_transfer', 'paid by bank transfer');
SELECT is((SELECT body->>'payment_reference' FROM inv), (SELECT reference FROM envoisms.topups WHERE topup_id = :'t2'), 'with its reference');
UPDATE envoisms.console_account_legal SET address = 'moved' WHERE account_id = :'acc';
SELECT is((pg_temp.ccall('GET', '/v1/console/invoices/' || :'inv2', NULL, :'b')).body->'buyer'->>'address', '5 avenue Hassan II',
          'an issued invoice does not change when the account moves');
SELECT is((SELECT 100 * round(amount_mad / 1.2, 2) FROM envoisms.topups WHERE topup_id = :'t1'),
          (SELECT 100 * total_ht_mad FROM envoisms.console_invoices WHERE topup_id = :'t1'), '120 TTC → 100 HT');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/invoices/' || :'inv2', NULL, :'op', 404, 'NOT_FOUND', 'another account''s invoice');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/invoices', NULL, :'d', 403, 'FORBIDDEN', 'a developer reads invoices');

-- ---- the operator's area
SELECT * FROM pg_temp.cfails('GET', '/v1/console/operator/accounts', NULL, :'s', 403, 'FORBIDDEN', 'an owner (not operator) lists accounts');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/operator/carriers', NULL, :'b', 403, 'FORBIDDEN', 'billing reads carriers');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/operator/workers', NULL, :'d', 403, 'FORBIDDEN', 'a developer reads worker stats');
SELECT * FROM pg_temp.cfails('GET', '/v1/console/operator/dead-letters', NULL, :'s', 403, 'FORBIDDEN', 'an owner reads dead letters');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/operator/accounts', '{"name": "Mine"}', :'s', 403, 'FORBIDDEN', 'an owner creates an account');
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/operator-accounts/' || :'other', '{"status": "suspended"}', :'s', 403, 'FORBIDDEN',
                             'an owner suspends an account');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/operator-accounts/' || :'acc' || '/topup', '{"amount_mad": 1000}', :'s', 403, 'FORBIDDEN',
                             'an owner tops up their own account');
SELECT * FROM pg_temp.cfails('PUT', '/v1/console/operator-accounts/' || :'acc' || '/prices',
                             '{"prices": [{"channel": "sms", "mad": 0, "eur": 0}]}', :'s', 403, 'FORBIDDEN', 'an owner sets their prices');
SELECT is((pg_temp.call('GET', '/v1/console/operator/accounts', NULL, pg_temp.new_key(:'other'))).status, 403,
          'an API key of the operator''s account cannot either');

SELECT cmp_ok(jsonb_array_length((pg_temp.ccall('GET', '/v1/console/operator/accounts', NULL, :'op')).body->'data'), '>=', 2,
              'the operator lists accounts');
SELECT * INTO TEMP newacc FROM pg_temp.ccall('POST', '/v1/console/operator/accounts', '{"name": "Nouveau client", "balance_mad": 50}', :'op');
SELECT is((SELECT status || ' ' || (body->>'balance_mad') FROM newacc), '201 50', 'the operator creates an account with a balance');
SELECT (body->>'account_id') AS newacc FROM newacc \gset
SELECT * FROM pg_temp.cfails('PATCH', '/v1/console/operator-accounts/' || :'newacc', '{"status": "closed"}', :'op', 400, 'VALIDATION_ERROR',
                             'the operator closes an account from the console');
SELECT is((pg_temp.ccall('PATCH', '/v1/console/operator-accounts/' || :'newacc', '{"status": "suspended"}', :'op')).body->>'status',
          'suspended', 'the operator suspends an account');
SELECT is((pg_temp.ccall('POST', '/v1/console/operator-accounts/' || :'newacc' || '/topup', '{"amount_mad": 25, "reference": "virement 42"}', :'op')).body->'balance_mad',
          '75', 'the operator tops it up');
SELECT is((SELECT amount_mad || ' ' || reference FROM envoisms.ledger WHERE account_id = :'newacc' ORDER BY entry_id DESC LIMIT 1),
          '25.0000 virement 42', 'through the ledger');
SELECT ok((SELECT (envoisms.balance_check(:'newacc')).ok), 'and the books balance');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/operator-accounts/' || :'newacc' || '/topup', '{"amount_mad": -5}', :'op', 400, 'VALIDATION_ERROR',
                             'a negative top-up');
SELECT * FROM pg_temp.cfails('POST', '/v1/console/operator-accounts/acc_nope/topup', '{"amount_mad": 5}', :'op', 404, 'NOT_FOUND',
                             'a top-up of no account');
SELECT is((pg_temp.ccall('PUT', '/v1/console/operator-accounts/' || :'newacc' || '/prices',
                         '{"prices": [{"channel": "sms", "mad": 0.25, "eur": 0.023}]}', :'op')).body->'data'->0,
          '{"channel": "sms", "mad": 0.25, "eur": 0.023, "default": false}', 'the operator sets an account''s SMS price');
SELECT is(envoisms.unit_price(:'newacc', 'sms', 'MAD'), 0.25::numeric, 'the send path uses it');
SELECT is((pg_temp.ccall('GET', '/v1/console/operator-accounts/' || :'newacc' || '/prices', NULL, :'op')).body->'data'->1->'default',
          'true', 'WhatsApp keeps the default price');
SELECT * FROM pg_temp.cfails('PUT', '/v1/console/operator-accounts/' || :'newacc' || '/prices',
                             '{"prices": [{"channel": "fax", "mad": 1, "eur": 1}]}', :'op', 400, 'VALIDATION_ERROR', 'a price for no channel');
SELECT is((pg_temp.ccall('GET', '/v1/console/operator/carriers', NULL, :'op')).body->'data'->0->>'carrier_id', 'sandbox',
          'the operator reads the carriers');
SELECT ok((pg_temp.ccall('GET', '/v1/console/operator/workers', NULL, :'op')).body->'queues' ? 'messages_queued',
          'the operator reads the queues'' depths');
SELECT is((pg_temp.ccall('GET', '/v1/console/operator/dead-letters', NULL, :'op')).status, 200, 'the operator reads the dead letters');

SELECT * FROM finish();
ROLLBACK;
