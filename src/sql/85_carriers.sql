-- 85_carriers.sql — carriers, routes, and the dispatcher's SQL interface:
-- claim, outcomes (sent / retry / failed), delivery reports, and the
-- delivery-report intake routes served by envoisms.api.
--
-- Workers (src/worker_dispatch.c, src/worker_smpp*.c) follow one shape:
--   1. envoisms.dispatch_claim() in a short transaction: due queued messages
--      are locked with FOR UPDATE SKIP LOCKED, routed, and leased
--      (locked_until = now() + lease, attempts + 1);
--   2. network I/O outside any transaction;
--   3. the outcome in a second short transaction: dispatch_sent,
--      dispatch_retry or dispatch_failed (or dispatch_record for a batch).
-- A lease that runs out (crashed worker) makes the message claimable again,
-- so a message is sent at least once; a second send of the same message id
-- happens only when the first transfer was in flight when its worker died.
--
-- Outcomes only act on a compatible state (a 'sent' outcome needs a queued
-- message, a delivery report needs a sent one ...), so a repeated or late
-- call changes nothing. Money: a message that ends failed or expired is
-- refunded once through envoisms.message_refund (the ledger's unique index
-- makes twice impossible). Status changes fire the trigger of 35_events.sql
-- (event row, webhooks, NOTIFY envoisms_message_status).
--
-- Carriers and routes are operator-level and global: the one documented
-- exception to "every table is keyed by account_id". Their config holds
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
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT CASE WHEN sandbox THEN 'sandbox' ELSE (
        SELECT r.carrier_id
          FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
         WHERE r.channel = route_carrier.channel
           AND starts_with(ltrim(to_number, '+'), r.prefix)
           AND c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
         ORDER BY length(r.prefix) DESC, r.priority
         LIMIT 1) END
$$;

