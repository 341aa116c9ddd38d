-- 82_billing.sql — billing: the balance in MAD and EUR, top-up packs, the
-- payment methods of this install, top-ups paid through Stripe Checkout or
-- by bank transfer, and Stripe's webhook (routes /v1/billing/*).
--
-- Settings are rows of envoisms.billing_settings (name, value), readable by
-- the extension owner only: Stripe's secret key and webhook signing secret,
-- its API base, currency, URLs and timeout, the bank transfer details, the
-- EUR rate and the top-up limits. The table is empty at install (every
-- setting has its default, billing_setting_defaults()), so pg_dump keeps
-- exactly what the operator set. A value is checked by a trigger whose error
-- names the setting, never the value (a CHECK's error would print the row,
-- secret included).
--
-- Money: a top-up fixes at creation what it credits (amount_mad) and what
-- is paid for it (amount, currency). It credits the balance exactly once,
-- when topup_complete moves it to 'completed' under its row lock and writes
-- the ledger's 'topup' row carrying its id, which a unique index allows once
-- (ledger_one_credit_per_topup): a replayed, late or concurrent confirmation
-- finds it completed and changes nothing. The ledger row's reference is the
-- payment's: the Checkout Session id, or the bank transfer reference.
--
-- Stripe: topup_create asks Stripe for the Checkout Session in the request
-- (stripe_post, stripe.c: libcurl, bounded by stripe_timeout_ms, abandoned
-- on cancel) before it writes anything, so no lock of its own is held across
-- the call; the client needs the session's URL in the answer, which a
-- worker could only produce after the request committed. A session exists
-- at Stripe only for a top-up row that committed with the answer that
-- carries its URL (a failed request answers no URL: the orphan session
-- expires unpaid). Stripe's events arrive on the public route
-- POST /v1/billing/stripe/webhook, verified by Stripe-Signature (HMAC-SHA256
-- of "<t>.<raw body>" under the signing secret, 300 s tolerance).

-- ---- settings

