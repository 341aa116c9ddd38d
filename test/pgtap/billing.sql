-- billing.sql — GET /v1/billing/balance (balance_eur), /packs,
-- /payment-methods, POST and GET /v1/billing/topups, bank transfers
-- confirmed once by the operator, Stripe's signed events on the public
-- /v1/billing/stripe/webhook, the settings' checks, and permissions.
-- Stripe's own API is exercised against a real peer in
-- test/tap/070_billing_stripe.pl; here Stripe is unreachable on purpose.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(128);

SELECT envoisms.account_create('billing', 100, 'croissance') AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset
SELECT pg_temp.new_key(:'acc', '{balance}') AS balance_key \gset
SELECT pg_temp.new_key(:'acc', '{send}') AS send_key \gset
SELECT pg_temp.new_key(:'acc', live => false) AS sandbox_key \gset
SELECT pg_temp.new_account(50) AS other \gset
SELECT pg_temp.new_key(:'other') AS other_key \gset

-- a Stripe-Signature for body at now() + offset seconds, under secret
CREATE FUNCTION pg_temp.stripe_sig(body text, secret text DEFAULT 'whsec_pgtapSigningSecret', offset_s int DEFAULT 0)
RETURNS text LANGUAGE sql AS $$
    SELECT format('t=%s,v1=%s', t, envoisms.hmac_sha256_hex(secret, t || '.' || body))
      FROM (SELECT (extract(epoch FROM now())::bigint + offset_s)::text AS t) x
$$;
-- a call of the public webhook route: no API key, the given signature header
CREATE FUNCTION pg_temp.webhook(body text, signature text) RETURNS envoisms.api_reply LANGUAGE sql AS $$
    SELECT * FROM envoisms.api('POST', '/v1/billing/stripe/webhook', '',
                               jsonb_strip_nulls(jsonb_build_object('Content-Type', 'application/json',
                                                                    'Stripe-Signature', signature)), body)
$$;
-- a checkout.session event for a session, pretty-printed as Stripe sends it
CREATE FUNCTION pg_temp.event(session text, kind text DEFAULT 'checkout.session.completed',
                              payment_status text DEFAULT 'paid', amount_total bigint DEFAULT 12000)
RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_pretty(jsonb_build_object('id', 'evt_' || md5(session || kind), 'object', 'event', 'type', kind,
        'data', jsonb_build_object('object', jsonb_build_object(
            'id', session, 'object', 'checkout.session', 'amount_total', amount_total, 'currency', 'mad',
            'payment_status', payment_status, 'customer_details', jsonb_build_object('name', 'Saïd — client')))))
$$;

-- ---- balance
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/balance')),
          '{"balance_mad": 100, "balance_eur": 9.0323, "currency": "MAD", "plan": "croissance"}'::jsonb,
          'GET /v1/billing/balance: the contract''s fields and balance_eur (100 × 0.028 / 0.31, 4 decimals)');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/billing/balance', key => :'balance_key')), 200, 'a key with balance reads it');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/billing/balance', key => :'sandbox_key')), 200, 'a sandbox key reads it');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/balance', NULL, 403, 'FORBIDDEN', 'balance with a send-only key', :'send_key');
INSERT INTO envoisms.billing_settings (name, value) VALUES ('eur_per_mad', '0.1');
SELECT is((SELECT body->'balance_eur' FROM pg_temp.call('GET', '/v1/billing/balance')), '10'::jsonb, 'the operator''s rate applies at once');
DELETE FROM envoisms.billing_settings WHERE name = 'eur_per_mad';
SELECT is(envoisms.mad_to_eur(3.1), 0.2800, 'mad_to_eur: 3.1 MAD = 0.28 EUR, numeric');
SELECT is(envoisms.eur_to_mad(0.028), 0.31, 'eur_to_mad: 0.028 EUR = 0.31 MAD');

-- ---- packs
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/packs')), '{"packs": []}'::jsonb, 'no pack at install');
INSERT INTO envoisms.billing_packs (pack_id, name, sms_count, price_mad, price_eur, credit_mad, sort_order) VALUES
    ('pro-5000', '5 000 SMS', 5000, 1400, 125, NULL, 2),
    ('starter-1000', '1 000 SMS', 1000, 290, NULL, NULL, 1),
    ('promo', 'Promo', 100, 25, NULL, 40, 3);