-- Claim up to `batch` due messages for carriers of `carrier_kinds` (and only
-- `only_carrier` when given): route, lock, lease. The route is computed in
-- the scan itself (sandbox messages → 'sandbox'; others by the longest
-- prefix, then priority, over enabled carriers that are not down), so rows
-- routed to other kinds are passed over without being locked, and a backlog
-- for one kind never hides another's messages. Carriers with max_per_second
-- get at most what their token bucket holds. A whatsapp_cloud message's
-- config names the account's number it goes from (whatsapp_sender). When
-- the claim comes back short, due messages that no carrier can take wait
-- 30 s (NO_ROUTE); they expire if that lasts past their validity.
CREATE FUNCTION envoisms.dispatch_claim(carrier_kinds text[], only_carrier text, batch int, lease interval)
RETURNS TABLE (account_id text, message_id text, carrier_id text, carrier_kind text, to_number text,
               sender_id text, channel text, body text, encoding text, segments int, buttons jsonb,
               metadata jsonb, attempts int, expires_at timestamptz, carrier_config jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    allowance jsonb := '{}';
    claimed int;
BEGIN
    IF batch IS NULL OR batch < 1 OR lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'dispatch_claim needs a positive batch and lease'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Refill the token buckets of rate-capped carriers this claim may use.
    IF EXISTS (SELECT 1 FROM envoisms.carriers c WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)) THEN
        INSERT INTO envoisms.carrier_rate_state AS s (carrier_id, tokens, updated_at)
        SELECT c.carrier_id, c.max_per_second, now() FROM envoisms.carriers c
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier)
        ON CONFLICT ON CONSTRAINT carrier_rate_state_pkey DO UPDATE
           SET tokens = least(EXCLUDED.tokens,
                              s.tokens + EXCLUDED.tokens * extract(epoch FROM now() - s.updated_at)),
               updated_at = now();
        SELECT coalesce(jsonb_object_agg(s.carrier_id, floor(s.tokens)::int), '{}') INTO allowance
          FROM envoisms.carrier_rate_state s JOIN envoisms.carriers c ON c.carrier_id = s.carrier_id
         WHERE c.max_per_second IS NOT NULL AND c.kind = ANY (carrier_kinds)
           AND (only_carrier IS NULL OR c.carrier_id = only_carrier);
    END IF;

    RETURN QUERY
    WITH usable AS MATERIALIZED (
        SELECT r.channel, r.prefix, r.priority, c.carrier_id, c.kind, c.config
          FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
         WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
    ), sandbox_carrier AS MATERIALIZED (
        SELECT c.carrier_id, c.kind, c.config FROM envoisms.carriers c WHERE c.carrier_id = 'sandbox'
    ), locked AS (
        SELECT m.account_id, m.message_id, m.next_attempt_at, rt.carrier_id AS routed, rt.kind, rt.config
          FROM envoisms.messages m
         CROSS JOIN LATERAL (
                SELECT sc.carrier_id, sc.kind, sc.config FROM sandbox_carrier sc WHERE m.sandbox
                UNION ALL
                (SELECT u.carrier_id, u.kind, u.config FROM usable u
                  WHERE NOT m.sandbox AND u.channel = m.channel AND starts_with(ltrim(m.to_number, '+'), u.prefix)
                  ORDER BY length(u.prefix) DESC, u.priority
                  LIMIT 1)
                LIMIT 1) rt
         WHERE m.status = 'queued' AND m.next_attempt_at <= now()
           AND (m.locked_until IS NULL OR m.locked_until < now())
           AND m.expires_at > now()
           AND rt.kind = ANY (carrier_kinds) AND (only_carrier IS NULL OR rt.carrier_id = only_carrier)
           AND coalesce((allowance->>rt.carrier_id)::int, 1) > 0
         ORDER BY m.next_attempt_at
         LIMIT batch
           FOR UPDATE OF m SKIP LOCKED
    ), chosen AS (
        SELECT l.* FROM (SELECT lk.*, row_number() OVER (PARTITION BY lk.routed ORDER BY lk.next_attempt_at) AS rn
                           FROM locked lk) l
         WHERE l.rn <= coalesce((allowance->>l.routed)::int, 2147483647)
    ), leased AS (
        UPDATE envoisms.messages m
           SET carrier_id = ch.routed, locked_until = now() + lease, attempts = m.attempts + 1,
               updated_at = now()
          FROM chosen ch
         WHERE m.account_id = ch.account_id AND m.message_id = ch.message_id
        RETURNING m.account_id, m.message_id, m.carrier_id, ch.kind, m.to_number, m.sender_id, m.channel::text,
                  m.body, m.encoding::text, m.segments::int, m.buttons, m.metadata, m.attempts, m.expires_at,
                  CASE WHEN ch.kind = 'whatsapp_cloud' AND NOT m.sandbox
                       THEN ch.config || envoisms.whatsapp_sender(m.account_id, m.message_id, m.campaign_id,
                                                              m.to_number, m.metadata)
                       ELSE ch.config END
    ), spent AS (
        UPDATE envoisms.carrier_rate_state s SET tokens = s.tokens - n.used
          FROM (SELECT l.carrier_id, count(*) AS used FROM leased l GROUP BY 1) n
         WHERE s.carrier_id = n.carrier_id
        RETURNING 1
    )
    SELECT l.* FROM leased l;
    GET DIAGNOSTICS claimed = ROW_COUNT;

    IF claimed < batch THEN
        -- what no carrier takes (no route, or only disabled / down carriers) waits
        UPDATE envoisms.messages m
           SET next_attempt_at = now() + interval '30 seconds', error_code = 'NO_ROUTE',
               error_message = 'no enabled carrier routes this number on this channel'
         WHERE m.ctid = ANY (ARRAY(
                SELECT x.ctid FROM envoisms.messages x
                 WHERE x.status = 'queued' AND x.next_attempt_at <= now() AND NOT x.sandbox
                   AND (x.locked_until IS NULL OR x.locked_until < now())
                   AND NOT EXISTS (SELECT 1 FROM envoisms.routes r JOIN envoisms.carriers c ON c.carrier_id = r.carrier_id
                                    WHERE c.enabled AND (c.down_until IS NULL OR c.down_until <= now())
                                      AND r.channel = x.channel AND starts_with(ltrim(x.to_number, '+'), r.prefix))
                 ORDER BY x.next_attempt_at
                 LIMIT batch
                   FOR UPDATE SKIP LOCKED));
    END IF;
END
$$;

-- When the next claimable queued message is due (NULL when none): the
-- dispatcher's timed wake.
CREATE FUNCTION envoisms.dispatch_next_due() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT m.next_attempt_at FROM envoisms.messages m
     WHERE m.status = 'queued' AND (m.locked_until IS NULL OR m.locked_until < now())
     ORDER BY m.next_attempt_at LIMIT 1
$$;

-- Release leases without an outcome (a worker stopping): the messages are
-- claimable at once and the attempt does not count.
CREATE FUNCTION envoisms.dispatch_release(account_id text, message_id text) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.messages m SET locked_until = NULL, attempts = greatest(m.attempts - 1, 0), updated_at = now()
     WHERE m.account_id = dispatch_release.account_id AND m.message_id = dispatch_release.message_id
       AND m.status = 'queued' AND m.locked_until IS NOT NULL
    RETURNING true