-- Every setting with its default (NULL: unset), whether it is a secret, and what it does.
CREATE FUNCTION envoisms.billing_setting_defaults()
RETURNS TABLE (name text, value text, secret boolean, description text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('eur_per_mad', '0.028/0.31', false,
            'EUR per MAD, a number or a fraction eur/mad (default: the contract''s SMS prices, 0.028 EUR = 0.31 MAD)'),
           ('topup_min_mad', '10', false, 'Smallest top-up by amount, in MAD (packs are exempt)'),
           ('topup_max_mad', '100000', false, 'Largest top-up by amount, in MAD (packs are exempt)'),
           ('stripe_secret_key', NULL, true,
            'Stripe secret or restricted key (sk_... or rk_...); Stripe is offered when it, stripe_webhook_secret and stripe_success_url are set'),
           ('stripe_webhook_secret', NULL, true,
            'Signing secret (whsec_...) of the Stripe webhook endpoint that posts to /v1/billing/stripe/webhook'),
           ('stripe_success_url', NULL, false,
            'Where Checkout sends the customer after paying; Stripe replaces {CHECKOUT_SESSION_ID}, envoisms {TOPUP_ID}'),
           ('stripe_cancel_url', NULL, false, 'Where Checkout''s back link goes ({TOPUP_ID} replaced); none when unset'),
           ('stripe_api_base', 'https://api.stripe.com', false, 'Base URL of Stripe''s API'),
           ('stripe_currency', 'mad', false, 'Currency of the Checkout Sessions: mad or eur'),
           ('stripe_timeout_ms', '8000', false,
            'Longest a top-up request waits for Stripe to create its Checkout Session (500 to 15000 ms: the clients and the gateway wait 15 s)'),
           ('bank_transfer_details', NULL, false,
            'JSON object of strings shown with bank transfer instructions (beneficiary, bank, rib, swift ...); bank transfers are offered when it is set')
$$;

-- Whether value is a valid value of the setting name (false for unknown names).
CREATE FUNCTION envoisms.billing_setting_valid(name text, value text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    j jsonb;
BEGIN
    IF value IS NULL THEN
        RETURN false;
    END IF;
    CASE name
    WHEN 'eur_per_mad' THEN
        RETURN value ~ '^[0-9]{1,9}(\.[0-9]{1,12})?(/[0-9]{1,9}(\.[0-9]{1,12})?)?$'
           AND split_part(value, '/', 1)::numeric > 0
           AND coalesce(nullif(split_part(value, '/', 2), '')::numeric, 1) > 0;
    WHEN 'topup_min_mad', 'topup_max_mad' THEN
        RETURN value ~ '^[0-9]{1,9}(\.[0-9]{1,2})?$' AND value::numeric > 0;
    WHEN 'stripe_secret_key' THEN
        RETURN value ~ '^(sk|rk)_[A-Za-z0-9_]{8,240}$';
    WHEN 'stripe_webhook_secret' THEN
        RETURN value ~ '^[!-~]{8,255}$';
    WHEN 'stripe_success_url', 'stripe_cancel_url', 'stripe_api_base' THEN
        RETURN value ~ '^https?://[^\s/?#]+[^\s]*$' AND length(value) <= 2000;
    WHEN 'stripe_currency' THEN
        RETURN value IN ('mad', 'eur');
    WHEN 'stripe_timeout_ms' THEN
        RETURN value ~ '^[0-9]{3,5}$' AND value::int BETWEEN 500 AND 15000;
    WHEN 'bank_transfer_details' THEN
        j := (envoisms.body_jsonb(value)).value;
        RETURN jsonb_typeof(j) = 'object' AND j <> '{}'
           AND NOT EXISTS (SELECT 1 FROM jsonb_each(j) e
                            WHERE jsonb_typeof(e.value) <> 'string' OR length(e.key) NOT BETWEEN 1 AND 40
                               OR length(e.value #>> '{}') > 200);
    ELSE
        RETURN false;
    END CASE;
END
$$;

CREATE TABLE envoisms.billing_settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_settings', '');
REVOKE ALL ON envoisms.billing_settings FROM PUBLIC;

-- The check of a setting: its error names the setting and the expected
-- form, never the value (it may be a secret).
CREATE FUNCTION envoisms.billing_settings_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    about text;
BEGIN
    SELECT d.description INTO about FROM envoisms.billing_setting_defaults() d WHERE d.name = NEW.name;
    IF about IS NULL THEN
        RAISE EXCEPTION 'unknown billing setting "%"', left(NEW.name, 64)
            USING ERRCODE = 'check_violation',
                  HINT = 'SELECT name, description FROM envoisms.billing_config() lists them.';
    END IF;
    IF NOT envoisms.billing_setting_valid(NEW.name, NEW.value) THEN
        RAISE EXCEPTION 'invalid value for billing setting "%"', NEW.name
            USING ERRCODE = 'check_violation', HINT = about || '.';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER billing_settings_check BEFORE INSERT OR UPDATE ON envoisms.billing_settings
    FOR EACH ROW EXECUTE FUNCTION envoisms.billing_settings_check();

-- A setting's value: the operator's, else the default (NULL: unset).
CREATE FUNCTION envoisms.billing_setting(name text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.value FROM envoisms.billing_settings s WHERE s.name = billing_setting.name),
                    (SELECT d.value FROM envoisms.billing_setting_defaults() d WHERE d.name = billing_setting.name));
END
$$;

-- Every setting as it applies now, secrets masked ("sk_live_…4242"): what
-- an operator checks after a change.
CREATE FUNCTION envoisms.billing_config()
RETURNS TABLE (name text, value text, is_default boolean, description text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT d.name,
           CASE WHEN d.secret AND s.value IS NOT NULL
                THEN coalesce(substring(s.value FROM '^[a-z]+_(?:test_|live_)?'), '') || '…' || right(s.value, 4)
                ELSE coalesce(s.value, d.value) END,
           s.value IS NULL, d.description
      FROM envoisms.billing_setting_defaults() d LEFT JOIN envoisms.billing_settings s ON s.name = d.name
     ORDER BY d.name;
END
$$;
COMMENT ON FUNCTION envoisms.billing_config() IS
'Every billing setting as it applies now, secrets masked';

-- An amount in MAD in EUR at eur_per_mad, rounded to `scale` decimals (and back).
CREATE FUNCTION envoisms.mad_to_eur(amount numeric, scale int DEFAULT 4) RETURNS numeric
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rate text := envoisms.billing_setting('eur_per_mad');
BEGIN
    RETURN round(amount * split_part(rate, '/', 1)::numeric / coalesce(nullif(split_part(rate, '/', 2), '')::numeric, 1), scale);
END
$$;

CREATE FUNCTION envoisms.eur_to_mad(amount numeric, scale int DEFAULT 2) RETURNS numeric
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rate text := envoisms.billing_setting('eur_per_mad');
BEGIN
    RETURN round(amount * coalesce(nullif(split_part(rate, '/', 2), '')::numeric, 1) / split_part(rate, '/', 1)::numeric, scale);
END
$$;

-- ---- packs

-- Operator-defined packs (none at install): sms_count SMS for price_mad
-- (price_eur, or price_mad at eur_per_mad); buying one credits credit_mad,
-- or sms_count single-segment SMS at the buying account's SMS price.
CREATE TABLE envoisms.billing_packs (
    pack_id    text PRIMARY KEY CHECK (pack_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    sms_count  int NOT NULL CHECK (sms_count > 0),
    price_mad  numeric(12,2) NOT NULL CHECK (price_mad > 0),
    price_eur  numeric(12,2) CHECK (price_eur > 0),
    credit_mad numeric(12,2) CHECK (credit_mad > 0),
    active     boolean NOT NULL DEFAULT true,
    sort_order int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_packs', '');

-- What buying pack p credits to an account.
CREATE FUNCTION envoisms.pack_credit(p envoisms.billing_packs, account_id text) RETURNS numeric
LANGUAGE sql STABLE
RETURN coalesce(p.credit_mad, round(p.sms_count * envoisms.unit_price(account_id, 'sms', 'MAD'), 4));

CREATE FUNCTION envoisms.pack_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('packs', coalesce(jsonb_agg(jsonb_build_object(
                   'id', p.pack_id, 'name', p.name, 'sms_count', p.sms_count,
                   'price_mad', envoisms.money(p.price_mad),
                   'price_eur', envoisms.money(coalesce(p.price_eur, envoisms.mad_to_eur(p.price_mad, 2))),
                   'credit_mad', envoisms.money(envoisms.pack_credit(p, pack_list.account_id)))
                 ORDER BY p.sort_order, p.price_mad, p.pack_id), '[]'))
          FROM envoisms.billing_packs p WHERE p.active);
END
$$;
COMMENT ON FUNCTION envoisms.pack_list(text) IS
'The operator''s top-up packs as an account sees them (GET /v1/billing/packs)';

-- ---- payment methods

-- The payment methods this install offers: Stripe when its secret key,
-- webhook secret and success URL are set; bank transfer when its details are.
CREATE FUNCTION envoisms.payment_methods() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT coalesce(jsonb_agg(m.method ORDER BY m.ord), '[]')
      FROM (SELECT 1 AS ord, jsonb_build_object(
                       'id', 'stripe', 'name', 'Card payment (Stripe Checkout)', 'flow', 'redirect',
                       'currency', upper(envoisms.billing_setting('stripe_currency')),
                       'min_amount_mad', envoisms.money(envoisms.billing_setting('topup_min_mad')::numeric),
                       'max_amount_mad', envoisms.money(envoisms.billing_setting('topup_max_mad')::numeric)) AS method
             WHERE envoisms.billing_setting('stripe_secret_key') IS NOT NULL
               AND envoisms.billing_setting('stripe_webhook_secret') IS NOT NULL
               AND envoisms.billing_setting('stripe_success_url') IS NOT NULL
            UNION ALL
            SELECT 2, jsonb_build_object(
                       'id', 'bank_transfer', 'name', 'Bank transfer', 'flow', 'offline', 'currency', 'MAD',
                       'min_amount_mad', envoisms.money(envoisms.billing_setting('topup_min_mad')::numeric),
                       'max_amount_mad', envoisms.money(envoisms.billing_setting('topup_max_mad')::numeric))
             WHERE envoisms.billing_setting('bank_transfer_details') IS NOT NULL) m
$$;
COMMENT ON FUNCTION envoisms.payment_methods() IS
'The payment methods this install offers (GET /v1/billing/payment-methods)';

-- ---- top-ups

CREATE TABLE envoisms.topups (
    account_id     text NOT NULL REFERENCES envoisms.accounts,
    topup_id       text NOT NULL CHECK (topup_id ~ '^top_[0-9a-f]{28}$'),
    api_key_id     text,
    method         text NOT NULL CHECK (method IN ('stripe', 'bank_transfer')),
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    amount_mad     numeric(16,4) NOT NULL CHECK (amount_mad > 0),      -- credited once completed
    amount         numeric(14,2) NOT NULL CHECK (amount > 0),          -- what is paid, in currency
    currency       text NOT NULL CHECK (currency IN ('MAD', 'EUR')),
    pack_id        text,
    -- what the payment carries: the Checkout Session id (cs_...) or the
    -- bank transfer reference (EV-...); the ledger row's reference
    reference      text NOT NULL UNIQUE CHECK (length(reference) BETWEEN 1 AND 200),
    checkout_url   text CHECK (length(checkout_url) <= 4096),
    failure_reason text CHECK (length(failure_reason) <= 500),
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    failed_at      timestamptz,
    PRIMARY KEY (account_id, topup_id),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL)),
    CHECK ((status = 'failed') = (failed_at IS NOT NULL)),
    CHECK (method <> 'stripe' OR checkout_url IS NOT NULL)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.topups', '');
-- The operator and Stripe's events name a top-up by its id alone.
CREATE UNIQUE INDEX topups_topup_id ON envoisms.topups (topup_id);

-- A top-up as the API shows it.
CREATE FUNCTION envoisms.topup_json(t envoisms.topups) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object(
           'id', t.topup_id, 'status', t.status, 'payment_method', t.method,
           'amount_mad', envoisms.money(t.amount_mad), 'amount', envoisms.money(t.amount), 'currency', t.currency,
           'pack_id', t.pack_id, 'reference', t.reference,
           'created_at', envoisms.iso_time(t.created_at), 'completed_at', envoisms.iso_time(t.completed_at))
       || CASE t.method
          WHEN 'stripe' THEN jsonb_build_object('checkout_url', t.checkout_url)
          ELSE jsonb_build_object('bank_transfer',
                   coalesce(envoisms.billing_setting('bank_transfer_details')::jsonb, '{}')
                   || jsonb_build_object('reference', t.reference, 'amount', envoisms.money(t.amount),
                                         'currency', t.currency,
                                         'instructions', format('Transfer %s %s and write the reference %s on the transfer; the balance is credited once the transfer is received.',
                                                                trim_scale(t.amount), t.currency, t.reference)))
          END
       || CASE WHEN t.failure_reason IS NOT NULL THEN jsonb_build_object('failure_reason', t.failure_reason)
               ELSE '{}' END;

-- POST the fields to Stripe form-encoded with the Bearer key and an
-- Idempotency-Key; (status, body) of the answer, or error (stripe.c).
CREATE FUNCTION envoisms.stripe_post(url text, secret_key text, idempotency_key text, fields jsonb, timeout_ms int,
                                     OUT status int, OUT body text, OUT error text)
AS 'MODULE_PATHNAME', 'stripe_post' LANGUAGE C STRICT VOLATILE;

-- A Stripe Checkout Session (mode payment, one line item of `amount` in
-- `currency`) for a top-up: its id and URL, or SERVICE_UNAVAILABLE (the
-- reason is logged: HTTP status and Stripe's error type and code, never the
-- key nor Stripe's message).
CREATE FUNCTION envoisms.stripe_checkout_create(account_id text, topup_id text, amount_mad numeric, amount numeric,
                                                currency text, product text, OUT id text, OUT url text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    r record;
    answer jsonb;
BEGIN
    r := envoisms.stripe_post(
        rtrim(envoisms.billing_setting('stripe_api_base'), '/') || '/v1/checkout/sessions',
        envoisms.billing_setting('stripe_secret_key'),
        'envoisms-topup-' || topup_id,
        jsonb_strip_nulls(jsonb_build_object(
            'mode', 'payment',
            'line_items[0][price_data][currency]', lower(currency),
            'line_items[0][price_data][unit_amount]', (amount * 100)::bigint::text,
            'line_items[0][price_data][product_data][name]', product,
            'line_items[0][quantity]', '1',
            'success_url', replace(envoisms.billing_setting('stripe_success_url'), '{TOPUP_ID}', topup_id),
            'cancel_url', replace(envoisms.billing_setting('stripe_cancel_url'), '{TOPUP_ID}', topup_id),
            'client_reference_id', topup_id,
            'metadata[account_id]', account_id,
            'metadata[topup_id]', topup_id,
            'metadata[amount_mad]', trim_scale(amount_mad)::text,
            'payment_intent_data[metadata][account_id]', account_id,
            'payment_intent_data[metadata][topup_id]', topup_id)),
        envoisms.billing_setting('stripe_timeout_ms')::int);
    IF r.status = 200 THEN
        answer := (envoisms.body_jsonb(r.body)).value;
    END IF;
    IF coalesce(answer->>'id', '') !~ '^cs_[A-Za-z0-9_]{1,190}$' OR coalesce(answer->>'url', '') !~ '^https?://' THEN
        answer := (envoisms.body_jsonb(coalesce(r.body, ''))).value;
        RAISE LOG 'envoisms: Stripe did not create the Checkout Session of top-up %: %', topup_id,
            CASE WHEN r.status IS NULL THEN left(r.error, 300)
                 ELSE format('HTTP %s%s', r.status,
                             coalesce(format(' (%s)', concat_ws(', ', left(answer #>> '{error,type}', 60),
                                                                left(answer #>> '{error,code}', 60))), ''))
            END;
        PERFORM envoisms.raise_error('SERVICE_UNAVAILABLE', 'the payment provider could not start the payment; retry later');
    END IF;
    id := answer->>'id';
    url := answer->>'url';
END
$$;

-- Create a top-up of one of amount_mad, amount_eur (at most 2 decimals) or
-- pack_id, paid by payment_method: 'stripe' (a Checkout Session: the answer
-- carries checkout_url) or 'bank_transfer' (the answer carries the
-- reference to write on the transfer; an operator confirms it with
-- topup_confirm). Nothing is credited before the payment is confirmed.
-- For 'stripe' the call to Stripe happens inside the caller's transaction:
-- an application calling this from SQL calls it before it takes locks.
CREATE FUNCTION envoisms.topup_create(account_id text, payment_method text DEFAULT 'stripe',
                                      amount_mad numeric DEFAULT NULL, amount_eur numeric DEFAULT NULL,
                                      pack_id text DEFAULT NULL, api_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    method text := coalesce(payment_method, 'stripe');
    offered text[] := ARRAY(SELECT m->>'id' FROM jsonb_array_elements(envoisms.payment_methods()) m);
    id text := envoisms.new_id('top');
    pk envoisms.billing_packs;
    field text;
    given numeric;
    credit numeric;
    pay numeric;
    pay_currency text;
    session record;
    t envoisms.topups;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = topup_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    IF NOT method = ANY (offered) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('payment_method "%s" is not available on this server; available: %s', left(method, 40),
                   coalesce(nullif(array_to_string(offered, ', '), ''), 'none')), 'payment_method');
    END IF;
    IF num_nonnulls(amount_mad, amount_eur, pack_id) <> 1 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give exactly one of amount_mad, amount_eur and pack_id',
            CASE WHEN amount_mad IS NULL AND amount_eur IS NULL AND pack_id IS NULL THEN 'amount_mad'
                 WHEN amount_mad IS NOT NULL AND amount_eur IS NOT NULL THEN 'amount_eur'
                 ELSE 'pack_id' END);
    END IF;
    pay_currency := CASE method WHEN 'stripe' THEN upper(envoisms.billing_setting('stripe_currency')) ELSE 'MAD' END;

    IF pack_id IS NOT NULL THEN
        SELECT * INTO pk FROM envoisms.billing_packs p WHERE p.pack_id = topup_create.pack_id AND p.active;
        IF NOT FOUND THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('unknown pack_id "%s"', left(pack_id, 64)), 'pack_id');
        END IF;
        credit := envoisms.pack_credit(pk, account_id);
        pay := CASE pay_currency WHEN 'MAD' THEN pk.price_mad
                                 ELSE coalesce(pk.price_eur, envoisms.mad_to_eur(pk.price_mad, 2)) END;
    ELSE
        field := CASE WHEN amount_mad IS NOT NULL THEN 'amount_mad' ELSE 'amount_eur' END;
        given := coalesce(amount_mad, amount_eur);
        IF given <= 0 OR given <> round(given, 2) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('%s must be a positive amount with at most 2 decimals', field), field);
        END IF;
        credit := CASE WHEN amount_mad IS NOT NULL THEN amount_mad ELSE envoisms.eur_to_mad(amount_eur, 2) END;
        IF credit NOT BETWEEN envoisms.billing_setting('topup_min_mad')::numeric
                          AND envoisms.billing_setting('topup_max_mad')::numeric THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('%s must be worth from %s to %s MAD (%s MAD given)', field,
                       envoisms.billing_setting('topup_min_mad'), envoisms.billing_setting('topup_max_mad'),
                       trim_scale(credit)), field);
        END IF;
        pay := CASE WHEN pay_currency = 'MAD' THEN credit
                    WHEN amount_eur IS NOT NULL THEN amount_eur
                    ELSE envoisms.mad_to_eur(amount_mad, 2) END;
        IF pay <= 0 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s is too small to be paid', field), field);
        END IF;
    END IF;

    IF method = 'stripe' THEN
        -- network I/O: nothing of this request's own is written or locked yet
        session := envoisms.stripe_checkout_create(account_id, id, credit, pay, pay_currency,
                                                   coalesce(pk.name, format('Top-up %s MAD', trim_scale(credit))));
        INSERT INTO envoisms.topups (account_id, topup_id, api_key_id, method, amount_mad, amount, currency,
                                     pack_id, reference, checkout_url)
        VALUES (account_id, id, api_key_id, method, credit, pay, pay_currency, pk.pack_id, session.id, session.url)
        RETURNING * INTO t;
    ELSE
        -- a short reference people can type; drawn again on the rare collision
        FOR attempt IN 1..5 LOOP
            INSERT INTO envoisms.topups (account_id, topup_id, api_key_id, method, amount_mad, amount, currency,
                                         pack_id, reference)
            VALUES (account_id, id, api_key_id, method, credit, pay, pay_currency, pk.pack_id,
                    'EV-' || upper(envoisms.random_bytes_hex(6)))
            ON CONFLICT (reference) DO NOTHING
            RETURNING * INTO t;
            EXIT WHEN t.topup_id IS NOT NULL;
        END LOOP;
        IF t.topup_id IS NULL THEN
            RAISE EXCEPTION 'could not draw a free bank transfer reference';
        END IF;
    END IF;
    RETURN envoisms.topup_json(t);
END
$$;
COMMENT ON FUNCTION envoisms.topup_create(text, text, numeric, numeric, text, text) IS
'Start a top-up paid through Stripe Checkout or bank transfer (POST /v1/billing/topups)';

-- Credit a top-up, once: pending (or, for a payment Stripe reports paid,
-- failed) becomes completed, the ledger gets its 'topup' row and the
-- account its invoice. True when
-- this call credited it, false when it was completed already (or is not in
-- a state that may be completed).
CREATE FUNCTION envoisms.topup_complete(topup_id text, from_failed boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t envoisms.topups;
BEGIN
    UPDATE envoisms.topups x
       SET status = 'completed', completed_at = now(), failed_at = NULL, failure_reason = NULL
     WHERE x.topup_id = topup_complete.topup_id
       AND (x.status = 'pending' OR (from_failed AND x.status = 'failed'))
    RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM envoisms.balance_rebalance(t.account_id, t.amount_mad);
    INSERT INTO envoisms.ledger (account_id, kind, amount_mad, reference, topup_id)
    VALUES (t.account_id, 'topup', t.amount_mad, t.reference, t.topup_id);
    -- its invoice, in the same transaction (93_console_users.sql)
    PERFORM envoisms.invoice_issue(t);
    RETURN true;
END
$$;

-- A pending top-up fails (no credit); true when this call failed it.
CREATE FUNCTION envoisms.topup_fail(topup_id text, reason text DEFAULT 'cancelled by the operator') RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.topups x
       SET status = 'failed', failed_at = now(), failure_reason = left(coalesce(reason, 'failed'), 500)
     WHERE x.topup_id = topup_fail.topup_id AND x.status = 'pending';
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION envoisms.topup_fail(text, text) IS
'Cancel a pending top-up with a reason';

-- The operator confirms a top-up whose payment arrived (a bank transfer,
-- or a Stripe payment checked in Stripe's dashboard): true when this call
-- credited it, false when it was credited already. Calling it twice, or
-- concurrently, credits once. A failed top-up is CONFLICT.
CREATE FUNCTION envoisms.topup_confirm(topup_id text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    st text;
BEGIN
    SELECT x.status INTO st FROM envoisms.topups x WHERE x.topup_id = topup_confirm.topup_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'top-up not found', 'topup_id');
    ELSIF st = 'failed' THEN
        PERFORM envoisms.raise_error('CONFLICT', 'the top-up failed or was cancelled; create a new one', 'topup_id');
    END IF;
    RETURN envoisms.topup_complete(topup_id);
END
$$;
COMMENT ON FUNCTION envoisms.topup_confirm(text) IS
'Confirm a pending top-up as paid (a bank transfer received): credits once; false when it was credited already';

CREATE FUNCTION envoisms.topup_get(account_id text, topup_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    t envoisms.topups;
BEGIN
    SELECT * INTO t FROM envoisms.topups x
     WHERE x.account_id = topup_get.account_id AND x.topup_id = topup_get.topup_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'top-up not found', 'id');
    END IF;
    RETURN envoisms.topup_json(t);
END
$$;
COMMENT ON FUNCTION envoisms.topup_get(text, text) IS
'One top-up of an account (GET /v1/billing/topups/:id)';

-- The account's top-ups, newest first.
CREATE FUNCTION envoisms.topup_list(account_id text, "limit" int DEFAULT 50, "offset" int DEFAULT 0,
                                    status text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 200);
    IF status IS NOT NULL AND status NOT IN ('pending', 'completed', 'failed') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'status must be one of pending, completed, failed', 'status');
    END IF;
    SELECT coalesce(jsonb_agg(envoisms.topup_json(ROW(t.*)::envoisms.topups) ORDER BY t.topup_id DESC), '[]') INTO rows
      FROM (SELECT * FROM envoisms.topups x
             WHERE x.account_id = topup_list.account_id AND (topup_list.status IS NULL OR x.status = topup_list.status)
             ORDER BY x.topup_id DESC LIMIT "limit" OFFSET "offset") t;
    SELECT count(*) INTO n FROM envoisms.topups x
     WHERE x.account_id = topup_list.account_id AND (topup_list.status IS NULL OR x.status = topup_list.status);
    RETURN jsonb_build_object('topups', rows, 'total', n, 'limit', "limit", 'offset', "offset");
END
$$;
COMMENT ON FUNCTION envoisms.topup_list(text, int, int, text) IS
'A page of an account''s top-ups (GET /v1/billing/topups)';

-- ---- Stripe's events

-- Whether a Stripe-Signature header ("t=<unix time>,v1=<hex>[,v1=...]")
-- signs payload with secret: one v1 equals HMAC-SHA256(secret, t "." payload)
-- (compared in constant time) and t is within `tolerance` seconds of now.
CREATE FUNCTION envoisms.stripe_signature_valid(payload text, header text, secret text, tolerance int DEFAULT 300)
RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    items text[];
    t text;
    expected text;
BEGIN
    IF payload IS NULL OR header IS NULL OR secret IS NULL THEN
        RETURN false;
    END IF;
    items := ARRAY(SELECT btrim(i) FROM unnest(string_to_array(left(header, 4096), ',')) i);
    SELECT substr(i, 3) INTO t FROM unnest(items) i WHERE i LIKE 't=%' LIMIT 1;
    IF t IS NULL OR t !~ '^[0-9]{1,12}$' OR abs(extract(epoch FROM now()) - t::bigint) > tolerance THEN
        RETURN false;
    END IF;
    expected := envoisms.hmac_sha256_hex(secret, t || '.' || payload);
    RETURN EXISTS (SELECT 1 FROM unnest(items) i WHERE i LIKE 'v1=%' AND envoisms.secure_equals(substr(i, 4), expected));
END
$$;

-- Apply a verified Stripe event; returns what it did: 'credited',
-- 'duplicate' (already applied), 'failed' (the top-up failed),
-- 'awaiting_payment' (completed but not paid yet: a delayed method),
-- 'amount_mismatch' (left pending and logged), or 'ignored' (another type,
-- or a session no top-up of this install has).
CREATE FUNCTION envoisms.stripe_event_apply(event jsonb) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    kind text := event->>'type';
    s jsonb := event #> '{data,object}';
    t envoisms.topups;
BEGIN
    IF coalesce(kind NOT IN ('checkout.session.completed', 'checkout.session.async_payment_succeeded',
                             'checkout.session.async_payment_failed', 'checkout.session.expired'), true)
       OR coalesce(jsonb_typeof(s), '') <> 'object' OR s->>'id' IS NULL THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO t FROM envoisms.topups x WHERE x.reference = s->>'id' AND x.method = 'stripe';
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    IF kind IN ('checkout.session.async_payment_failed', 'checkout.session.expired') THEN
        RETURN CASE WHEN envoisms.topup_fail(t.topup_id, CASE kind WHEN 'checkout.session.expired'
                                                                   THEN 'the checkout session expired unpaid'
                                                                   ELSE 'the payment failed' END)
                    THEN 'failed' ELSE 'duplicate' END;
    END IF;
    IF s->>'payment_status' IS DISTINCT FROM 'paid' THEN
        RETURN 'awaiting_payment';
    END IF;
    IF s->'amount_total' IS DISTINCT FROM to_jsonb((t.amount * 100)::bigint)
       OR upper(s->>'currency') IS DISTINCT FROM t.currency THEN
        RAISE LOG 'envoisms: Stripe session % of top-up % paid % % where % % was due; left pending',
            t.reference, t.topup_id, left(s->>'amount_total', 20), left(s->>'currency', 10), (t.amount * 100)::bigint, t.currency;
        RETURN 'amount_mismatch';
    END IF;
    RETURN CASE WHEN envoisms.topup_complete(t.topup_id, true) THEN 'credited' ELSE 'duplicate' END;
END
$$;

-- ---- HTTP handlers

-- GET /v1/billing/balance: the contract's fields, and balance_eur (at eur_per_mad, 4 decimals).
CREATE FUNCTION envoisms.api_billing_balance(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    balance numeric := envoisms.account_balance(req.account_id);
BEGIN
    RETURN envoisms.reply(200, (
        SELECT jsonb_build_object('balance_mad', envoisms.money(balance),
                                  'balance_eur', envoisms.money(envoisms.mad_to_eur(balance)),
                                  'currency', 'MAD', 'plan', a.plan)
          FROM envoisms.accounts a WHERE a.account_id = req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_billing_packs(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN envoisms.reply(200, envoisms.pack_list(req.account_id));

CREATE FUNCTION envoisms.api_billing_payment_methods(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN envoisms.reply(200, jsonb_build_object('payment_methods', envoisms.payment_methods()));

-- POST /v1/billing/topups. A sandbox key is refused: a top-up moves real
-- money, and nothing a sandbox key does may credit a live balance.
CREATE FUNCTION envoisms.api_billing_topups_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF req.sandbox THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            'a top-up moves real money: a sandbox (env_test_) key cannot create one; use a live key');
    END IF;
    RETURN envoisms.reply(201, envoisms.topup_create(
        req.account_id,
        envoisms.body_text(req.body, 'payment_method'),
        envoisms.body_amount(req.body, 'amount_mad'),
        envoisms.body_amount(req.body, 'amount_eur'),
        envoisms.body_text(req.body, 'pack_id'),
        req.api_key_id));
END
$$;

CREATE FUNCTION envoisms.api_billing_topups_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.topup_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 50, 1, 200),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        req.query->>'status'));
END
$$;

CREATE FUNCTION envoisms.api_billing_topups_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.topup_get(req.account_id, req.id));
END
$$;

-- POST /v1/billing/stripe/webhook (public: Stripe sends no API key). The
-- raw body is verified byte for byte as the gateway received it (api()'s
-- body argument, req.raw_body); a bad, missing or stale signature is 400
-- (Stripe's convention) and changes nothing; any verified event is 200.
CREATE FUNCTION envoisms.api_billing_stripe_webhook(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NOT coalesce(envoisms.stripe_signature_valid(req.raw_body, req.headers->>'stripe-signature',
                                                    envoisms.billing_setting('stripe_webhook_secret')), false) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'missing, invalid or expired Stripe-Signature',
                                     'Stripe-Signature');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object('received', true, 'result', envoisms.stripe_event_apply(req.body)));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('GET',  '/v1/billing/balance',         'envoisms.api_billing_balance(envoisms.api_request)',         'balance', false),
    ('GET',  '/v1/billing/packs',           'envoisms.api_billing_packs(envoisms.api_request)',           'billing', false),
    ('GET',  '/v1/billing/payment-methods', 'envoisms.api_billing_payment_methods(envoisms.api_request)', 'billing', false),
    ('GET',  '/v1/billing/topups',          'envoisms.api_billing_topups_list(envoisms.api_request)',     'billing', false),
    ('POST', '/v1/billing/topups',          'envoisms.api_billing_topups_create(envoisms.api_request)',   'billing', false),
    ('GET',  '/v1/billing/topups/:id',      'envoisms.api_billing_topups_get(envoisms.api_request)',      'billing', false),
    ('POST', '/v1/billing/stripe/webhook',  'envoisms.api_billing_stripe_webhook(envoisms.api_request)',  'billing', true);
