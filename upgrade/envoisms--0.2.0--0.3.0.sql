-- envoisms 0.2.0 -> 0.3.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.3.0 release: its definitions are those of src/sql at 0.3.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.3.0'" to load this file. \quit

-- ---- 1. new C helpers on the send path: the charge rule of a message, the
-- reply of a send, the time format, the hash of a Bearer key, the encoding
-- and segments of a body as plain values, and the per-backend caches of
-- unit prices, routes and API keys with the triggers that make every backend forget
-- them when their tables change; the button check, which now holds the
-- rule that buttons are for WhatsApp only too

CREATE FUNCTION envoisms.message_charge_valid(charged_mad numeric, refunded_mad numeric, sandbox boolean)
RETURNS boolean AS 'MODULE_PATHNAME', 'message_charge_valid' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.message_send_reply(id text, "to" text, channel text, cascade boolean, cost_eur numeric,
                                            cost_mad numeric, segments int, created_at timestamptz) RETURNS jsonb
AS 'MODULE_PATHNAME', 'message_send_reply' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.api_key_hash(authorization text) RETURNS text
AS 'MODULE_PATHNAME', 'api_key_hash' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.sms_encoding(body text) RETURNS text
AS 'MODULE_PATHNAME', 'sms_encoding' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.sms_segment_count(body text) RETURNS int
AS 'MODULE_PATHNAME', 'sms_segment_count' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION envoisms.cache_forget() RETURNS trigger
AS 'MODULE_PATHNAME', 'cache_forget' LANGUAGE C;

CREATE FUNCTION envoisms.unit_price(account_id text, channel text, currency text) RETURNS numeric
AS 'MODULE_PATHNAME', 'unit_price' LANGUAGE C STRICT STABLE;

CREATE FUNCTION envoisms.api_key_lookup(key_hash text, OUT account_id text, OUT api_key_id text, OUT key_prefix text,
                                        OUT permissions text[], OUT ip_whitelist cidr[], OUT rate_limit int,
                                        OUT last_used_at timestamptz, OUT account_status text)
AS 'MODULE_PATHNAME', 'api_key_lookup' LANGUAGE C STABLE;

CREATE FUNCTION envoisms.api_route(method text, path text, OUT handler regprocedure, OUT permission text,
                                   OUT template text, OUT public boolean, OUT by_template boolean)
AS 'MODULE_PATHNAME', 'api_route' LANGUAGE C STRICT STABLE;

CREATE FUNCTION envoisms.check_buttons(buttons jsonb, channel text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    b jsonb;
    i int := 0;
    t text;
    label text;
    v text;
    result jsonb := '[]';
BEGIN
    IF buttons IS NULL OR buttons = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(buttons) <> 'array' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
    END IF;
    IF jsonb_array_length(buttons) > 3 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons has at most 3 entries', 'buttons');
    END IF;
    FOR b IN SELECT value FROM jsonb_array_elements(buttons) LOOP
        i := i + 1;
        IF jsonb_typeof(b) <> 'object' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s] must be an object', i - 1), 'buttons');
        END IF;
        t := b->>'type';
        IF t IS NULL OR t NOT IN ('copy', 'url', 'call') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('buttons[%s].type must be "copy", "url" or "call"', i - 1), 'buttons');
        END IF;
        label := coalesce(b->>'text', b->>'title', b->>'label');
        v := coalesce(b->>'value', b->>'code', b->>'url', b->>'phone_number', b->>'phone');
        IF label IS NULL OR length(label) NOT BETWEEN 1 AND 25 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].text must be 1 to 25 characters', i - 1), 'buttons');
        END IF;
        IF t = 'url' AND (v IS NULL OR v !~ '^https?://[^\s]+$' OR length(v) > 2000) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value must be an http(s) URL', i - 1), 'buttons');
        ELSIF t = 'call' THEN
            v := envoisms.phone_e164(v);
            IF v IS NULL THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value must be an E.164 phone number', i - 1), 'buttons');
            END IF;
        ELSIF t = 'copy' AND (v IS NULL OR length(v) NOT BETWEEN 1 AND 15) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('buttons[%s].value (the code to copy) must be 1 to 15 characters', i - 1), 'buttons');
        END IF;
        result := result || jsonb_build_object('type', t, 'text', label, 'value', v);
    END LOOP;
    IF channel <> 'whatsapp' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons are only available on the whatsapp channel', 'buttons');
    END IF;
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.iso_time(ts timestamptz) RETURNS text
AS 'MODULE_PATHNAME', 'iso_time' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE TRIGGER prices_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.prices
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

