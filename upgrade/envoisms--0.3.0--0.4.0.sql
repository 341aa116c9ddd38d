-- envoisms 0.3.0 -> 0.4.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.4.0 release: its definitions are those of src/sql at 0.4.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.4.0'" to load this file. \quit

-- ---- 1. new functions: the sender id rule in C, what a send reads of its
-- account from a per-backend cache (with the trigger that makes every
-- backend forget it when opt-outs change), and what a new status sets in
-- motion as a function of its own, which inbound_receive() now calls
-- instead of an insert trigger that every send planned, and the reading of
-- a POST /v1/messages body in one C call, and the parse of a request body
-- that also finds what the cast would refuse (one parse instead of two)

CREATE FUNCTION envoisms.account_lookup(account_id text, OUT status text, OUT channels text[],
                                        OUT has_optouts boolean)
AS 'MODULE_PATHNAME', 'account_lookup' LANGUAGE C STRICT STABLE;

CREATE FUNCTION envoisms.sender_id_valid(sender text) RETURNS boolean
AS 'MODULE_PATHNAME', 'sender_id_valid' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.message_announce(m envoisms.messages) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO envoisms.message_events (account_id, message_id, status, detail)
    VALUES (m.account_id, m.message_id, m.status,
            jsonb_strip_nulls(jsonb_build_object('error_code', m.error_code, 'error_message', m.error_message,
                                                 'carrier_id', m.carrier_id)));
    IF m.status IN ('sent', 'delivered', 'failed', 'expired', 'received')
       AND EXISTS (SELECT 1 FROM envoisms.webhooks w
                    WHERE w.account_id = m.account_id AND w.deleted_at IS NULL AND w.active
                      AND 'message.' || m.status = ANY (w.events)) THEN
        PERFORM envoisms.webhook_enqueue(m.account_id, 'message.' || m.status, envoisms.message_event_data(m));
    END IF;
    PERFORM pg_notify('envoisms_message_status',
                      json_build_object('id', m.message_id, 'account_id', m.account_id, 'status', m.status)::text);
END
$$;

CREATE FUNCTION envoisms.body_jsonb(body text, OUT value jsonb, OUT problem text)
AS 'MODULE_PATHNAME', 'body_jsonb' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.message_request(body jsonb, OUT "to" text, OUT message text, OUT "from" text,
                                         OUT channel text, OUT cascade boolean, OUT metadata jsonb,
                                         OUT buttons jsonb, OUT bad_field text)
AS 'MODULE_PATHNAME', 'message_request' LANGUAGE C STRICT IMMUTABLE;

CREATE TRIGGER optouts_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.optouts
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- ---- 2. changed function bodies (CREATE OR REPLACE keeps their grants)

CREATE OR REPLACE FUNCTION envoisms.check_sender_id(sender text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF sender IS NULL THEN
        RETURN 'ENVOISMS';
    END IF;
    IF NOT envoisms.sender_id_valid(sender) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'from must be an alphanumeric sender id of 1 to 11 characters (letters, digits, space . _ & -) or a number of 3 to 15 digits', 'from');
    END IF;
    RETURN sender;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.message_send(account_id text, "to" text, message text,
                                      "from" text DEFAULT 'ENVOISMS', channel text DEFAULT 'sms',
                                      cascade boolean DEFAULT false, metadata jsonb DEFAULT NULL,
                                      buttons jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                      sandbox boolean DEFAULT false, campaign_id text DEFAULT NULL,
                                      skip_opt_out boolean DEFAULT false)
RETURNS jsonb
-- No SET search_path (every name is qualified, and it is not SECURITY
-- DEFINER): a function that sets a GUC saves and restores it on every call,
-- and the changed path sends every cached plan through a search-path check.
LANGUAGE plpgsql AS $$
DECLARE
    id text := envoisms.new_id('msg');
    e164 text := envoisms.phone_e164("to");
    sender text;
    acc record;         -- account_lookup(): status, channels, has_optouts
    unit_mad numeric;
    enc text;
    n_segments int;
    opted_out boolean;
    cost_mad numeric;
    cost_eur numeric;
    btns jsonb;
    written boolean := false;
    woken boolean;
    created timestamptz := now();
