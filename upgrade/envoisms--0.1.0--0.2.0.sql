-- envoisms 0.1.0 -> 0.2.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.2.0 release: its definitions are those of src/sql at 0.2.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.2.0'" to load this file. \quit

-- ---- 1. the value rules of messages and balance buckets become domains
-- (a table CHECK is parsed again by every insert and update; a domain's rule
-- is planned once). Same rules; the two triggers whose WHEN reads a column
-- whose type changes are dropped and created again.

CREATE DOMAIN envoisms.bucket_number AS int CHECK (VALUE >= 0);
CREATE DOMAIN envoisms.bucket_balance AS numeric(16,4) CHECK (VALUE >= 0);
CREATE DOMAIN envoisms.message_direction AS text CHECK (VALUE IN ('outbound', 'inbound'));
CREATE DOMAIN envoisms.message_channel AS text CHECK (VALUE IN ('sms', 'whatsapp'));
CREATE DOMAIN envoisms.message_encoding AS text CHECK (VALUE IN ('gsm7', 'ucs2'));
CREATE DOMAIN envoisms.message_status AS text
    CHECK (VALUE IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'received'));
CREATE DOMAIN envoisms.segment_count AS int CHECK (VALUE BETWEEN 0 AND 100);
CREATE DOMAIN envoisms.amount_mad AS numeric(12,4) CHECK (VALUE >= 0);
CREATE DOMAIN envoisms.amount_eur AS numeric(12,5) CHECK (VALUE >= 0);

-- account_balance's SQL body depends on balance_buckets.balance_mad
DROP FUNCTION envoisms.account_balance(text);
DROP TRIGGER messages_status_changed ON envoisms.messages;
DROP TRIGGER messages_received ON envoisms.messages;
ALTER TABLE envoisms.messages
    DROP CONSTRAINT messages_channel_check, DROP CONSTRAINT messages_charged_mad_check,
    DROP CONSTRAINT messages_check, DROP CONSTRAINT messages_check1,
    DROP CONSTRAINT messages_cost_eur_check, DROP CONSTRAINT messages_cost_mad_check,
    DROP CONSTRAINT messages_direction_check, DROP CONSTRAINT messages_encoding_check,
    DROP CONSTRAINT messages_segments_check, DROP CONSTRAINT messages_status_check,
    ALTER direction TYPE envoisms.message_direction, ALTER channel TYPE envoisms.message_channel,
    ALTER encoding TYPE envoisms.message_encoding, ALTER segments TYPE envoisms.segment_count,
    ALTER status TYPE envoisms.message_status, ALTER cost_mad TYPE envoisms.amount_mad,
    ALTER cost_eur TYPE envoisms.amount_eur, ALTER charged_mad TYPE envoisms.amount_mad,
    ALTER refunded_mad TYPE envoisms.amount_mad,
    ADD CONSTRAINT messages_check CHECK (refunded_mad <= charged_mad AND (NOT sandbox OR charged_mad = 0));
ALTER TABLE envoisms.balance_buckets
    DROP CONSTRAINT balance_buckets_bucket_check, DROP CONSTRAINT balance_buckets_balance_mad_check,
    ALTER bucket TYPE envoisms.bucket_number, ALTER balance_mad TYPE envoisms.bucket_balance;

CREATE TRIGGER messages_status_changed
    AFTER UPDATE OF status ON envoisms.messages
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION envoisms.messages_status_changed();

CREATE TRIGGER messages_received
    AFTER INSERT ON envoisms.messages
    FOR EACH ROW WHEN (NEW.direction = 'inbound')
    EXECUTE FUNCTION envoisms.messages_status_changed();

CREATE FUNCTION envoisms.account_balance(account_id text) RETURNS numeric
LANGUAGE sql STABLE
RETURN (SELECT sum(b.balance_mad) FROM envoisms.balance_buckets b WHERE b.account_id = account_balance.account_id);

-- ---- 2. functions whose result type changed: dropped and created again
DROP FUNCTION envoisms.wake_dispatcher();
DROP FUNCTION envoisms.wake_webhooks();
DROP FUNCTION envoisms.channel_prices(text, text);

CREATE FUNCTION envoisms.wake_dispatcher() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_dispatcher' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_dispatcher() IS
'Wake the dispatchers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.wake_webhooks() RETURNS boolean
AS 'MODULE_PATHNAME', 'wake_webhooks' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION envoisms.wake_webhooks() IS
'Wake the webhook workers when the calling transaction commits; false (and nothing happens) without the preload';

