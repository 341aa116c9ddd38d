-- 85_carriers.sql — carriers and routes, a message's life after it was
-- handed to a carrier (expiry, failure, the WhatsApp-to-SMS cascade,
-- delivery reports), and the delivery-report intake routes served by
-- envoisms.api. The dispatcher's claim and outcome protocol is in
-- 86_dispatch.sql.
--
-- Money: a message that ends failed or expired is refunded once through
-- envoisms.message_refund (the ledger's unique index makes twice
-- impossible). Status changes fire the trigger of 35_events.sql (event row,
-- webhooks, NOTIFY envoisms_message_status). A delivery report only acts on
-- a compatible state (it needs a sent message), so a repeated or late one
-- changes nothing.
--
-- Carriers and routes are operator-level and global, like the other global
-- tables docs/design.md lists ("Global and per account"). Their config holds
-- secrets (tokens); no route returns it and PUBLIC cannot read it.

CREATE TABLE envoisms.carriers (
    carrier_id     text PRIMARY KEY CHECK (carrier_id ~ '^[a-z0-9_-]{1,40}$'),
    kind           text NOT NULL CHECK (kind IN ('sandbox', 'http', 'whatsapp_cloud', 'smpp')),
    name           text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    config         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    enabled        boolean NOT NULL DEFAULT true,
    max_per_second int CHECK (max_per_second > 0),          -- NULL = no cap
    down_until     timestamptz,                             -- circuit open: routes fail over
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- the built-in sandbox carrier is made by CREATE EXTENSION: not dumped
SELECT pg_catalog.pg_extension_config_dump('envoisms.carriers', 'WHERE carrier_id <> ''sandbox''');
REVOKE ALL ON envoisms.carriers FROM PUBLIC;
INSERT INTO envoisms.carriers (carrier_id, kind, name)
VALUES ('sandbox', 'sandbox', 'Built-in sandbox (no network)');

-- Longest prefix wins; within a prefix the lowest priority number first;
-- the next one is the failover while a carrier is disabled or down.
CREATE TABLE envoisms.routes (
    channel    text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    prefix     text NOT NULL DEFAULT '' CHECK (prefix ~ '^[0-9]{0,15}$'),   -- E.164 digits without '+'
    carrier_id text NOT NULL REFERENCES envoisms.carriers ON DELETE CASCADE,
    priority   int  NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, prefix, priority)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.routes', '');
REVOKE ALL ON envoisms.routes FROM PUBLIC;

-- Token buckets of the carriers with max_per_second (one row each, made on demand).
CREATE TABLE envoisms.carrier_rate_state (
    carrier_id text PRIMARY KEY REFERENCES envoisms.carriers ON DELETE CASCADE,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Delivery reports that arrived before the submit answer was recorded;
-- dispatch_sent applies them. Purged by the scheduler after 7 days.
CREATE TABLE envoisms.pending_dlrs (
    carrier_id    text NOT NULL,
    carrier_ref   text NOT NULL,
    status        text NOT NULL CHECK (status IN ('sent', 'delivered', 'failed', 'expired')),
    error_code    text,
    error_message text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (carrier_id, carrier_ref, status)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.pending_dlrs', '');

-- Delivery reports find their message by the carrier's id.
CREATE INDEX messages_carrier_ref ON envoisms.messages (carrier_id, carrier_ref) WHERE carrier_ref IS NOT NULL;
-- Sandbox messages waiting for their simulated delivery report.
CREATE INDEX messages_sandbox_due ON envoisms.messages (sent_at)
    WHERE status = 'sent' AND left(carrier_ref, 4) = 'sbx_';

-- The sandbox carrier's magic numbers (docs/workers.md), like Twilio's test numbers.
CREATE FUNCTION envoisms.sandbox_magic_numbers()
RETURNS TABLE (phone text, outcome text, description text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('+212600000001', 'failed',    'sent, then a delivery report says failed (refunded)'),
           ('+212600000002', 'expired',   'sent, then a delivery report says expired (refunded)'),
           ('+212600000003', 'rejected',  'rejected at submit: failed at once, never sent (refunded)'),
           ('+212600000004', 'transient', 'first attempt fails transiently, retried after 1 s, then delivered'),
           ('+212600000005', 'out_of_window', 'WhatsApp free text refused: OUT_OF_24H_WINDOW (with cascade: sent as SMS)'),
           ('+212600000006', 'not_connected', 'WhatsApp free text refused: WHATSAPP_NOT_CONNECTED (with cascade: sent as SMS)')
$$;

-- The carrier a message goes to now: sandbox messages to 'sandbox', others
-- by route (longest prefix, then priority), skipping carriers disabled or
-- down. NULL when no carrier is available.
CREATE FUNCTION envoisms.route_carrier(channel text, to_number text, sandbox boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT CASE WHEN sandbox THEN 'sandbox' ELSE (
            SELECT r.carrier_id
              FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
             WHERE r.channel = route_carrier.channel
               AND starts_with(ltrim(to_number, '+'), r.prefix)
               AND c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
             ORDER BY length(r.prefix) DESC, r.priority
             LIMIT 1) END);
END
$$;

-- Expire a message (validity over) and refund it; false when not queued/sent.
CREATE FUNCTION envoisms.message_expire(account_id text, message_id text, error_code text DEFAULT 'EXPIRED',
                                        error_message text DEFAULT 'the message validity ended before delivery')
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    UPDATE envoisms.messages m
       SET status = 'expired', locked_until = NULL, updated_at = now(),
           error_code = message_expire.error_code, error_message = message_expire.error_message
     WHERE m.account_id = message_expire.account_id AND m.message_id = message_expire.message_id
       AND m.status IN ('queued', 'sent');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM envoisms.message_refund(account_id, message_id, 'expired');
    RETURN true;
END
$$;

-- Cascade: a WhatsApp attempt of a cascade message failed, so it goes back
-- to the queue as an SMS, priced per segment. A dearer SMS debits the
-- difference (ledger 'debit', the message id); a cheaper one is not
-- credited (the WhatsApp charge stands). Returns false when the balance
-- cannot pay the SMS (the caller then fails the message and refunds it).
CREATE FUNCTION envoisms.message_cascade_to_sms(account_id text, message_id text, error_code text,
                                                error_message text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m envoisms.messages;
    seg record;
    price record;
    new_mad numeric;
    new_eur numeric;
    diff numeric;
BEGIN
    SELECT * INTO m FROM envoisms.messages x
     WHERE x.account_id = message_cascade_to_sms.account_id AND x.message_id = message_cascade_to_sms.message_id
       FOR UPDATE;
    IF NOT FOUND OR NOT m.cascade OR m.channel <> 'whatsapp' OR m.status NOT IN ('queued', 'sent')
       OR m.body IS NULL OR m.refunded_mad > 0 THEN
        RETURN false;
    END IF;
    SELECT * INTO seg FROM envoisms.sms_segments(m.body);
    SELECT * INTO price FROM envoisms.channel_prices(m.account_id, 'sms');
    new_mad := price.mad * seg.segments;
    new_eur := price.eur * seg.segments;
    diff := CASE WHEN m.sandbox THEN 0 ELSE new_mad - m.charged_mad END;
    IF diff > 0 THEN
        BEGIN
            PERFORM envoisms.balance_debit(m.account_id, diff);
        EXCEPTION WHEN SQLSTATE 'EV421' THEN
            RETURN false;
        END;
        INSERT INTO envoisms.ledger (account_id, kind, amount_mad, message_id, reference)
        VALUES (m.account_id, 'debit', -diff, m.message_id, 'cascade: WhatsApp failed, sent as SMS');
    END IF;
    UPDATE envoisms.messages x
       SET channel = 'sms', buttons = NULL, encoding = seg.encoding, segments = seg.segments,
           cost_mad = new_mad, cost_eur = new_eur, status = 'queued', locked_until = NULL,
           next_attempt_at = now(), carrier_id = NULL, carrier_ref = NULL, sent_at = NULL,
           error_code = message_cascade_to_sms.error_code, error_message = message_cascade_to_sms.error_message,
           updated_at = now()
     WHERE x.account_id = m.account_id AND x.message_id = m.message_id;
    INSERT INTO envoisms.message_events (account_id, message_id, status, detail)
    VALUES (m.account_id, m.message_id, 'queued',
            jsonb_strip_nulls(jsonb_build_object('cascade', 'sms', 'error_code', error_code,
                                                 'error_message', error_message, 'carrier_id', m.carrier_id)));
    RETURN true;
END
$$;

-- Fail a message and refund what it cost, once: its charge and any cascade
-- debit. Cascade WhatsApp messages fall back to SMS instead when they can.
-- Returns the resulting status ('failed', 'queued' for a cascade) or NULL
-- when the message was not in a state that can fail.
CREATE FUNCTION envoisms.message_fail(account_id text, message_id text, error_code text, error_message text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    extra numeric;
BEGIN
    IF envoisms.message_cascade_to_sms(account_id, message_id, error_code, error_message) THEN
        RETURN 'queued';
    END IF;
    UPDATE envoisms.messages m
       SET status = 'failed', locked_until = NULL, updated_at = now(),
           error_code = message_fail.error_code, error_message = message_fail.error_message
     WHERE m.account_id = message_fail.account_id AND m.message_id = message_fail.message_id
       AND m.status IN ('queued', 'sent');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM envoisms.message_refund(account_id, message_id, left('failed: ' || coalesce(error_code, ''), 200));
    -- a cascade's SMS debit is given back too (once: only while not yet given back)
    SELECT -sum(l.amount_mad) INTO extra FROM envoisms.ledger l
     WHERE l.account_id = message_fail.account_id AND l.message_id = message_fail.message_id
       AND l.kind = 'debit';
    IF extra > 0 THEN
        INSERT INTO envoisms.ledger (account_id, kind, amount_mad, message_id, reference)
        VALUES (account_id, 'adjustment', extra, message_id, 'refund of the cascade SMS difference');
        PERFORM envoisms.balance_credit(account_id, extra);
    END IF;
    RETURN 'failed';
END
$$;

-- Internal: apply one delivery report to a known message. Returns 'applied',
-- 'duplicate' (already in that state) or 'ignored' (a final state differs).
CREATE FUNCTION envoisms.dlr_apply_message(m_account text, m_id text, status text, error_code text,
                                           error_message text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    current text;
BEGIN
    SELECT m.status INTO current FROM envoisms.messages m
     WHERE m.account_id = m_account AND m.message_id = m_id FOR UPDATE;
    IF current = status THEN
        RETURN 'duplicate';
    END IF;
    IF current <> 'sent' THEN
        RETURN 'ignored';                 -- final already (or back in the queue after a cascade)
    END IF;
    IF status = 'delivered' THEN
        UPDATE envoisms.messages m SET status = 'delivered', delivered_at = now(), updated_at = now()
         WHERE m.account_id = m_account AND m.message_id = m_id;
    ELSIF status = 'failed' THEN
        PERFORM envoisms.message_fail(m_account, m_id, coalesce(error_code, 'UNDELIVERABLE'),
                                      coalesce(error_message, 'the carrier reported the message undeliverable'));
    ELSIF status = 'expired' THEN
        PERFORM envoisms.message_expire(m_account, m_id, coalesce(error_code, 'EXPIRED'),
                                        coalesce(error_message, 'the carrier reported the message expired'));
    ELSE
        RETURN 'duplicate';               -- 'sent' for a sent message
    END IF;
    RETURN 'applied';
END
$$;

-- A delivery report from a carrier: 'applied', 'duplicate', 'ignored', or
-- 'pending' when the carrier's id is not known yet (kept in pending_dlrs
-- and applied by dispatch_sent). Idempotent.
CREATE FUNCTION envoisms.dlr_apply(carrier_id text, carrier_ref text, status text,
                                   error_code text DEFAULT NULL, error_message text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
BEGIN
    IF status IS NULL OR status NOT IN ('delivered', 'failed', 'expired', 'sent') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'status must be one of delivered, failed, expired, sent', 'status');
    END IF;
    IF carrier_ref IS NULL OR length(carrier_ref) NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the carrier message id must be 1 to 200 characters', 'id');
    END IF;
    SELECT x.account_id, x.message_id INTO m FROM envoisms.messages x
     WHERE x.carrier_id = dlr_apply.carrier_id AND x.carrier_ref = dlr_apply.carrier_ref;
    IF NOT FOUND THEN
        INSERT INTO envoisms.pending_dlrs (carrier_id, carrier_ref, status, error_code, error_message)
        VALUES (carrier_id, carrier_ref, status, left(error_code, 100), left(error_message, 500))
        ON CONFLICT DO NOTHING;
        RETURN 'pending';
    END IF;
    RETURN envoisms.dlr_apply_message(m.account_id, m.message_id, status, left(error_code, 100),
                                      left(error_message, 500));
END
$$;

-- Open a carrier's circuit for `seconds` (routes fail over meanwhile).
CREATE FUNCTION envoisms.carrier_trip(carrier_id text, seconds int) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
#variable_conflict use_column
BEGIN
    UPDATE envoisms.carriers c SET down_until = now() + make_interval(secs => seconds)
     WHERE c.carrier_id = carrier_trip.carrier_id;
END
$$;

-- ---- delivery-report intake (served by envoisms.api, so by the gateway)

-- Check a carrier's intake token (config.dlr_token) sent as the header
-- X-Carrier-Token or the query parameter token; UNAUTHORIZED otherwise.
-- Returns the carrier row.
CREATE FUNCTION envoisms.carrier_authenticate(req envoisms.api_request, want_kind text)
RETURNS envoisms.carriers
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
    given text := coalesce(req.headers->>'x-carrier-token', req.query->>'token');
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = want_kind;
    IF NOT FOUND OR c.config->>'dlr_token' IS NULL OR given IS NULL
       OR NOT envoisms.secure_equals(given, c.config->>'dlr_token') THEN
        PERFORM envoisms.raise_error('UNAUTHORIZED', 'unknown carrier or wrong carrier token');
    END IF;
    RETURN c;
END
$$;

-- POST /v1/carriers/:id/dlr — the http carrier's delivery reports:
-- {"id": "<carrier message id>", "status": "delivered"|"failed"|"expired"|"sent",
--  "error_code", "error_message"} or {"reports": [ ... ]}.
CREATE FUNCTION envoisms.api_carrier_dlr(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers := envoisms.carrier_authenticate(req, 'http');
    id_field text := coalesce(c.config->>'id_field', 'id');
    r jsonb;
    results jsonb := '[]';
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(
                 CASE WHEN jsonb_typeof(req.body->'reports') = 'array' THEN req.body->'reports'
                      ELSE jsonb_build_array(req.body) END)
    LOOP
        IF jsonb_typeof(r) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'each report must be an object', 'reports');
        END IF;
        results := results || jsonb_build_object('id', r->>id_field, 'result',
            envoisms.dlr_apply(c.carrier_id, coalesce(r->>id_field, r->>'id'), lower(r->>'status'),
                               r->>'error_code', r->>'error_message'));
    END LOOP;
    RETURN envoisms.reply(200, jsonb_build_object('received', jsonb_array_length(results), 'results', results));
END
$$;

-- GET /v1/carriers/:id/whatsapp — the WhatsApp Cloud webhook handshake:
-- echo hub.challenge when hub.verify_token matches config.verify_token.
-- Meta reads the answer as plain text: the reply says Content-Type
-- text/plain and its body is the challenge as one JSON string, which the
-- gateway writes as that text.
CREATE FUNCTION envoisms.api_whatsapp_verify(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = 'whatsapp_cloud';
    IF NOT FOUND OR req.query->>'hub.mode' IS DISTINCT FROM 'subscribe' OR c.config->>'verify_token' IS NULL
       OR NOT envoisms.secure_equals(coalesce(req.query->>'hub.verify_token', ''), c.config->>'verify_token') THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'verification failed');
    END IF;
    RETURN ROW(200, '{"Content-Type": "text/plain; charset=utf-8"}'::jsonb,
               to_jsonb(coalesce(req.query->>'hub.challenge', '')))::envoisms.api_reply;
END
$$;

-- POST /v1/carriers/:id/whatsapp — WhatsApp Cloud callbacks, verified with
-- X-Hub-Signature-256 (HMAC-SHA256 of the raw body under config.app_secret):
-- the statuses of our messages (value.statuses[]; a failure's code stored
-- as WHATSAPP_<code>, as at submit) and the customers' messages
-- (value.messages[], 90_whatsapp.sql). Answers how many of both it took.
CREATE FUNCTION envoisms.api_whatsapp_status(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.carriers;
    v jsonb;
    s jsonb;
    st text;
    n int := 0;
BEGIN
    SELECT * INTO c FROM envoisms.carriers x WHERE x.carrier_id = req.id AND x.kind = 'whatsapp_cloud';
    IF NOT FOUND OR c.config->>'app_secret' IS NULL OR req.raw_body IS NULL
       OR NOT envoisms.secure_equals(coalesce(req.headers->>'x-hub-signature-256', ''),
                                     'sha256=' || envoisms.hmac_sha256_hex(c.config->>'app_secret', req.raw_body)) THEN
        PERFORM envoisms.raise_error('UNAUTHORIZED', 'missing or wrong X-Hub-Signature-256');
    END IF;
    FOR v IN SELECT ch.value->'value'
               FROM jsonb_array_elements(CASE WHEN jsonb_typeof(req.body->'entry') = 'array'
                                              THEN req.body->'entry' ELSE '[]' END) e(value),
                    jsonb_array_elements(CASE WHEN jsonb_typeof(e.value->'changes') = 'array'
                                              THEN e.value->'changes' ELSE '[]' END) ch(value)
              WHERE jsonb_typeof(ch.value->'value') = 'object'
    LOOP
        FOR s IN SELECT x.value FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v->'statuses') = 'array'
                                                               THEN v->'statuses' ELSE '[]' END) x(value)
        LOOP
            st := CASE s->>'status' WHEN 'sent' THEN 'sent' WHEN 'delivered' THEN 'delivered'
                                    WHEN 'read' THEN 'delivered' WHEN 'failed' THEN 'failed' END;
            CONTINUE WHEN st IS NULL OR s->>'id' IS NULL;
            PERFORM envoisms.dlr_apply(c.carrier_id, s->>'id', st,
                                       'WHATSAPP_' || (s->'errors'->0->>'code'), s->'errors'->0->>'title');
            n := n + 1;
        END LOOP;
        n := n + envoisms.whatsapp_receive(c.carrier_id, v);
    END LOOP;
    RETURN envoisms.reply(200, jsonb_build_object('received', n));
END
$$;

-- Public: carriers send no API key; each handler authenticates its carrier.
INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('POST', '/v1/carriers/:id/dlr',      'envoisms.api_carrier_dlr(envoisms.api_request)',      'status', true),
    ('GET',  '/v1/carriers/:id/whatsapp', 'envoisms.api_whatsapp_verify(envoisms.api_request)',  'status', true),
    ('POST', '/v1/carriers/:id/whatsapp', 'envoisms.api_whatsapp_status(envoisms.api_request)',  'status', true);