BEGIN
    channel := coalesce(channel, 'sms');
    cascade := coalesce(cascade, false);
    sandbox := coalesce(sandbox, false);
    IF cascade THEN
        -- cascade means WhatsApp first, SMS on failure, whatever channel says
        PERFORM envoisms.check_account_channel(account_id, 'sms');
        channel := 'whatsapp';
    END IF;
    -- the account and its prices from per-backend caches (accounts.c,
    -- prices.c): plain expressions, no statement to start
    acc := envoisms.account_lookup(account_id);
    unit_mad := envoisms.unit_price(account_id, channel, 'MAD');
    n_segments := CASE WHEN channel = 'whatsapp' THEN 1
                       ELSE envoisms.sms_segment_count(CASE WHEN length(message) <= 1600 THEN message END) END;
    cost_mad := unit_mad * n_segments;
    cost_eur := envoisms.unit_price(account_id, channel, 'EUR') * n_segments;
    -- one test for the common case; the checks below raise the precise error, in order
    sender := coalesce("from", 'ENVOISMS');
    IF acc.status IS DISTINCT FROM 'active' OR NOT channel = ANY (acc.channels) OR unit_mad IS NULL
       OR e164 IS NULL OR left(btrim("to"), 1) <> '+' OR message IS NULL OR length(message) NOT BETWEEN 1 AND 1600
       OR NOT envoisms.sender_id_valid(sender) THEN
        PERFORM envoisms.check_account_channel(account_id, channel);
        PERFORM envoisms.check_phone("to");
        PERFORM envoisms.check_body(message);
        PERFORM envoisms.check_sender_id(sender);
    END IF;
    enc := envoisms.sms_encoding(message);
    -- the number is looked up only for an account that has opt-outs at all
    IF acc.has_optouts AND NOT skip_opt_out THEN
        opted_out := EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = message_send.account_id AND o.phone = e164);
    END IF;
    IF metadata IS NOT NULL OR buttons IS NOT NULL OR opted_out THEN
        IF jsonb_typeof(metadata) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
        ELSIF octet_length(metadata::text) > 8192 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata is limited to 8 KB', 'metadata');
        END IF;
        btns := envoisms.check_buttons(buttons, channel);
        IF opted_out THEN
            PERFORM envoisms.check_not_opted_out(account_id, e164);
        END IF;
    END IF;

    -- Take the money from this backend's home bucket in the statement that
    -- writes the row; when that bucket is held or short, balance_debit() tries
    -- the others or rebalances (or raises INSUFFICIENT_BALANCE), and the row is
    -- written by the plain INSERT below, as it is when nothing is to be paid
    -- (sandbox, free): a plan without the debit costs less to start.
    IF NOT sandbox AND cost_mad > 0 THEN
        WITH debit AS (
            UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad - cost_mad
             WHERE b.account_id = message_send.account_id
               AND b.bucket = pg_backend_pid() % envoisms.balance_bucket_count()
               AND b.ctid = (SELECT c.ctid FROM envoisms.balance_buckets c
                              WHERE c.account_id = message_send.account_id
                                AND c.bucket = pg_backend_pid() % envoisms.balance_bucket_count()
                                AND c.balance_mad >= cost_mad
                              FOR UPDATE SKIP LOCKED)
            RETURNING 1)
        INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                       cascade, body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                       metadata, buttons, created_at, updated_at, next_attempt_at)
        SELECT account_id, id, api_key_id, campaign_id, e164, sender, channel, cascade, message, enc,
               n_segments, cost_mad, cost_eur, cost_mad, false, metadata, btns, created, created, created
         WHERE EXISTS (SELECT 1 FROM debit);
        written := FOUND;
        IF NOT written THEN
            PERFORM envoisms.balance_debit(account_id, cost_mad);
        END IF;
    END IF;
    IF NOT written THEN
        INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                       cascade, body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                       metadata, buttons, created_at, updated_at, next_attempt_at)
        VALUES (account_id, id, api_key_id, campaign_id, e164, sender, channel, cascade, message, enc,
                n_segments, cost_mad, cost_eur, CASE WHEN sandbox THEN 0 ELSE cost_mad END, sandbox,
                metadata, btns, created, created, created);
    END IF;
    woken := envoisms.wake_dispatcher();   -- an assignment, not PERFORM: no SPI statement
    RETURN envoisms.message_send_reply(id, e164, channel, cascade, cost_eur, cost_mad, n_segments, created);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.messages_status_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.message_announce(NEW);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api(method text, path text, query text DEFAULT '', headers jsonb DEFAULT '{}',
                             body text DEFAULT NULL, client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    req envoisms.api_request;
    rep envoisms.api_reply;
    hdr jsonb;
    out_headers jsonb := '{}';
    k record;           -- the key: api_key_lookup(), every field NULL when there is none
    r record;           -- the route: api_route(), every field NULL when none serves the request
    tmpl text;
    rl record;
    err_state text;
    err_message text;
    err_column text;
    err_detail text;
    err_context text;
    err_code text;
    err_http int;
    b record;           -- body_jsonb(): the body as jsonb, or its problem
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    hdr := envoisms.headers_normalize(headers);

    BEGIN
        -- 1. route (cached per backend, routes.c): the exact path, else the
        -- path with its third segment as :id
        r := envoisms.api_route(method, path);
        IF r.by_template THEN
            req.id := envoisms.url_decode(split_part(path, '/', 4));
        END IF;

        -- 2. the key the Authorization header names (cached per backend, keys.c);
        -- a public route reads none
        k := envoisms.api_key_lookup(CASE WHEN NOT coalesce(r.public, false)
                                          THEN envoisms.api_key_hash(hdr->>'authorization') END);
        IF NOT coalesce(r.public, false) THEN
            -- authenticate: every failure gives the same answer (no oracle),
            -- and an unknown route is not revealed before the key is checked
            IF k.api_key_id IS NULL OR k.account_status = 'closed'
               OR (cardinality(k.ip_whitelist) > 0 AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_whitelist))) THEN
                PERFORM envoisms.raise_error('UNAUTHORIZED',
                    'invalid or missing API key: send Authorization: Bearer env_live_... or env_test_... from an allowed address');
            END IF;

            -- 3. rate limit (shared memory, no row per request). X-Envoisms-Key-Id
            -- names the key for the gateway's access log (which strips it).
            rl := envoisms.ratelimit_take(k.api_key_id, k.rate_limit);
            out_headers := CASE WHEN k.rate_limit IS NULL THEN jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id)
                                ELSE jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id, 'X-RateLimit-Limit', k.rate_limit::text,
                                                        'X-RateLimit-Remaining', rl.remaining::text) END;
            IF NOT rl.allowed THEN
                out_headers := out_headers || jsonb_build_object('Retry-After', rl.retry_after::text);
                PERFORM envoisms.raise_error('RATE_LIMITED',
                    format('rate limit of %s requests per minute exceeded; retry in %s s', k.rate_limit, rl.retry_after));
            END IF;
            -- last_used_at at most once a minute, and never waiting: a request
            -- that finds the key row held by another request leaves it to that one
            IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
                UPDATE envoisms.api_keys SET last_used_at = now()
                 WHERE ctid = (SELECT x.ctid FROM envoisms.api_keys x
                                WHERE x.account_id = k.account_id AND x.api_key_id = k.api_key_id
                                  AND (x.last_used_at IS NULL OR x.last_used_at < now() - interval '1 minute')
                                FOR UPDATE SKIP LOCKED);
            END IF;

            -- (one test on the common path: every statement costs its own evaluation)
            IF r.handler IS NULL OR (k.permissions IS NOT NULL AND NOT r.permission = ANY (k.permissions)
                                         AND NOT (r.permission = 'balance' AND 'billing' = ANY (k.permissions))) THEN
                IF r.handler IS NULL THEN
                    tmpl := regexp_replace(path, '^(/v1/[^/]+/)[^/]+', '\1:id');
                    IF EXISTS (SELECT 1 FROM envoisms.api_endpoints e WHERE e.template IN (path, tmpl)) THEN
                        out_headers := out_headers || jsonb_build_object('Allow',
                            (SELECT string_agg(DISTINCT e.method, ', ') FROM envoisms.api_endpoints e
                              WHERE e.template IN (path, tmpl)));
                        PERFORM envoisms.raise_error('METHOD_NOT_ALLOWED', format('%s is not allowed on %s', method, path));
                    END IF;
                    PERFORM envoisms.raise_error('NOT_FOUND', format('no route for %s %s', left(method, 10), left(path, 200)));
                END IF;
                PERFORM envoisms.raise_error('FORBIDDEN',
                    format('this API key lacks the "%s" permission', r.permission));
            END IF;
        END IF;

        -- 4. the request (one row constructor: each field assignment is a statement of its own)
        req := ROW(method, path, r.template, req.id,
                   CASE WHEN query IS NULL OR query = '' THEN '{}' ELSE envoisms.query_parse(query) END,
                   '{}', body, hdr, client_ip, k.account_id, k.api_key_id, k.key_prefix = 'env_test',
                   k.permissions)::envoisms.api_request;
        IF method IN ('POST', 'PATCH', 'PUT') AND body IS NOT NULL THEN
            -- parsed once, and checked without a cast that could raise (so a
            -- bad body needs no exception block); blanks only: no body
            b := envoisms.body_jsonb(body);
            IF b.problem IS NOT NULL THEN
                IF b.problem = 'nul' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'strings must not contain NUL (\u0000) characters');
                ELSIF b.problem = 'number' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'a number in the request body is out of range (beyond 1e±1000)');
                ELSIF b.problem = 'object' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the request body must be a JSON object');
                END IF;
                PERFORM envoisms.raise_error('INVALID_JSON', 'the request body is not valid JSON');
            END IF;
            req.body := coalesce(b.value, '{}');
        END IF;

        -- 5. Idempotency-Key on a POST: replay a stored reply, or run and store
        IF method = 'POST' AND k.api_key_id IS NOT NULL AND hdr ? 'idempotency-key' THEN
            rep := envoisms.idempotency_lookup(req, hdr->>'idempotency-key');
            IF rep.status IS NULL THEN
                rep := envoisms.api_call(r.handler, req);
                PERFORM envoisms.idempotency_store(req, hdr->>'idempotency-key', rep);
            END IF;
        ELSE
            rep := envoisms.api_call(r.handler, req);
        END IF;
        rep.headers := out_headers || coalesce(rep.headers, '{}');
        RETURN NEXT rep;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                err_column = COLUMN_NAME, err_detail = PG_EXCEPTION_DETAIL,
                                err_context = PG_EXCEPTION_CONTEXT;
    END;

    SELECT e.code, e.http_status INTO err_code, err_http FROM envoisms.error_codes e WHERE e.sqlstate = err_state;
    IF err_code IS NULL THEN
        IF err_state IN ('54000', '54001') THEN
            err_code := 'PAYLOAD_TOO_LARGE';
            err_http := 413;
            err_message := 'the request is too large or too deeply nested';
        ELSIF err_state IN ('57014', '40001', '40P01', '55P03') THEN
            err_code := 'SERVICE_UNAVAILABLE';
            err_http := 503;
            err_message := 'the request could not complete in time; retry later';
            out_headers := out_headers || '{"Retry-After": "1"}';
        ELSE
            RAISE WARNING 'envoisms.api % %: unexpected error %: %', left(method, 10), left(path, 200), err_state, err_message
                USING DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_context, '');
            err_code := 'INTERNAL_ERROR';
            err_http := 500;
            err_message := 'an unexpected error occurred; it was logged';
        END IF;
    END IF;
    RETURN NEXT ROW(err_http, out_headers, envoisms.error_envelope(err_code, err_message, err_column))::envoisms.api_reply;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_messages_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql AS $$   -- no SET search_path: hot path, see message_send