CREATE FUNCTION envoisms.channel_prices(account_id text, channel text)
RETURNS TABLE (mad numeric, eur numeric)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'MAD' AND p.account_id = '*')),
           coalesce(max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id <> '*'),
                    max(p.unit_price) FILTER (WHERE p.currency = 'EUR' AND p.account_id = '*'))
      FROM envoisms.prices p
     WHERE p.account_id IN ($1, '*') AND p.channel = $2
$$;

-- ---- 3. new functions and the OTP body purge

CREATE FUNCTION envoisms.message_bulk_items(ids text[], numbers text[]) RETURNS jsonb
AS 'MODULE_PATHNAME', 'message_bulk_items' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.headers_normalize(headers jsonb) RETURNS jsonb
AS 'MODULE_PATHNAME', 'headers_normalize' LANGUAGE C IMMUTABLE;

CREATE FUNCTION envoisms.body_problem(body text) RETURNS text
AS 'MODULE_PATHNAME', 'body_problem' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.messages_purge_otp_body() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    NEW.body := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_purge_otp_body
    BEFORE UPDATE OF status ON envoisms.messages
    FOR EACH ROW
    WHEN (NEW.status IN ('delivered', 'failed', 'expired') AND NEW.body IS NOT NULL
          AND NEW.metadata->>'purpose' = 'otp' AND NEW.metadata ? 'verify_session_id')
    EXECUTE FUNCTION envoisms.messages_purge_otp_body();

-- ---- 4. functions with new bodies