CREATE TRIGGER api_endpoints_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

CREATE TRIGGER api_keys_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

CREATE TRIGGER accounts_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- ---- 2. the messages CHECK calls the C rule (a table CHECK is re-planned by
-- every INSERT and UPDATE; one C call is the cheapest to re-plan). Same rule.
ALTER TABLE envoisms.messages DROP CONSTRAINT messages_check;
ALTER TABLE envoisms.messages ADD CONSTRAINT messages_check
    CHECK (envoisms.message_charge_valid(charged_mad, refunded_mad, sandbox));

-- ---- 3. changed function bodies (CREATE OR REPLACE keeps their grants);
-- check_buttons now takes the channel (its one-argument form is gone)

DROP FUNCTION envoisms.check_buttons(jsonb);

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
    acc_status text;
    acc_channels text[];
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
    SELECT a.status, a.channels, p.mad, envoisms.sms_encoding(m.body), n.units, p.mad * n.units, p.eur * n.units,
           NOT skip_opt_out AND EXISTS (SELECT 1 FROM envoisms.optouts o
                                         WHERE o.account_id = a.account_id AND o.phone = e164)
      INTO acc_status, acc_channels, unit_mad, enc, n_segments, cost_mad, cost_eur, opted_out
      FROM envoisms.accounts a,
           LATERAL (SELECT envoisms.unit_price(a.account_id, message_send.channel, 'MAD') AS mad,
                           envoisms.unit_price(a.account_id, message_send.channel, 'EUR') AS eur) p,
           LATERAL (SELECT CASE WHEN length(message) <= 1600 THEN message END AS body) m,
           LATERAL (SELECT CASE WHEN message_send.channel = 'whatsapp' THEN 1
                                ELSE envoisms.sms_segment_count(m.body) END AS units) n
     WHERE a.account_id = message_send.account_id;
    -- one test for the common case; the checks below raise the precise error, in order
    IF acc_status IS DISTINCT FROM 'active' OR NOT channel = ANY (acc_channels) OR unit_mad IS NULL
       OR e164 IS NULL OR left(btrim("to"), 1) <> '+' OR message IS NULL OR length(message) NOT BETWEEN 1 AND 1600 THEN
        PERFORM envoisms.check_account_channel(account_id, channel);
        PERFORM envoisms.check_phone("to");
        PERFORM envoisms.check_body(message);
    END IF;
    sender := coalesce("from", 'ENVOISMS');
    IF sender <> 'ENVOISMS' THEN
        sender := envoisms.check_sender_id(sender);
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