INSERT INTO envoisms.billing_packs (pack_id, name, sms_count, price_mad, active) VALUES ('old', 'Old', 10, 3, false);
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/packs')),
          '{"packs": [{"id": "starter-1000", "name": "1 000 SMS", "sms_count": 1000, "price_mad": 290, "price_eur": 26.19, "credit_mad": 310},
                      {"id": "pro-5000", "name": "5 000 SMS", "sms_count": 5000, "price_mad": 1400, "price_eur": 125, "credit_mad": 1550},
                      {"id": "promo", "name": "Promo", "sms_count": 100, "price_mad": 25, "price_eur": 2.26, "credit_mad": 40}]}'::jsonb,
          'GET /v1/billing/packs: active packs in order; price_eur given or at the rate; credit_mad given or sms_count SMS at the account''s price');
INSERT INTO envoisms.prices (account_id, channel, currency, unit_price) VALUES (:'acc', 'sms', 'MAD', 0.25);
SELECT is((SELECT body #> '{packs,0,credit_mad}' FROM pg_temp.call('GET', '/v1/billing/packs')), '250'::jsonb,
          'an account with its own SMS price gets sms_count SMS at that price');
DELETE FROM envoisms.prices WHERE account_id = :'acc';
SELECT * FROM pg_temp.fails('GET', '/v1/billing/packs', NULL, 403, 'FORBIDDEN', 'packs with a balance-only key', :'balance_key');

-- ---- payment methods: only what is configured
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/payment-methods')), '{"payment_methods": []}'::jsonb,
          'nothing configured: no payment method');
INSERT INTO envoisms.billing_settings (name, value) VALUES ('stripe_secret_key', 'sk_test_pgtapSecretKey0001');
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/payment-methods')), '{"payment_methods": []}'::jsonb,
          'a Stripe key without its webhook secret and success URL: Stripe not offered');
INSERT INTO envoisms.billing_settings (name, value) VALUES
    ('stripe_webhook_secret', 'whsec_pgtapSigningSecret'),
    ('stripe_success_url', 'https://app.example.ma/billing/done'),
    ('stripe_api_base', 'http://127.0.0.1:1'),
    ('bank_transfer_details', '{"beneficiary": "Envoi SARL", "bank": "Banque Populaire", "rib": "190 780 2111122223333444 55"}');
SELECT is((SELECT body FROM pg_temp.call('GET', '/v1/billing/payment-methods')),
          '{"payment_methods": [
              {"id": "stripe", "name": "Card payment (Stripe Checkout)", "flow": "redirect", "currency": "MAD", "min_amount_mad": 10, "max_amount_mad": 100000},
              {"id": "bank_transfer", "name": "Bank transfer", "flow": "offline", "currency": "MAD", "min_amount_mad": 10, "max_amount_mad": 100000}]}'::jsonb,
          'GET /v1/billing/payment-methods: Stripe and bank transfer once configured');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/payment-methods', NULL, 403, 'FORBIDDEN', 'payment methods with a send-only key', :'send_key');

-- ---- settings: checked, never echoed
SELECT throws_ok($$INSERT INTO envoisms.billing_settings (name, value) VALUES ('stripe_currency', 'usd')$$, '23514',
                 'invalid value for billing setting "stripe_currency"', 'a setting''s value is checked');
SELECT throws_ok($$UPDATE envoisms.billing_settings SET value = 'sk_live_has space' WHERE name = 'stripe_secret_key'$$, '23514',
                 'invalid value for billing setting "stripe_secret_key"', '... and the error does not show the value');
SELECT throws_ok($$INSERT INTO envoisms.billing_settings (name, value) VALUES ('stripe_key', 'x')$$, '23514',
                 'unknown billing setting "stripe_key"', 'an unknown setting is refused');
SELECT throws_ok($$INSERT INTO envoisms.billing_settings (name, value) VALUES ('bank_transfer_details', '{"rib": 1}')$$, '23514',
                 NULL, 'bank details must be an object of strings');
SELECT is((SELECT value FROM envoisms.billing_config() WHERE name = 'stripe_secret_key'), 'sk_test_…0001',
          'billing_config() masks secrets');
SELECT is((SELECT value || ' ' || is_default FROM envoisms.billing_config() WHERE name = 'eur_per_mad'), '0.028/0.31 true',
          'billing_config(): defaults as they apply');
SELECT ok(NOT has_table_privilege('public', 'envoisms.billing_settings', 'SELECT'), 'PUBLIC cannot read the settings');

-- ---- POST /v1/billing/topups: refusals change nothing
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100, "payment_method": "bank_transfer"}',
                            403, 'FORBIDDEN', 'a sandbox key', :'sandbox_key');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100, "payment_method": "bank_transfer"}',
                            403, 'FORBIDDEN', 'a key without billing', :'balance_key');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100, "payment_method": "crypto"}',
                            400, 'VALIDATION_ERROR', 'crypto, not configured');