CREATE OR REPLACE FUNCTION envoisms.message_send(account_id text, "to" text, message text,
                                      "from" text DEFAULT 'ENVOISMS', channel text DEFAULT 'sms',
                                      cascade boolean DEFAULT false, metadata jsonb DEFAULT NULL,
                                      buttons jsonb DEFAULT NULL, api_key_id text DEFAULT NULL,
                                      sandbox boolean DEFAULT false, campaign_id text DEFAULT NULL,
                                      skip_opt_out boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
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
    debited boolean;
    woken boolean;
    created timestamptz := now();
BEGIN
    channel := coalesce(channel, 'sms');
    cascade := coalesce(cascade, false);
    IF cascade THEN
        -- cascade means WhatsApp first, SMS on failure, whatever channel says
        PERFORM envoisms.check_account_channel(account_id, 'sms');
        channel := 'whatsapp';
    END IF;
    SELECT a.status, a.channels, p.mad, s.encoding, n.units, p.mad * n.units, p.eur * n.units,
           NOT skip_opt_out AND EXISTS (SELECT 1 FROM envoisms.optouts o
                                         WHERE o.account_id = a.account_id AND o.phone = e164)
      INTO acc_status, acc_channels, unit_mad, enc, n_segments, cost_mad, cost_eur, opted_out
      FROM envoisms.accounts a
           CROSS JOIN LATERAL envoisms.channel_prices(a.account_id, message_send.channel) p
           LEFT JOIN envoisms.sms_segments(CASE WHEN length(message) <= 1600 THEN message END) s ON true
           CROSS JOIN LATERAL (SELECT CASE WHEN message_send.channel = 'whatsapp' THEN 1 ELSE s.segments END AS units) n
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
        btns := envoisms.check_buttons(buttons);
        IF btns IS NOT NULL AND channel <> 'whatsapp' THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons are only available on the whatsapp channel', 'buttons');
        END IF;
        IF opted_out THEN
            PERFORM envoisms.check_not_opted_out(account_id, e164);
        END IF;
    END IF;

    debited := sandbox OR cost_mad <= 0;
    LOOP
        WITH debit AS (
            UPDATE envoisms.balance_buckets b SET balance_mad = b.balance_mad - cost_mad
             WHERE NOT debited AND b.account_id = message_send.account_id
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
               n_segments, cost_mad, cost_eur, CASE WHEN sandbox THEN 0 ELSE cost_mad END, sandbox,
               metadata, btns, created, created, created
         WHERE debited OR EXISTS (SELECT 1 FROM debit);
        EXIT WHEN FOUND;
        -- the home bucket is held or short: another bucket, or rebalance, or INSUFFICIENT_BALANCE
        PERFORM envoisms.balance_debit(account_id, cost_mad);
        debited := true;
    END LOOP;
    woken := envoisms.wake_dispatcher();   -- an assignment, not PERFORM: no SPI statement
    RETURN jsonb_build_object(
        'id', id, 'to', e164, 'channel', channel, 'cascade', cascade, 'status', 'queued',
        'cost', jsonb_build_object('eur', envoisms.money(cost_eur), 'mad', envoisms.money(cost_mad)),
        'segments', n_segments, 'created_at', envoisms.iso_time(created));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.message_send_bulk(account_id text, messages jsonb, "from" text DEFAULT 'ENVOISMS',
                                           channel text DEFAULT 'sms', api_key_id text DEFAULT NULL,
                                           sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    batch text := envoisms.new_id('batch');
    sender text;
    ids text[];
    numbers text[];
    bodies text[];
    metas jsonb[];
    encodings text[];
    segments int[];
    bad_ord int;
    bad_error text;
    bad_field text;
    bad_detail text;
    price record;
    total int;
    total_units int;
    cost_mad numeric;
    cost_eur numeric;
    created timestamptz := now();
    woken boolean;
BEGIN
    channel := coalesce(channel, 'sms');
    price := envoisms.check_account_channel(account_id, channel);
    sender := envoisms.check_sender_id("from");
    IF messages IS NULL OR jsonb_typeof(messages) <> 'array' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'messages must be an array', 'messages');
    END IF;
    total := jsonb_array_length(messages);
    IF total = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'messages must hold 1 to 10000 entries', 'messages');
    ELSIF total > 10000 THEN
        PERFORM envoisms.raise_error('PAYLOAD_TOO_LARGE',
            format('a bulk send holds at most 10000 messages; got %s', total), 'messages');
    END IF;

    -- Validate every entry in one set-based pass into column arrays (the
    -- rows to insert), which also gives the first bad entry and the units.
    SELECT array_agg(x.id), array_agg(x.e164), array_agg(x.body), array_agg(x.meta), array_agg(x.encoding),
           array_agg(x.segments),
           sum(CASE WHEN channel = 'whatsapp' THEN 1 ELSE x.segments END),
           -- the first bad entry
           (array_agg(x.ord) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.error) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.field) FILTER (WHERE x.error IS NOT NULL))[1],
           (array_agg(x.detail) FILTER (WHERE x.error IS NOT NULL))[1]
      INTO ids, numbers, bodies, metas, encodings, segments, total_units, bad_ord, bad_error, bad_field, bad_detail
      FROM (SELECT v.ord, envoisms.new_id('msg') AS id, v.e164, v.body, v.meta, s.encoding, s.segments,
                   CASE WHEN v.kind <> 'object' THEN 'VALIDATION_ERROR'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+' THEN 'INVALID_PHONE'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600 THEN 'VALIDATION_ERROR'
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'VALIDATION_ERROR'
                        WHEN v.opted_out THEN 'OPTED_OUT' END AS error,
                   CASE WHEN v.kind <> 'object' THEN 'messages'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+' THEN 'to'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600 THEN 'message'
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'metadata'
                        ELSE 'to' END AS field,
                   CASE WHEN v.kind <> 'object' THEN 'must be an object'
                        WHEN v.raw_to IS NULL OR v.e164 IS NULL OR left(btrim(v.raw_to), 1) <> '+'
                             THEN 'to must be E.164 format, for example +212612345678'
                        WHEN v.body IS NULL OR length(v.body) NOT BETWEEN 1 AND 1600
                             THEN format('message must be 1 to 1600 characters (got %s)', coalesce(length(v.body), 0))
                        WHEN v.meta IS NOT NULL AND jsonb_typeof(v.meta) <> 'object' THEN 'metadata must be an object'
                        ELSE 'the recipient opted out' END AS detail
              FROM (SELECT w.*, w.e164 IS NOT NULL AND w.e164 IN (   -- hashed: one read of the account's opt-outs
                               SELECT o.phone FROM envoisms.optouts o
                                WHERE o.account_id = message_send_bulk.account_id) AS opted_out
                      FROM (SELECT e.ord::int AS ord, jsonb_typeof(e.value) AS kind,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'to' END AS raw_to,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN envoisms.phone_e164(e.value->>'to') END AS e164,
                                   CASE WHEN jsonb_typeof(e.value) = 'object'
                                        THEN coalesce(e.value->>'message', e.value->>'body') END AS body,
                                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN nullif(e.value->'metadata', 'null') END AS meta
                              FROM jsonb_array_elements(messages) WITH ORDINALITY AS e(value, ord)
                            OFFSET 0) w          -- OFFSET 0: evaluate phone_e164 once per entry, not per reference
                    OFFSET 0) v
              LEFT JOIN LATERAL envoisms.sms_segments(CASE WHEN length(v.body) <= 1600 THEN v.body END) s ON true
             ORDER BY v.ord                      -- the aggregates above take the entries in request order
            OFFSET 0) x;

    IF bad_ord IS NOT NULL THEN
        PERFORM envoisms.raise_error(bad_error, format('messages[%s]: %s', bad_ord - 1, bad_detail),
                                     format('messages[%s].%s', bad_ord - 1, bad_field));
    END IF;

    cost_mad := price.mad * total_units;
    cost_eur := price.eur * total_units;
    IF NOT sandbox THEN
        PERFORM envoisms.balance_debit(account_id, cost_mad);
    END IF;

    INSERT INTO envoisms.batches (account_id, batch_id, channel, total, cost_mad, cost_eur, created_at)
    VALUES (account_id, batch, channel, total, cost_mad, cost_eur, created);

    INSERT INTO envoisms.messages (account_id, message_id, api_key_id, batch_id, to_number, sender_id, channel,
                                   body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                   metadata, created_at, updated_at, next_attempt_at)
    SELECT message_send_bulk.account_id, u.id, api_key_id, batch, u.to_number, sender, channel,
           u.body, u.encoding, n.units, price.mad * n.units, price.eur * n.units,
           CASE WHEN sandbox THEN 0 ELSE price.mad * n.units END, sandbox, u.metadata, created, created, created
      FROM unnest(ids, numbers, bodies, metas, encodings, segments) AS u(id, to_number, body, metadata, encoding, segments)
     CROSS JOIN LATERAL (SELECT CASE WHEN channel = 'whatsapp' THEN 1 ELSE u.segments END AS units) n;

    woken := envoisms.wake_dispatcher();   -- an assignment, not PERFORM: no SPI statement
    RETURN jsonb_build_object(
        'batch_id', batch, 'total', total, 'channel', channel,
        'estimated_cost', jsonb_build_object('eur', envoisms.money(cost_eur), 'mad', envoisms.money(cost_mad)),
        'messages', envoisms.message_bulk_items(ids, numbers));
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
    auth text;
    key_account text;
    key_id text;
    key_prefix text;
    key_permissions text[];
    key_ips cidr[];
    key_limit int;
    key_last_used timestamptz;
    account_status text;
    route_handler regprocedure;
    route_permission text;
    route_template text;
    route_public boolean;
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
        -- 1. route: the exact path, else the path with its third segment as :id
        SELECT e.handler, e.permission, e.template, e.public
          INTO route_handler, route_permission, route_template, route_public
          FROM envoisms.api_endpoints e WHERE e.method = api.method AND e.template = path;
        IF route_handler IS NULL THEN
            tmpl := regexp_replace(path, '^(/v1/[^/]+/)[^/]+', '\1:id');
            SELECT e.handler, e.permission, e.template, e.public
              INTO route_handler, route_permission, route_template, route_public
              FROM envoisms.api_endpoints e WHERE e.method = api.method AND e.template = tmpl;
            req.id := envoisms.url_decode(split_part(path, '/', 4));
        END IF;

        IF NOT coalesce(route_public, false) THEN
            -- 2. authenticate: every failure gives the same answer (no oracle),
            -- and an unknown route is not revealed before the key is checked
            auth := hdr->>'authorization';
            IF auth ~* '^bearer\s+env_(live|test)_[0-9a-f]{48}\s*$' THEN
                SELECT ak.account_id, ak.api_key_id, ak.key_prefix, ak.permissions, ak.ip_whitelist, ak.rate_limit,
                       ak.last_used_at, a.status
                  INTO key_account, key_id, key_prefix, key_permissions, key_ips, key_limit, key_last_used, account_status
                  FROM envoisms.api_keys ak JOIN envoisms.accounts a ON a.account_id = ak.account_id
                 WHERE ak.key_hash = envoisms.sha256_hex(btrim(substr(auth, 7)))
                   AND ak.active AND ak.revoked_at IS NULL;
            END IF;
            IF key_id IS NULL OR account_status = 'closed'
               OR (cardinality(key_ips) > 0 AND (client_ip IS NULL OR NOT client_ip <<= ANY (key_ips))) THEN
                PERFORM envoisms.raise_error('UNAUTHORIZED',
                    'invalid or missing API key: send Authorization: Bearer env_live_... or env_test_... from an allowed address');
            END IF;

            -- 3. rate limit (shared memory, no row per request). X-Envoisms-Key-Id
            -- names the key for the gateway's access log (which strips it).
            rl := envoisms.ratelimit_take(key_id, key_limit);
            out_headers := jsonb_build_object('X-Envoisms-Key-Id', key_id);
            IF key_limit IS NOT NULL THEN
                out_headers := out_headers || jsonb_build_object('X-RateLimit-Limit', key_limit::text,
                                                                 'X-RateLimit-Remaining', rl.remaining::text);
            END IF;
            IF NOT rl.allowed THEN
                out_headers := out_headers || jsonb_build_object('Retry-After', rl.retry_after::text);
                PERFORM envoisms.raise_error('RATE_LIMITED',
                    format('rate limit of %s requests per minute exceeded; retry in %s s', key_limit, rl.retry_after));
            END IF;
            -- last_used_at at most once a minute, and never waiting: a request
            -- that finds the key row held by another request leaves it to that one
            IF key_last_used IS NULL OR key_last_used < now() - interval '1 minute' THEN
                UPDATE envoisms.api_keys SET last_used_at = now()
                 WHERE ctid = (SELECT k.ctid FROM envoisms.api_keys k
                                WHERE k.account_id = key_account AND k.api_key_id = key_id
                                  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
                                FOR UPDATE SKIP LOCKED);
            END IF;

            IF route_handler IS NULL THEN
                IF EXISTS (SELECT 1 FROM envoisms.api_endpoints e WHERE e.template IN (path, tmpl)) THEN
                    out_headers := out_headers || jsonb_build_object('Allow',
                        (SELECT string_agg(DISTINCT e.method, ', ') FROM envoisms.api_endpoints e
                          WHERE e.template IN (path, tmpl)));
                    PERFORM envoisms.raise_error('METHOD_NOT_ALLOWED', format('%s is not allowed on %s', method, path));
                END IF;
                PERFORM envoisms.raise_error('NOT_FOUND', format('no route for %s %s', left(method, 10), left(path, 200)));
            END IF;
            IF key_permissions IS NOT NULL AND NOT route_permission = ANY (key_permissions)
               AND NOT (route_permission = 'balance' AND 'billing' = ANY (key_permissions)) THEN
                PERFORM envoisms.raise_error('FORBIDDEN',
                    format('this API key lacks the "%s" permission', route_permission));
            END IF;
        END IF;

        -- 4. the request (one row constructor: each field assignment is a statement of its own)
        req := ROW(method, path, route_template, req.id,
                   CASE WHEN query IS NULL OR query = '' THEN '{}' ELSE envoisms.query_parse(query) END,
                   '{}', body, hdr, client_ip, key_account, key_id, key_prefix = 'env_test',
                   key_permissions)::envoisms.api_request;
        IF method IN ('POST', 'PATCH', 'PUT') AND body IS NOT NULL AND btrim(body, E' \t\r\n') <> '' THEN
            -- checked before the cast, so that a bad body needs no exception block
            problem := envoisms.body_problem(body);
            IF problem = 'nul' THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', 'strings must not contain NUL (\u0000) characters');
            ELSIF problem = 'number' THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', 'a number in the request body is out of range (beyond 1e±1000)');
            ELSIF problem IS NOT NULL THEN
                PERFORM envoisms.raise_error('INVALID_JSON', 'the request body is not valid JSON');
            END IF;
            req.body := body::jsonb;
            IF jsonb_typeof(req.body) <> 'object' THEN
                PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the request body must be a JSON object');
            END IF;
        END IF;

        -- 5. Idempotency-Key on a POST: replay a stored reply, or run and store
        IF method = 'POST' AND key_id IS NOT NULL AND hdr ? 'idempotency-key' THEN
            rep := envoisms.idempotency_lookup(req, hdr->>'idempotency-key');
            IF rep.status IS NULL THEN
                rep := envoisms.api_call(route_handler, req);
                PERFORM envoisms.idempotency_store(req, hdr->>'idempotency-key', rep);
            END IF;
        ELSE
            rep := envoisms.api_call(route_handler, req);
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
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF b->'metadata' IS NOT NULL AND jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
    END IF;
    IF b->'buttons' IS NOT NULL AND jsonb_typeof(b->'buttons') NOT IN ('array', 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
    END IF;
    IF jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
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

CREATE OR REPLACE FUNCTION envoisms.dispatch_claim(carrier_kinds text[], only_carrier text, batch int, lease interval)
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
                  m.body, m.encoding::text, m.segments::int, m.buttons, m.metadata, m.attempts, m.expires_at, ch.config
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

-- ---- 5. nothing is open to PUBLIC (as 95_grants.sql)
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA envoisms FROM PUBLIC;