DECLARE
    f record;
BEGIN
    -- the body read in one C call: each jsonb operator in an expression
    -- here cost its set-up on every request
    f := envoisms.message_request(req.body);
    IF f.bad_field IS NOT NULL THEN
        PERFORM envoisms.raise_error(CASE f.bad_field WHEN 'to' THEN 'INVALID_PHONE' ELSE 'VALIDATION_ERROR' END,
            CASE f.bad_field WHEN 'metadata' THEN 'metadata must be an object'
                             WHEN 'buttons' THEN 'buttons must be an array'
                             WHEN 'to' THEN 'to must be E.164 format, for example +212612345678'
                             WHEN 'cascade' THEN 'cascade must be true or false'
                             ELSE format('%s must be a string', f.bad_field) END,
            f.bad_field);
    END IF;
    RETURN envoisms.reply(201, envoisms.message_send(req.account_id, f."to", f.message, f."from", f.channel,
                                                     f.cascade, f.metadata, f.buttons, req.api_key_id, req.sandbox));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.inbound_receive(carrier_id text, from_number text, to_number text, body text,
                                         carrier_ref text DEFAULT NULL, channel text DEFAULT 'sms')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    acc text;
    ours text;
    sender text;
    id text;
    seg record;
    msg envoisms.messages;
    keyword text;