$$;

-- At a worker's start: release the leases taken before `since` (the start of
-- this server's shared memory, so leases of workers killed by a crash) on
-- carriers of the given kinds. Leases taken since belong to live workers.
CREATE FUNCTION envoisms.dispatch_reclaim(carrier_kinds text[], since timestamptz) RETURNS int
LANGUAGE sql SET search_path = pg_catalog AS $$
    WITH r AS (
        UPDATE envoisms.messages m SET locked_until = NULL
         WHERE m.status = 'queued' AND m.locked_until > now() AND m.updated_at < since
           AND m.carrier_id IN (SELECT c.carrier_id FROM envoisms.carriers c WHERE c.kind = ANY (carrier_kinds))
        RETURNING 1)
    SELECT count(*)::int FROM r
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

-- The carrier accepted the message: 'sent', then any report that came first.
-- Returns false when the message was not leased-queued (a late duplicate).
CREATE FUNCTION envoisms.dispatch_sent(account_id text, message_id text, carrier_id text, carrier_ref text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    d record;
BEGIN
    UPDATE envoisms.messages m
       SET status = 'sent', sent_at = now(), carrier_id = dispatch_sent.carrier_id,
           carrier_ref = dispatch_sent.carrier_ref, locked_until = NULL, updated_at = now(),
           error_code = NULL, error_message = NULL
     WHERE m.account_id = dispatch_sent.account_id AND m.message_id = dispatch_sent.message_id
       AND m.status = 'queued';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF carrier_ref IS NOT NULL THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  WHERE p.carrier_id = dispatch_sent.carrier_id AND p.carrier_ref = dispatch_sent.carrier_ref
                 RETURNING p.status, p.error_code, p.error_message
        LOOP
            -- the first final report applied stays (the others are then 'ignored')
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(account_id, message_id, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;
    RETURN true;
END
$$;

-- A transient failure: back to the queue after `delay`, or expired and
-- refunded when that is past the message's validity. Returns the status.
CREATE FUNCTION envoisms.dispatch_retry(account_id text, message_id text, error_code text, error_message text,
                                        delay interval)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    valid_until timestamptz;
BEGIN
    SELECT m.expires_at INTO valid_until FROM envoisms.messages m
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id
       AND m.status = 'queued' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF now() + coalesce(delay, interval '0') >= valid_until THEN
        PERFORM envoisms.message_expire(account_id, message_id, coalesce(error_code, 'EXPIRED'),
            'the message validity ended while retrying: ' || coalesce(error_message, 'carrier unavailable'));
        RETURN 'expired';
    END IF;
    UPDATE envoisms.messages m
       SET next_attempt_at = now() + coalesce(delay, interval '0'), locked_until = NULL, updated_at = now(),
           error_code = left(dispatch_retry.error_code, 100), error_message = left(dispatch_retry.error_message, 500)
     WHERE m.account_id = dispatch_retry.account_id AND m.message_id = dispatch_retry.message_id;
    RETURN 'queued';
END
$$;

-- A permanent failure (the carrier rejected the message): 'failed' and
-- refunded once, or back to the queue as an SMS for a cascade.
CREATE FUNCTION envoisms.dispatch_failed(account_id text, message_id text, error_code text, error_message text)
RETURNS text
LANGUAGE sql SET search_path = pg_catalog
RETURN envoisms.message_fail(account_id, message_id, left(error_code, 100), left(error_message, 500));

-- Record a batch of outcomes in one transaction (the dispatcher's second
-- transaction): [{"op":"sent"|"retry"|"failed"|"release", "a": account_id,
-- "m": message_id, "c": carrier_id, "r": carrier_ref, "code", "msg",
-- "delay_ms"}]. The 'sent' outcomes, nearly all of them, are applied in one
-- statement (then any early report); the others one by one. Returns how
-- many were applied.
CREATE FUNCTION envoisms.dispatch_record(outcomes jsonb) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o record;
    d record;
    n int := 0;
    ok boolean;
BEGIN
    WITH s AS (
        SELECT x.a, x.m, x.c, x.r FROM jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
         WHERE x.op = 'sent'
    ), upd AS (
        UPDATE envoisms.messages m
           SET status = 'sent', sent_at = now(), carrier_id = s.c, carrier_ref = s.r, locked_until = NULL,
               updated_at = now(), error_code = NULL, error_message = NULL
          FROM s
         WHERE m.account_id = s.a AND m.message_id = s.m AND m.status = 'queued'
        RETURNING 1
    )
    SELECT count(*) INTO n FROM upd;
    -- delivery reports that came before the submit answer
    IF EXISTS (SELECT 1 FROM envoisms.pending_dlrs) THEN
        FOR d IN DELETE FROM envoisms.pending_dlrs p
                  USING jsonb_to_recordset(outcomes) AS x(op text, a text, m text, c text, r text)
                  WHERE x.op = 'sent' AND p.carrier_id = x.c AND p.carrier_ref = x.r
                 RETURNING x.a, x.m, p.status, p.error_code, p.error_message
        LOOP
            IF d.status <> 'sent' THEN
                PERFORM envoisms.dlr_apply_message(d.a, d.m, d.status, d.error_code, d.error_message);
            END IF;
        END LOOP;
    END IF;

    FOR o IN SELECT * FROM jsonb_to_recordset(outcomes)
                    AS x(op text, a text, m text, c text, r text, code text, msg text, delay_ms double precision)
              WHERE x.op <> 'sent'
    LOOP
        CASE o.op
        WHEN 'retry' THEN
            ok := envoisms.dispatch_retry(o.a, o.m, o.code, o.msg,
                                          make_interval(secs => coalesce(o.delay_ms, 0) / 1000)) IS NOT NULL;
        WHEN 'failed' THEN
            ok := envoisms.dispatch_failed(o.a, o.m, o.code, o.msg) IS NOT NULL;
        WHEN 'release' THEN
            ok := coalesce(envoisms.dispatch_release(o.a, o.m), false);
        ELSE
            RAISE EXCEPTION 'unknown dispatch outcome "%"', o.op USING ERRCODE = 'invalid_parameter_value';
        END CASE;
        IF ok THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- The sandbox carrier's delivery reports: messages it sent at least `delay`
-- ago become delivered (in one statement), or failed / expired for the
-- magic numbers. Returns how many were applied (at most `batch`).
CREATE FUNCTION envoisms.sandbox_deliver_due(delay interval, batch int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    m record;
    n int := 0;
BEGIN
    FOR m IN WITH due AS (
                 SELECT x.account_id, x.message_id, x.to_number FROM envoisms.messages x
                  WHERE x.status = 'sent' AND left(x.carrier_ref, 4) = 'sbx_' AND x.sent_at <= now() - delay
                  ORDER BY x.sent_at LIMIT batch FOR UPDATE SKIP LOCKED
             ), delivered AS (
                 UPDATE envoisms.messages x SET status = 'delivered', delivered_at = now(), updated_at = now()
                   FROM due
                  WHERE x.account_id = due.account_id AND x.message_id = due.message_id
                    AND due.to_number NOT IN ('+212600000001', '+212600000002')
                 RETURNING 1
             )
             SELECT due.*, (SELECT count(*) FROM delivered) AS n_delivered FROM due
              WHERE due.to_number IN ('+212600000001', '+212600000002')
             UNION ALL
             SELECT NULL, NULL, NULL, (SELECT count(*) FROM delivered)
    LOOP
        IF m.account_id IS NULL THEN
            n := n + m.n_delivered;
            CONTINUE;
        END IF;
        PERFORM envoisms.dlr_apply_message(m.account_id, m.message_id,
            CASE m.to_number WHEN '+212600000001' THEN 'failed' ELSE 'expired' END,
            CASE m.to_number WHEN '+212600000001' THEN 'SANDBOX_UNDELIVERABLE' ELSE 'SANDBOX_EXPIRED' END,
            CASE m.to_number WHEN '+212600000001' THEN 'sandbox magic number: the handset never acknowledged'
                             ELSE 'sandbox magic number: the validity ran out at the carrier' END);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- When the next sandbox delivery report is due (NULL when none).
CREATE FUNCTION envoisms.sandbox_next_due(delay interval) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT x.sent_at + delay FROM envoisms.messages x
     WHERE x.status = 'sent' AND left(x.carrier_ref, 4) = 'sbx_'
     ORDER BY x.sent_at LIMIT 1
$$;

-- Open a carrier's circuit for `seconds` (routes fail over meanwhile).
CREATE FUNCTION envoisms.carrier_trip(carrier_id text, seconds int) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.carriers c SET down_until = now() + make_interval(secs => seconds)
     WHERE c.carrier_id = carrier_trip.carrier_id
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