CREATE OR REPLACE FUNCTION envoisms.campaign_create(account_id text, name text, body text DEFAULT NULL,
                                         template_id text DEFAULT NULL, channel text DEFAULT 'sms',
                                         list_id text DEFAULT NULL, sender_id text DEFAULT NULL,
                                         scheduled_at timestamptz DEFAULT NULL, buttons jsonb DEFAULT NULL,
                                         metadata jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                         sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    throttle numeric;
    btns jsonb;
BEGIN
    channel := coalesce(channel, 'sms');
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 200 characters)', 'name');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, channel);
    IF body IS NULL AND template_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'body or template_id is required', 'body');
    ELSIF body IS NOT NULL AND template_id IS NOT NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give body or template_id, not both', 'template_id');
    END IF;
    IF body IS NOT NULL THEN
        PERFORM envoisms.check_body(body, 'body');
    ELSE
        SELECT * INTO t FROM envoisms.templates x
         WHERE x.account_id = campaign_create.account_id AND x.template_id = campaign_create.template_id;
        IF NOT FOUND THEN
            PERFORM envoisms.raise_error('NOT_FOUND', 'template_id: no such template', 'template_id');
        ELSIF t.status <> 'approved' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', format('template_id: the template is %s, not approved', t.status), 'template_id');
        ELSIF t.channel <> channel THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('template_id: the template is for %s, the campaign for %s', t.channel, channel), 'template_id');
        END IF;
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    BEGIN
        sender_id := envoisms.check_sender_id(sender_id);
    EXCEPTION WHEN SQLSTATE 'EV400' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'sender_id must be an alphanumeric sender id of 1 to 11 characters or a number of 3 to 15 digits', 'sender_id');
    END;
    IF scheduled_at IS NOT NULL AND scheduled_at <= now() THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'scheduled_at must be in the future', 'scheduled_at');
    END IF;
    btns := envoisms.check_buttons(buttons, channel);
    IF metadata IS NOT NULL AND (jsonb_typeof(metadata) <> 'object' OR octet_length(metadata::text) > 8192) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object of at most 8 KB', 'metadata');
    END IF;
    throttle := envoisms.campaign_throttle(metadata);
    INSERT INTO envoisms.campaigns (account_id, campaign_id, name, channel, list_id, template_id, body, sender_id,
                                    buttons, metadata, status, scheduled_at, throttle_per_minute, sandbox, api_key_id)
    VALUES (account_id, envoisms.new_id('cmp'), btrim(name), channel, list_id, template_id, body, sender_id,
            btns, metadata, CASE WHEN scheduled_at IS NULL THEN 'draft' ELSE 'scheduled' END, scheduled_at,
            throttle, coalesce(sandbox, false), api_key_id)
    RETURNING * INTO c;
    RETURN envoisms.campaign_json(c);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_messages_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql AS $$   -- no SET search_path: hot path, see message_send
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') OR jsonb_typeof(b->'buttons') NOT IN ('array', 'null')
       OR jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
        IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
        ELSIF jsonb_typeof(b->'buttons') NOT IN ('array', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
        END IF;
        PERFORM envoisms.raise_error('INVALID_PHONE', 'to must be E.164 format, for example +212612345678', 'to');
    END IF;
    -- string fields are read inline; body_text() only runs to refuse another type
    RETURN envoisms.reply(201, envoisms.message_send(
        req.account_id,
        CASE jsonb_typeof(b->'to') WHEN 'string' THEN b->>'to' ELSE envoisms.body_text(b, 'to') END,
        CASE jsonb_typeof(b->'message') WHEN 'string' THEN b->>'message'
             ELSE coalesce(envoisms.body_text(b, 'message'), envoisms.body_text(b, 'body')) END,
        CASE WHEN b->'from' IS NULL THEN 'ENVOISMS' WHEN jsonb_typeof(b->'from') = 'string' THEN b->>'from'
             ELSE coalesce(envoisms.body_text(b, 'from'), 'ENVOISMS') END,
        CASE WHEN b->'channel' IS NULL THEN 'sms' WHEN jsonb_typeof(b->'channel') = 'string' THEN b->>'channel'
             ELSE coalesce(envoisms.body_text(b, 'channel'), 'sms') END,
        b->'cascade' IS NOT NULL AND envoisms.body_bool(b, 'cascade', false),
        nullif(b->'metadata', 'null'),
        nullif(b->'buttons', 'null'),
        req.api_key_id,
        req.sandbox));
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
    problem text;
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
        IF method IN ('POST', 'PATCH', 'PUT') AND body IS NOT NULL AND btrim(body, E' \t\r\n') <> '' THEN
            -- checked before the cast, so that a bad body needs no exception block
            problem := envoisms.body_problem(body);
            IF problem IS NOT NULL THEN
                IF problem = 'nul' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'strings must not contain NUL (\u0000) characters');
                ELSIF problem = 'number' THEN
                    PERFORM envoisms.raise_error('VALIDATION_ERROR', 'a number in the request body is out of range (beyond 1e±1000)');
                END IF;
                PERFORM envoisms.raise_error('INVALID_JSON', 'the request body is not valid JSON');
            END IF;
            req.body := body::jsonb;
            IF jsonb_typeof(req.body) <> 'object' THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the request body must be a JSON object');
            END IF;
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

-- ---- 4. nothing is open to PUBLIC (as 95_grants.sql does at install)
REVOKE ALL ON FUNCTION envoisms.message_charge_valid(numeric, numeric, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.message_send_reply(text, text, text, boolean, numeric, numeric, int, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_key_hash(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.sms_encoding(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.sms_segment_count(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.cache_forget() FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.unit_price(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_key_lookup(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_route(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.check_buttons(jsonb, text) FROM PUBLIC;