BEGIN
    channel := coalesce(channel, 'sms');
    IF channel NOT IN ('sms', 'whatsapp') THEN
        RAISE EXCEPTION 'inbound channel must be "sms" or "whatsapp", not "%"', channel
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    body := coalesce(body, '');
    -- Numbers as the carrier gave them, or their E.164 form (national Moroccan numbers).
    sender := coalesce(envoisms.phone_e164(from_number, 'MA'), nullif(btrim(from_number), ''), 'unknown');
    ours := btrim(coalesce(to_number, ''));
    SELECT n.account_id, n.number INTO acc, ours
      FROM envoisms.inbound_numbers n
     WHERE n.channel = inbound_receive.channel
       AND n.number IN (ours, ltrim(ours, '+'), '+' || ltrim(ours, '+'), coalesce(envoisms.phone_e164(ours, 'MA'), ours))
     LIMIT 1;
    IF acc IS NULL THEN
        INSERT INTO envoisms.inbound_unmatched (carrier_id, from_number, to_number, body, carrier_ref, channel)
        VALUES (inbound_receive.carrier_id, sender, to_number, body, carrier_ref, channel);
        RETURN NULL;
    END IF;

    IF carrier_ref IS NOT NULL THEN
        SELECT m.message_id INTO id FROM envoisms.messages m
         WHERE m.account_id = acc AND m.direction = 'inbound'
           AND m.carrier_id = inbound_receive.carrier_id AND m.carrier_ref = inbound_receive.carrier_ref
         LIMIT 1;
        IF id IS NOT NULL THEN
            RETURN id;
        END IF;
    END IF;

    id := envoisms.new_id('msg');
    SELECT * INTO seg FROM envoisms.sms_segments(body);
    INSERT INTO envoisms.messages (account_id, message_id, direction, to_number, from_number, sender_id, channel,
                                   body, encoding, segments, status, carrier_id, carrier_ref)
    VALUES (acc, id, 'inbound', ours, sender, left(sender, 32), channel,
            body, seg.encoding, least(seg.segments, 100), 'received', inbound_receive.carrier_id, carrier_ref)
    RETURNING * INTO msg;
    PERFORM envoisms.message_announce(msg);

    keyword := envoisms.inbound_keyword(body);
    IF keyword = 'stop' AND sender ~ '^\+[1-9][0-9]{6,14}$' THEN
        INSERT INTO envoisms.optouts (account_id, phone, source, reason)
        VALUES (acc, sender, 'inbound', left(format('inbound "%s" (%s)', body, id), 200))
        ON CONFLICT DO NOTHING;
    ELSIF keyword = 'start' THEN
        DELETE FROM envoisms.optouts o WHERE o.account_id = acc AND o.phone = sender;
    END IF;
    RETURN id;
END
$$;

-- ---- 3. inbound messages are announced by inbound_receive(); a request
-- body is checked and parsed by body_jsonb() in one pass
DROP TRIGGER messages_received ON envoisms.messages;
DROP FUNCTION envoisms.body_problem(text);

-- ---- 4. nothing is open to PUBLIC (as 95_grants.sql does at install)
REVOKE ALL ON FUNCTION envoisms.account_lookup(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.sender_id_valid(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.message_announce(envoisms.messages) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.body_jsonb(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.message_request(jsonb) FROM PUBLIC;