SELECT is((SELECT body #>> '{error,field}' FROM pg_temp.call('POST', '/v1/billing/topups', '{"amount_mad": 100, "payment_method": "crypto"}')),
          'payment_method', '... names payment_method');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100, "payment_method": 7}',
                            400, 'VALIDATION_ERROR', 'payment_method not a string');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'no amount nor pack');
SELECT is((SELECT body->'error' FROM pg_temp.call('POST', '/v1/billing/topups', '{"amount_mad": 100, "amount_eur": 9, "payment_method": "bank_transfer"}')),
          '{"code": "VALIDATION_ERROR", "field": "amount_eur", "message": "give exactly one of amount_mad, amount_eur and pack_id", "docs": "https://envoisms.ma/docs#errors"}'::jsonb,
          'amount_mad and amount_eur → 400 naming amount_eur');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100, "pack_id": "promo", "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'an amount and a pack');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": "100", "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'amount_mad as a string');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 0, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'amount_mad 0');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": -20, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'a negative amount');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100.005, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'three decimals');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 9.99, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'below topup_min_mad');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100000.01, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'above topup_max_mad');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_eur": 0.5, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'amount_eur worth less than 10 MAD');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 1e30, "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'a huge number');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"pack_id": "nope", "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'an unknown pack');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"pack_id": "old", "payment_method": "bank_transfer"}',
                            400, 'VALIDATION_ERROR', 'an inactive pack');
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100',
                            400, 'INVALID_JSON', 'a body that is no JSON');
-- Stripe configured but unreachable (nothing listens on 127.0.0.1:1): a named 503, nothing stored
SELECT * FROM pg_temp.fails('POST', '/v1/billing/topups', '{"amount_mad": 100}',
                            503, 'SERVICE_UNAVAILABLE', 'Stripe unreachable');

-- ---- bank transfer: a pending top-up with its instructions
CREATE TEMP TABLE b1 AS SELECT * FROM pg_temp.call('POST', '/v1/billing/topups', '{"amount_mad": 120, "payment_method": "bank_transfer"}');
SELECT is((SELECT status FROM b1), 201, 'POST /v1/billing/topups (bank_transfer) → 201');
SELECT (SELECT body->>'id' FROM b1) AS b1, (SELECT body->>'reference' FROM b1) AS b1ref \gset
SELECT matches(:'b1'::text, '^top_[0-9a-f]{28}$', 'a top-up id');
SELECT matches(:'b1ref'::text, '^EV-[0-9A-F]{12}$', 'a transfer reference people can type');
SELECT is((SELECT body - 'id' - 'reference' - 'created_at' FROM b1),
          jsonb_build_object('status', 'pending', 'payment_method', 'bank_transfer', 'amount_mad', 120, 'amount', 120,
                             'currency', 'MAD', 'pack_id', NULL, 'completed_at', NULL,
                             'bank_transfer', jsonb_build_object(
                                 'beneficiary', 'Envoi SARL', 'bank', 'Banque Populaire', 'rib', '190 780 2111122223333444 55',
                                 'reference', :'b1ref', 'amount', 120, 'currency', 'MAD',
                                 'instructions', format('Transfer 120 MAD and write the reference %s on the transfer; the balance is credited once the transfer is received.', :'b1ref'))),
          'the top-up: pending, the amount, the bank details and the reference to write on the transfer');
SELECT is(envoisms.account_balance(:'acc'), 100.0000, 'nothing credited before the transfer is confirmed');
SELECT is((SELECT body->>'amount' || ' ' || (body->>'amount_mad') || ' ' || (body->>'pack_id')
             FROM pg_temp.call('POST', '/v1/billing/topups', '{"pack_id": "starter-1000", "payment_method": "bank_transfer"}')),
          '290 310 starter-1000', 'a pack: pay its price, get its credit');
SELECT is((SELECT body->>'amount' || ' ' || (body->>'currency') || ' ' || (body->>'amount_mad')
             FROM pg_temp.call('POST', '/v1/billing/topups', '{"amount_eur": 9.8, "payment_method": "bank_transfer"}')),
          '108.5 MAD 108.5', 'amount_eur by bank transfer: 9.80 EUR are 108.50 MAD, paid in MAD');

-- ---- following top-ups
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/billing/topups')), '3'::jsonb, 'GET /v1/billing/topups: total');
SELECT is((SELECT body #>> '{topups,2,id}' FROM pg_temp.call('GET', '/v1/billing/topups')), :'b1', '... newest first');
SELECT is((SELECT jsonb_array_length(body->'topups') FROM pg_temp.call('GET', '/v1/billing/topups', query => 'limit=2')), 2, '... limit');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/billing/topups', query => 'status=completed')), '0'::jsonb, '... status filter');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups', NULL, 400, 'VALIDATION_ERROR', 'status=paid', query => 'status=paid');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups', NULL, 400, 'VALIDATION_ERROR', 'limit=0', query => 'limit=0');
SELECT is((SELECT body->>'status' FROM pg_temp.call('GET', '/v1/billing/topups/' || :'b1')), 'pending', 'GET /v1/billing/topups/:id');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups/' || :'b1', NULL, 404, 'NOT_FOUND', 'another account''s top-up', :'other_key');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups/top_0000', NULL, 404, 'NOT_FOUND', 'an unknown top-up');
SELECT * FROM pg_temp.fails('DELETE', '/v1/billing/topups/' || :'b1', NULL, 405, 'METHOD_NOT_ALLOWED', 'DELETE a top-up');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups/' || :'b1' || '/x', NULL, 404, 'NOT_FOUND', 'a path below a top-up');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/topups', NULL, 403, 'FORBIDDEN', 'top-ups with a send-only key', :'send_key');

-- ---- the operator confirms a transfer: credited once
SELECT is(envoisms.topup_confirm(:'b1'), true, 'topup_confirm → true: credited');
SELECT is(envoisms.topup_confirm(:'b1'), false, 'topup_confirm again → false');
SELECT is(envoisms.account_balance(:'acc'), 220.0000, 'the balance grew by 120 MAD once');
SELECT is((SELECT count(*) || ' ' || min(kind) || ' ' || min(reference) || ' ' || min(amount_mad)
             FROM envoisms.ledger WHERE topup_id = :'b1'),
          '1 topup ' || :'b1ref' || ' 120.0000', 'one ledger topup row, referenced by the transfer reference');
SELECT is((SELECT body->>'status' FROM pg_temp.call('GET', '/v1/billing/topups/' || :'b1')), 'completed', 'the top-up shows completed');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check()), 'balance_check true after the credit');
SELECT throws_ok(format($$INSERT INTO envoisms.ledger (account_id, kind, amount_mad, topup_id) VALUES (%L, 'topup', 1, %L)$$, :'acc', :'b1'),
                 '23505', NULL, 'the ledger refuses a second credit of one top-up');
SELECT * FROM pg_temp.fails_sql($$SELECT envoisms.topup_confirm('top_00000000000000000000000000ff')$$, 'NOT_FOUND', 'confirming an unknown top-up');
SELECT body->>'id' AS b2 FROM pg_temp.call('POST', '/v1/billing/topups', '{"amount_mad": 15, "payment_method": "bank_transfer"}') \gset
SELECT is(envoisms.topup_fail(:'b2', 'no transfer came'), true, 'topup_fail: the operator cancels a pending transfer');
SELECT is(envoisms.topup_fail(:'b1'), false, 'a completed top-up cannot fail');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.topup_confirm(%L)', :'b2'), 'CONFLICT', 'confirming a cancelled top-up');
SELECT is((SELECT body->>'failure_reason' FROM pg_temp.call('GET', '/v1/billing/topups/' || :'b2')), 'no transfer came', 'GET shows why it failed');

-- ---- Stripe's events on the public route
-- a session as topup_create stores it (the session itself is created against the peer in the TAP test)
INSERT INTO envoisms.topups (account_id, topup_id, method, amount_mad, amount, currency, reference, checkout_url)
VALUES (:'acc', 'top_0000000000000000000000000001', 'stripe', 120, 120, 'MAD', 'cs_test_pgtap1', 'https://checkout.stripe.com/c/pay/cs_test_pgtap1'),
       (:'acc', 'top_0000000000000000000000000002', 'stripe', 120, 120, 'MAD', 'cs_test_pgtap2', 'https://checkout.stripe.com/c/pay/cs_test_pgtap2');
SELECT pg_temp.event('cs_test_pgtap1') AS ev \gset
SELECT pg_temp.state() AS before \gset
SELECT is((SELECT status || ' ' || (body #>> '{error,code}') || ' ' || (body #>> '{error,field}')
             FROM pg_temp.webhook(:'ev', pg_temp.stripe_sig(:'ev', 'whsec_wrongSecret'))),
          '400 VALIDATION_ERROR Stripe-Signature', 'a signature under another secret → 400 naming Stripe-Signature');
SELECT is((SELECT status FROM pg_temp.webhook(:'ev', pg_temp.stripe_sig(:'ev', offset_s => -301))), 400, 'signed 301 s ago → 400');
SELECT is((SELECT status FROM pg_temp.webhook(:'ev', pg_temp.stripe_sig(:'ev', offset_s => 301))), 400, 'signed 301 s ahead → 400');
SELECT is((SELECT status FROM pg_temp.webhook(:'ev', NULL)), 400, 'no Stripe-Signature → 400');
SELECT is((SELECT status FROM pg_temp.webhook(:'ev', 'garbage')), 400, 'a malformed header → 400');
SELECT is((SELECT status FROM pg_temp.webhook(:'ev' || ' ', pg_temp.stripe_sig(:'ev'))), 400,
          'the body changed by one trailing space after signing → 400 (the raw body is what is verified)');
SELECT is((SELECT status FROM pg_temp.webhook(replace(:'ev', '  ', ' '), pg_temp.stripe_sig(:'ev'))), 400,
          'the same JSON re-indented → 400');
SELECT is(pg_temp.state(), :'before', '... none of them changed anything');
SELECT is((SELECT status || ' ' || (body->>'result')
             FROM pg_temp.webhook(:'ev', 't=' || extract(epoch FROM now())::bigint || ',v1=' || repeat('0', 64)
                                         || ',' || split_part(pg_temp.stripe_sig(:'ev'), ',', 2) || ',v0=' || repeat('1', 64))),
          '200 credited', 'several v1 (one right) and a v0: credited');
SELECT is(envoisms.account_balance(:'acc'), 340.0000, '... 120 MAD');
SELECT is((SELECT status || ' ' || (body->>'result') FROM pg_temp.webhook(:'ev', pg_temp.stripe_sig(:'ev', offset_s => -299))),
          '200 duplicate', 'the same event again (within the tolerance) → duplicate');
SELECT is(envoisms.account_balance(:'acc'), 340.0000, '... nothing more credited');
SELECT is((SELECT count(*) || ' ' || min(reference) FROM envoisms.ledger WHERE topup_id = 'top_0000000000000000000000000001'),
          '1 cs_test_pgtap1', 'one ledger row, referenced by the session id');
SELECT pg_temp.state() AS before \gset
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_unknown'), pg_temp.stripe_sig(pg_temp.event('cs_test_unknown')))),
          'ignored', 'an unknown session → 200 ignored');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_pgtap2', 'charge.succeeded'),
                                                       pg_temp.stripe_sig(pg_temp.event('cs_test_pgtap2', 'charge.succeeded')))),
          'ignored', 'another event type → 200 ignored');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_pgtap2', payment_status => 'unpaid'),
                                                       pg_temp.stripe_sig(pg_temp.event('cs_test_pgtap2', payment_status => 'unpaid')))),
          'awaiting_payment', 'completed but unpaid → not credited yet');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_pgtap2', amount_total => 100),
                                                       pg_temp.stripe_sig(pg_temp.event('cs_test_pgtap2', amount_total => 100)))),
          'amount_mismatch', 'paid another amount → not credited');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook('{"type": "checkout.session.completed", "data": null}',
                                                       pg_temp.stripe_sig('{"type": "checkout.session.completed", "data": null}'))),
          'ignored', 'an event without a session → ignored');
SELECT is(pg_temp.state(), :'before', '... none of them changed anything');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_pgtap2', 'checkout.session.expired'),
                                                       pg_temp.stripe_sig(pg_temp.event('cs_test_pgtap2', 'checkout.session.expired')))),
          'failed', 'expired → the top-up failed');
SELECT is((SELECT body->>'result' FROM pg_temp.webhook(pg_temp.event('cs_test_pgtap2'), pg_temp.stripe_sig(pg_temp.event('cs_test_pgtap2')))),
          'credited', 'a paid event after it (Stripe does not promise the order): the money moved, so it is credited');
SELECT is(envoisms.account_balance(:'acc'), 460.0000, '... once');
SELECT ok((SELECT bool_and(ok) FROM envoisms.balance_check()), 'balance_check true after the Stripe credits');
SELECT * FROM pg_temp.fails('GET', '/v1/billing/stripe/webhook', NULL, 405, 'METHOD_NOT_ALLOWED', 'GET on the webhook route');

SELECT * FROM finish();
ROLLBACK;
