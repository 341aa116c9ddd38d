-- envoisms 0.4.0 -> 0.5.0 (ALTER EXTENSION envoisms UPDATE). Frozen with the
-- 0.5.0 release: its definitions are those of src/sql at 0.5.0.
\echo Use "ALTER EXTENSION envoisms UPDATE TO '0.5.0'" to load this file. \quit

-- ---- 1. API keys: an empty permission list means none; no key creates,
-- changes or re-enables a key beyond its own permissions, IP allowlist or
-- rate limit; a test key manages test keys only

CREATE FUNCTION envoisms.permissions_normalize(permissions text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN permissions IS NOT NULL THEN ARRAY(SELECT DISTINCT p FROM unnest(permissions) p ORDER BY p) END;

CREATE OR REPLACE FUNCTION envoisms.api_key_create(account_id text, name text DEFAULT 'API key', live boolean DEFAULT true,
                                        permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                        rate_limit int DEFAULT 100)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    prefix text := CASE WHEN live THEN 'env_live' ELSE 'env_test' END;
    key text := prefix || '_' || envoisms.random_bytes_hex(24);
    id text := envoisms.new_id('key');
    nets cidr[];
    bad text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = api_key_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    IF name IS NULL OR length(name) NOT BETWEEN 1 AND 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    SELECT p INTO bad FROM unnest(permissions) p WHERE p IS NULL OR NOT p = ANY (envoisms.api_permissions()) LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('unknown permission "%s"; allowed: %s', bad, array_to_string(envoisms.api_permissions(), ', ')),
            'permissions');
    END IF;
    nets := envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist');
    IF rate_limit IS NOT NULL AND rate_limit < 1 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rate_limit must be positive', 'rate_limit');
    END IF;
    INSERT INTO envoisms.api_keys (account_id, api_key_id, name, key_prefix, key_hash, key_hint,
                                   permissions, ip_whitelist, rate_limit)
    VALUES (api_key_create.account_id, id, api_key_create.name, prefix, envoisms.sha256_hex(key), right(key, 4),
            envoisms.permissions_normalize(permissions), nets, api_key_create.rate_limit);
    RETURN jsonb_build_object(
        'id', id,
        'name', api_key_create.name,
        'key_prefix', prefix,
        'api_key', key,
        'permissions', to_jsonb(coalesce(permissions, envoisms.api_permissions())),
        'ip_whitelist', to_jsonb(coalesce(ip_whitelist, '{}')),
        'rate_limit', api_key_create.rate_limit,
        'warning', 'The full API key is shown once. Store it securely.');
END
$$;

DROP FUNCTION envoisms.check_no_escalation(text[], text[]);
DROP FUNCTION envoisms.api_key_issue(text, text, text, text[], text[], int, boolean);

CREATE FUNCTION envoisms.check_no_escalation(holder envoisms.api_keys, permissions text[],
                                             ip_whitelist cidr[], rate_limit int) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    extra text[];
BEGIN
    IF holder.permissions IS NOT NULL THEN
        extra := ARRAY(SELECT DISTINCT p FROM unnest(coalesce(permissions, envoisms.api_permissions())) p
                        WHERE NOT p = ANY (holder.permissions) ORDER BY 1);
        IF cardinality(extra) > 0 THEN
            PERFORM envoisms.raise_error('FORBIDDEN',
                format('this API key cannot grant permissions it does not have: %s', array_to_string(extra, ', ')),
                'permissions');
        END IF;
    END IF;
    IF cardinality(holder.ip_whitelist) > 0
       AND (coalesce(cardinality(ip_whitelist), 0) = 0
            OR EXISTS (SELECT 1 FROM unnest(ip_whitelist) n WHERE NOT n <<= ANY (holder.ip_whitelist))) THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            'this API key cannot allow addresses outside its own ip_whitelist', 'ip_whitelist');
    END IF;
    IF holder.rate_limit IS NOT NULL AND (rate_limit IS NULL OR rate_limit > holder.rate_limit) THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            format('this API key cannot grant a rate limit above its own (%s per minute)', holder.rate_limit),
            'rate_limit');
    END IF;
END
$$;

CREATE FUNCTION envoisms.check_key_kind(caller envoisms.api_keys, target_prefix text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF caller.key_prefix = 'env_test' AND target_prefix = 'env_live' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a test key can only manage test keys', 'id');
    END IF;
END
$$;

CREATE FUNCTION envoisms.api_key_issue(account_id text, issuer_key_id text, name text DEFAULT NULL,
                                       permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                       rate_limit int DEFAULT NULL, live boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    issuer envoisms.api_keys := envoisms.api_key_row(account_id, issuer_key_id);
BEGIN
    PERFORM envoisms.check_key_fields(permissions, rate_limit);
    rate_limit := coalesce(rate_limit, least(100, issuer.rate_limit));
    IF live AND issuer.key_prefix = 'env_test' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a test key cannot create a live key', 'key_prefix');
    END IF;
    permissions := coalesce(permissions, issuer.permissions);
    ip_whitelist := coalesce(ip_whitelist, issuer.ip_whitelist::text[]);
    PERFORM envoisms.check_no_escalation(issuer, permissions, envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist'),
                                         rate_limit);
    RETURN envoisms.api_key_create(account_id, coalesce(name, 'API key'),
                                   coalesce(live, issuer.key_prefix = 'env_live'),
                                   permissions, ip_whitelist, rate_limit);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_key_update(account_id text, caller_key_id text, api_key_id text,
                                        name text DEFAULT NULL, permissions text[] DEFAULT NULL,
                                        ip_whitelist text[] DEFAULT NULL, rate_limit int DEFAULT NULL,
                                        active boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    caller envoisms.api_keys;
    k envoisms.api_keys;
    nets cidr[];
    warning text;
BEGIN
    SELECT * INTO k FROM envoisms.api_keys x
     WHERE x.account_id = api_key_update.account_id AND x.api_key_id = api_key_update.api_key_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'API key not found', 'id');
    END IF;
    IF k.revoked_at IS NOT NULL THEN
        PERFORM envoisms.raise_error('CONFLICT', 'the API key is revoked; create a new one', 'id');
    END IF;
    IF name IS NOT NULL AND length(btrim(name)) NOT BETWEEN 1 AND 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    PERFORM envoisms.check_key_fields(permissions, rate_limit);
    nets := envoisms.parse_ip_list(ip_whitelist, 'ip_whitelist');
    k.name := coalesce(btrim(name), k.name);
    k.permissions := CASE WHEN permissions IS NOT NULL THEN envoisms.permissions_normalize(permissions)
                          ELSE k.permissions END;
    k.ip_whitelist := coalesce(nets, k.ip_whitelist);
    k.rate_limit := coalesce(rate_limit, k.rate_limit);
    k.active := coalesce(active, k.active);
    IF caller_key_id IS NOT NULL THEN
        caller := envoisms.api_key_row(account_id, caller_key_id);
        PERFORM envoisms.check_key_kind(caller, k.key_prefix);
        IF k.active THEN
            PERFORM envoisms.check_no_escalation(caller, k.permissions, k.ip_whitelist, k.rate_limit);
        END IF;
    END IF;
    UPDATE envoisms.api_keys x
       SET name = k.name, permissions = k.permissions, ip_whitelist = k.ip_whitelist,
           rate_limit = k.rate_limit, active = k.active
     WHERE x.account_id = k.account_id AND x.api_key_id = k.api_key_id;
    IF active = false THEN
        warning := envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id);
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object('updated', true, 'id', k.api_key_id, 'warning', warning));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    target envoisms.api_keys := envoisms.api_key_row(account_id, api_key_id);
BEGIN
    IF caller_key_id IS NOT NULL THEN
        PERFORM envoisms.check_key_kind(envoisms.api_key_row(account_id, caller_key_id), target.key_prefix);
    END IF;
    UPDATE envoisms.api_keys x SET revoked_at = coalesce(x.revoked_at, now()), active = false
     WHERE x.account_id = target.account_id AND x.api_key_id = target.api_key_id;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'revoked', true, 'id', api_key_id,
        'warning', envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id)));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_keys_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    prefix text := envoisms.body_text(req.body, 'key_prefix');
    scope text := envoisms.body_text(req.body, 'scope');
BEGIN
    IF prefix IS NOT NULL AND prefix NOT IN ('env_live', 'env_test') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'key_prefix must be "env_live" or "env_test"', 'key_prefix');
    END IF;
    IF scope IS NOT NULL AND scope NOT IN ('live', 'test') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'scope must be "live" or "test"', 'scope');
    END IF;
    IF scope IS NOT NULL AND prefix IS NOT NULL AND prefix <> 'env_' || scope THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'scope and key_prefix disagree', 'scope');
    END IF;
    prefix := coalesce(prefix, 'env_' || scope);
    IF req.body ? 'name' AND envoisms.body_text(req.body, 'name') IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 100 characters', 'name');
    END IF;
    RETURN envoisms.reply(201, envoisms.api_key_issue(
        req.account_id, req.api_key_id,
        envoisms.body_text(req.body, 'name'),
        envoisms.body_text_array(req.body, 'permissions'),
        envoisms.body_text_array(req.body, 'ip_whitelist'),
        envoisms.body_int(req.body, 'rate_limit', NULL, 10, 1000),
        CASE prefix WHEN 'env_live' THEN true WHEN 'env_test' THEN false END));
END
$$;

-- ---- 2. an OTP code leaves the database only towards the carrier

CREATE FUNCTION envoisms.message_body_shown(body text, metadata jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN metadata->>'purpose' = 'otp' AND metadata ? 'verify_session_id'
            THEN regexp_replace(body, '(?<=[0-9]{3})[0-9]|[0-9](?=[0-9]{3})|(?<=[0-9])[0-9](?=[0-9]{2})|(?<=[0-9]{2})[0-9](?=[0-9])',
                                '•', 'g')
            ELSE body END;

CREATE OR REPLACE FUNCTION envoisms.message_json(m envoisms.messages, with_events boolean DEFAULT true) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', m.message_id, 'account_id', m.account_id, 'api_key_id', m.api_key_id,
        'campaign_id', m.campaign_id, 'batch_id', m.batch_id, 'direction', m.direction,
        'to', m.to_number, 'channel', m.channel, 'cascade', m.cascade,
        'body', envoisms.message_body_shown(m.body, m.metadata), 'sender_id', m.sender_id,
        'unicode', CASE WHEN m.encoding = 'ucs2' THEN 1 ELSE 0 END, 'segments', m.segments,
        'status', m.status, 'cost_eur', envoisms.money(m.cost_eur), 'cost_mad', envoisms.money(m.cost_mad),
        'metadata', CASE WHEN m.metadata IS NULL THEN NULL ELSE to_jsonb(m.metadata::text) END,
        'sandbox', m.sandbox, 'error_code', m.error_code, 'error_message', m.error_message,
        'failure_reason', CASE WHEN m.status = 'failed' THEN coalesce(m.error_message, m.error_code) END,
        'created_at', envoisms.iso_time(m.created_at),
        'sent_at', envoisms.iso_time(m.sent_at), 'delivered_at', envoisms.iso_time(m.delivered_at))
    || CASE WHEN with_events THEN jsonb_build_object('events',
        jsonb_build_array(jsonb_build_object('status', 'queued', 'created_at', envoisms.iso_time(m.created_at)))
        || coalesce((SELECT jsonb_agg(jsonb_build_object('status', e.status, 'created_at', envoisms.iso_time(e.created_at))
                                      || coalesce(e.detail, '{}') ORDER BY e.event_id)
                       FROM envoisms.message_events e
                      WHERE e.account_id = m.account_id AND e.message_id = m.message_id), '[]'))
       ELSE '{}' END
    || CASE WHEN m.direction = 'inbound' THEN jsonb_build_object('from', m.from_number) ELSE '{}' END;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.message_list(account_id text, "limit" int DEFAULT 50, "offset" int DEFAULT 0,
                                      status text DEFAULT NULL, channel text DEFAULT NULL,
                                      from_date timestamptz DEFAULT NULL, to_date timestamptz DEFAULT NULL,
                                      direction text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    rows jsonb;
    n bigint;
BEGIN
    IF "limit" IS NULL OR "limit" NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'limit must be an integer from 1 to 200', 'limit');
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'offset must be an integer of 0 or more', 'offset');
    END IF;
    IF status IS NOT NULL AND status NOT IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'received') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'status must be one of queued, sent, delivered, failed, expired, received', 'status');
    END IF;
    IF channel IS NOT NULL AND channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'channel must be "sms" or "whatsapp"', 'channel');
    END IF;
    IF direction IS NOT NULL AND direction NOT IN ('outbound', 'inbound') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'direction must be "outbound" or "inbound"', 'direction');
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', m.message_id, 'to', m.to_number, 'channel', m.channel,
               'body', envoisms.message_body_shown(m.body, m.metadata),
               'sender_id', m.sender_id, 'status', m.status, 'cost_mad', envoisms.money(m.cost_mad),
               'direction', m.direction, 'created_at', envoisms.iso_time(m.created_at))
               ORDER BY m.message_id DESC), '[]')
      INTO rows
      FROM (SELECT * FROM envoisms.messages x
             WHERE x.account_id = message_list.account_id
               AND (message_list.status IS NULL OR x.status = message_list.status)
               AND (message_list.channel IS NULL OR x.channel = message_list.channel)
               AND (message_list.direction IS NULL OR x.direction = message_list.direction)
               AND (from_date IS NULL OR x.created_at >= from_date)
               AND (to_date IS NULL OR x.created_at <= to_date)
             ORDER BY x.message_id DESC
             LIMIT "limit" OFFSET "offset") m;
    SELECT count(*) INTO n FROM envoisms.messages x
     WHERE x.account_id = message_list.account_id
       AND (message_list.status IS NULL OR x.status = message_list.status)
       AND (message_list.channel IS NULL OR x.channel = message_list.channel)
       AND (message_list.direction IS NULL OR x.direction = message_list.direction)
       AND (from_date IS NULL OR x.created_at >= from_date)
       AND (to_date IS NULL OR x.created_at <= to_date);
    -- the rows under "data" (the contract) and "messages" (what the official
    -- Node client reads): one value referenced twice, serialised twice
    RETURN jsonb_build_object('data', rows, 'messages', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;

-- ---- 3. the rate limit is per key and per account, and its table evicts
-- instead of failing open

DROP FUNCTION envoisms.ratelimit_take(text, int);

CREATE FUNCTION envoisms.ratelimit_take(key_id text, per_minute int, account_key text DEFAULT NULL,
                                        OUT allowed boolean, OUT remaining int, OUT retry_after int)
AS 'MODULE_PATHNAME', 'ratelimit_take' LANGUAGE C VOLATILE;

CREATE FUNCTION envoisms.ratelimit_stats(OUT buckets bigint, OUT capacity int, OUT evictions bigint)
AS 'MODULE_PATHNAME', 'ratelimit_stats' LANGUAGE C VOLATILE;

-- ---- 4. the request path: the gateway's precheck of a large request's
-- head, one home for the refusals it shares with envoisms.api; time zone
-- offsets beyond ±15:59 are a VALIDATION_ERROR; replays keep no secret

CREATE FUNCTION envoisms.raise_unauthorized() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.raise_error('UNAUTHORIZED',
        'invalid or missing API key: send Authorization: Bearer env_live_... or env_test_... from an allowed address');
END
$$;

CREATE FUNCTION envoisms.api_route_refusal(method text, path text, handler regprocedure, permission text,
                                           key_permissions text[], OUT code text, OUT message text, OUT allow text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    tmpl text;
BEGIN
    IF handler IS NULL THEN
        tmpl := regexp_replace(path, '^(/v1/[^/]+/)[^/]+', '\1:id');
        SELECT string_agg(DISTINCT e.method, ', ') INTO allow
          FROM envoisms.api_endpoints e WHERE e.template IN (path, tmpl);
        IF allow IS NOT NULL THEN
            code := 'METHOD_NOT_ALLOWED';
            message := format('%s is not allowed on %s', left(method, 10), left(path, 200));
        ELSE
            code := 'NOT_FOUND';
            message := format('no route for %s %s', left(method, 10), left(path, 200));
        END IF;
    ELSIF key_permissions IS NOT NULL AND NOT permission = ANY (key_permissions)
          AND NOT (permission = 'balance' AND 'billing' = ANY (key_permissions)) THEN
        code := 'FORBIDDEN';
        message := format('this API key lacks the "%s" permission', permission);
    END IF;
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
    f record;           -- api_route_refusal(): why the route is not served
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
                PERFORM envoisms.raise_unauthorized();
            END IF;

            -- 3. rate limit (shared memory, no row per request): the key's
            -- bucket and its account's, so that new keys bring no new budget.
            -- X-Envoisms-Key-Id names the key for the gateway's access log
            -- (which strips it).
            rl := envoisms.ratelimit_take(k.api_key_id, k.rate_limit, k.account_id || ':' || k.key_prefix);
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

            -- (one test on the common path: every statement costs its own
            -- evaluation; api_route_refusal says why, on the refused path only)
            IF r.handler IS NULL OR (k.permissions IS NOT NULL AND NOT r.permission = ANY (k.permissions)
                                         AND NOT (r.permission = 'balance' AND 'billing' = ANY (k.permissions))) THEN
                f := envoisms.api_route_refusal(method, path, r.handler, r.permission, k.permissions);
                IF f.allow IS NOT NULL THEN
                    out_headers := out_headers || jsonb_build_object('Allow', f.allow);
                END IF;
                PERFORM envoisms.raise_error(f.code, f.message);
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

CREATE FUNCTION envoisms.api_precheck(method text, path text, headers jsonb DEFAULT '{}', client_ip inet DEFAULT NULL)
RETURNS SETOF envoisms.api_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    k record;
    f record;
    allow text;
    err_state text;
    err_message text;
    e envoisms.error_codes;
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    BEGIN
        r := envoisms.api_route(method, path);
        IF coalesce(r.public, false) THEN
            RETURN;
        END IF;
        k := envoisms.api_key_lookup(envoisms.api_key_hash(envoisms.headers_normalize(headers)->>'authorization'));
        IF k.api_key_id IS NULL OR k.account_status = 'closed'
           OR (cardinality(k.ip_whitelist) > 0 AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_whitelist))) THEN
            PERFORM envoisms.raise_unauthorized();
        END IF;
        f := envoisms.api_route_refusal(method, path, r.handler, r.permission, k.permissions);
        IF f.code IS NULL THEN
            RETURN;
        END IF;
        allow := f.allow;
        PERFORM envoisms.raise_error(f.code, f.message);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
    END;
    SELECT * INTO e FROM envoisms.error_codes x WHERE x.sqlstate = err_state;
    IF NOT FOUND THEN
        RAISE WARNING 'envoisms.api_precheck % %: unexpected error %: %', left(method, 10), left(path, 200), err_state, err_message;
        SELECT * INTO e FROM envoisms.error_codes x WHERE x.code = 'INTERNAL_ERROR';
        err_message := 'an unexpected error occurred; it was logged';
    END IF;
    RETURN NEXT ROW(e.http_status, CASE WHEN allow IS NOT NULL THEN jsonb_build_object('Allow', allow) ELSE '{}' END,
                    envoisms.error_envelope(e.code, err_message))::envoisms.api_reply;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.parse_time(value text, field text) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF value !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an ISO 8601 date or time', field), field);
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format OR invalid_time_zone_displacement_value THEN
    PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an ISO 8601 date or time', field), field);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.idempotency_store(req envoisms.api_request, key text, rep envoisms.api_reply) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF jsonb_typeof(rep.body) = 'object' AND rep.body ?| ARRAY['api_key', 'secret'] THEN
        rep.body := rep.body - 'api_key' - 'secret' || jsonb_build_object('warning',
            format('This is a replay: the %s was shown once, in the first response to this request, and is not stored. '
                   'If it was lost, revoke this one and create another.',
                   CASE WHEN rep.body ? 'api_key' THEN 'full API key' ELSE 'secret' END));
    END IF;
    INSERT INTO envoisms.idempotency_keys AS k (account_id, api_key_id, idempotency_key, request_hash, method, path,
                                               status, headers, body)
    VALUES (req.account_id, req.api_key_id, envoisms.idempotency_check_key(key),
            envoisms.idempotency_request_hash(req), req.method, req.path,
            rep.status, coalesce(rep.headers, '{}'), rep.body)
    ON CONFLICT (account_id, api_key_id, idempotency_key) DO UPDATE
       SET request_hash = EXCLUDED.request_hash, method = EXCLUDED.method, path = EXCLUDED.path,
           status = EXCLUDED.status, headers = EXCLUDED.headers, body = EXCLUDED.body,
           created_at = now(), expires_at = now() + interval '24 hours'
     WHERE k.expires_at <= now();        -- only an expired key is ever reused
END
$$;

-- ---- 5. the webhook address guard, callable from SQL for its tests

CREATE FUNCTION envoisms.webhook_address_refusal(address inet) RETURNS text
AS 'MODULE_PATHNAME', 'webhook_address_refusal' LANGUAGE C STRICT IMMUTABLE;

-- ---- 6. what the official clients read and call: aliases in replies,
-- verify status and voiding, key scope, analytics?days, webhooks signed
-- under X-EnvoiSMS-Signature too (and, per webhook, in the timestamped form)

ALTER TABLE envoisms.webhooks
    ADD COLUMN signature_format text NOT NULL DEFAULT 'sha256' CHECK (signature_format IN ('sha256', 'timestamped'));
ALTER TABLE envoisms.verify_sessions DROP CONSTRAINT verify_sessions_status_check,
    ADD CONSTRAINT verify_sessions_status_check CHECK (status IN ('sent', 'verified', 'failed', 'voided'));
DROP FUNCTION envoisms.webhook_create(text, text, text[], text);
DROP FUNCTION envoisms.webhook_update(text, text, text, text[], boolean);
DROP FUNCTION envoisms.webhook_claim(int, interval, int, jsonb);

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
        'batch_id', batch, 'total', total, 'queued', total, 'failed', 0, 'channel', channel,
        'estimated_cost', jsonb_build_object('eur', envoisms.money(cost_eur), 'mad', envoisms.money(cost_mad)),
        'messages', envoisms.message_bulk_items(ids, numbers));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.verify_json(s envoisms.verify_sessions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.session_id, 'to', s.to_number, 'channel', s.channel, 'message_id', s.message_id,
        'status', CASE WHEN s.status = 'sent' AND s.expires_at <= now() THEN 'expired'
                       WHEN s.status = 'sent' THEN 'pending' ELSE s.status END,
        'attempts', s.attempts,
        'expires_at', envoisms.iso_time(s.expires_at), 'verified_at', envoisms.iso_time(s.verified_at),
        'created_at', envoisms.iso_time(s.created_at))
$$;

CREATE OR REPLACE FUNCTION envoisms.verify_check(account_id text, session_id text, code text)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.verify_sessions;
    given text;
    failed jsonb;
BEGIN
    IF session_id IS NULL OR length(session_id) NOT BETWEEN 1 AND 64 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'session_id is required', 'session_id');
    END IF;
    IF code IS NULL OR length(btrim(code)) NOT BETWEEN 1 AND 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'code is required (the digits the user entered)', 'code');
    END IF;
    failed := jsonb_build_object('session_id', session_id, 'verified', false, 'status', 'failed', 'verified_at', NULL);
    -- the HMAC is computed whatever happens next, so timing does not tell an unknown session
    given := envoisms.verify_code_hmac(session_id, btrim(code));

    -- the right code on a live session: verified (at most once: the condition
    -- is re-checked on the newest row version if another check got there first)
    UPDATE envoisms.verify_sessions x SET status = 'verified', verified_at = now()
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id
       AND x.status = 'sent' AND x.attempts < x.max_attempts AND x.expires_at > now()
       AND envoisms.secure_equals(given, x.code_hmac)
    RETURNING * INTO s;
    IF FOUND THEN
        PERFORM envoisms.webhook_enqueue(s.account_id, 'verify.success', envoisms.verify_json(s));
        RETURN jsonb_build_object('session_id', s.session_id, 'verified', true, 'status', 'verified',
                                  'verified_at', envoisms.iso_time(s.verified_at));
    END IF;
    -- a wrong code on a live session: one more attempt, the last one kills it
    UPDATE envoisms.verify_sessions x
       SET attempts = x.attempts + 1,
           status = CASE WHEN x.attempts + 1 >= x.max_attempts THEN 'failed' ELSE x.status END
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id
       AND x.status = 'sent' AND x.attempts < x.max_attempts AND x.expires_at > now()
       AND NOT envoisms.secure_equals(given, x.code_hmac);
    IF FOUND THEN
        RETURN failed;
    END IF;
    -- not live: say why where the contract needs it
    SELECT * INTO s FROM envoisms.verify_sessions x
     WHERE x.account_id = verify_check.account_id AND x.session_id = verify_check.session_id;
    IF NOT FOUND OR s.status = 'verified' THEN
        RETURN failed;
    ELSIF s.status = 'failed' OR s.attempts >= s.max_attempts THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('too many wrong codes for this session (%s); send a new code', s.max_attempts), 'code');
    END IF;
    IF s.status = 'voided' THEN
        PERFORM envoisms.raise_error('EXPIRED', 'the verification session was cancelled; send a new code', 'session_id');
    END IF;
    PERFORM envoisms.raise_error('EXPIRED', 'the verification session expired; send a new code', 'session_id');
    RETURN failed;      -- not reached
END
$$;

CREATE FUNCTION envoisms.verify_cancel(account_id text, session_id text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.verify_sessions;
BEGIN
    UPDATE envoisms.verify_sessions x SET status = 'voided'
     WHERE x.account_id = verify_cancel.account_id AND x.session_id = verify_cancel.session_id
       AND x.status = 'sent' AND x.expires_at > now()
    RETURNING * INTO s;
    IF NOT FOUND THEN
        SELECT * INTO s FROM envoisms.verify_sessions x
         WHERE x.account_id = verify_cancel.account_id AND x.session_id = verify_cancel.session_id;
        IF NOT FOUND THEN
            PERFORM envoisms.raise_error('NOT_FOUND', 'verification session not found', 'id');
        ELSIF s.status = 'verified' THEN
            PERFORM envoisms.raise_error('CONFLICT', 'the verification session is already verified', 'id');
        END IF;
    END IF;
    RETURN envoisms.verify_json(s);
END
$$;

CREATE FUNCTION envoisms.api_verify_cancel(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.verify_cancel(req.account_id, req.id));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_analytics(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    days int := envoisms.query_int(req.query, 'days', NULL, 1, 3660);
BEGIN
    RETURN envoisms.reply(200, envoisms.analytics_summary(
        req.account_id,
        coalesce(envoisms.parse_time(req.query->>'from_date', 'from_date'), now() - make_interval(days => days)),
        envoisms.parse_time(req.query->>'to_date', 'to_date')));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_json(w envoisms.webhooks) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events), 'active', w.active,
                              'last_triggered_at', envoisms.iso_time(w.last_triggered_at),
                              'last_status', w.last_status, 'signature_format', w.signature_format,
                              'created_at', envoisms.iso_time(w.created_at))
$$;

CREATE FUNCTION envoisms.check_webhook_signature_format(format text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF format IS NOT NULL AND format NOT IN ('sha256', 'timestamped') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'signature_format must be "sha256" (sha256=<hex>) or "timestamped" (t=<unix>,v1=<hex>)', 'signature_format');
    END IF;
    RETURN format;
END
$$;

CREATE FUNCTION envoisms.webhook_create(account_id text, url text, events text[] DEFAULT NULL,
                                        secret text DEFAULT NULL, signature_format text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks;
BEGIN
    url := envoisms.check_webhook_url(url);
    events := envoisms.check_webhook_events(events);
    IF secret IS NOT NULL AND (secret !~ '^[\x21-\x7e]+$' OR length(secret) NOT BETWEEN 16 AND 256) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'secret must be 16 to 256 printable characters without spaces', 'secret');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = webhook_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    IF (SELECT count(*) FROM envoisms.webhooks x
         WHERE x.account_id = webhook_create.account_id AND x.deleted_at IS NULL) >= 20 THEN
        PERFORM envoisms.raise_error('CONFLICT', 'an account has at most 20 webhooks; delete one first', 'url');
    END IF;
    INSERT INTO envoisms.webhooks (account_id, webhook_id, url, events, secret, signature_format)
    VALUES (account_id, envoisms.new_id('whk'), url, events,
            coalesce(secret, 'whsec_' || envoisms.random_bytes_hex(24)),
            coalesce(envoisms.check_webhook_signature_format(signature_format), 'sha256'))
    RETURNING * INTO w;
    RETURN jsonb_build_object('id', w.webhook_id, 'url', w.url, 'events', to_jsonb(w.events),
                              'secret', w.secret, 'active', w.active, 'signature_format', w.signature_format,
                              'created_at', envoisms.iso_time(w.created_at));
END
$$;

CREATE FUNCTION envoisms.webhook_update(account_id text, webhook_id text, url text DEFAULT NULL,
                                        events text[] DEFAULT NULL, active boolean DEFAULT NULL,
                                        signature_format text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    w envoisms.webhooks := envoisms.webhook_lock(account_id, webhook_id);
BEGIN
    IF url IS NULL AND events IS NULL AND active IS NULL AND signature_format IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give at least one of url, events, active, signature_format', 'url');
    END IF;
    signature_format := envoisms.check_webhook_signature_format(signature_format);
    IF url IS NOT NULL THEN
        url := envoisms.check_webhook_url(url);
    END IF;
    IF events IS NOT NULL THEN
        events := envoisms.check_webhook_events(events);
    END IF;
    UPDATE envoisms.webhooks x
       SET url = coalesce(webhook_update.url, x.url),
           events = coalesce(webhook_update.events, x.events),
           active = coalesce(webhook_update.active, x.active),
           signature_format = coalesce(webhook_update.signature_format, x.signature_format),
           failing_since = CASE WHEN webhook_update.active THEN NULL ELSE x.failing_since END,
           disabled_reason = CASE WHEN webhook_update.active THEN NULL ELSE x.disabled_reason END
     WHERE x.account_id = w.account_id AND x.webhook_id = w.webhook_id;
    RETURN jsonb_build_object('updated', true, 'id', w.webhook_id);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_webhooks_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.webhook_create(
        req.account_id, envoisms.body_text(req.body, 'url'), envoisms.body_text_array(req.body, 'events'),
        envoisms.body_text(req.body, 'secret'), envoisms.body_text(req.body, 'signature_format')));
END
$$;

CREATE OR REPLACE FUNCTION envoisms.api_webhooks_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.webhook_update(
        req.account_id, req.id, envoisms.body_text(req.body, 'url'), envoisms.body_text_array(req.body, 'events'),
        envoisms.body_bool(req.body, 'active', NULL), envoisms.body_text(req.body, 'signature_format')));
END
$$;

CREATE FUNCTION envoisms.webhook_claim(batch int, lease interval, per_endpoint int, busy jsonb DEFAULT '{}')
RETURNS TABLE (account_id text, delivery_id bigint, webhook_id text, event_id text, event_type text,
               payload text, attempts int, url text, secret text, signature_format text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN QUERY
    WITH candidates AS (
        SELECT d.account_id, d.delivery_id, d.webhook_id, d.event_type, d.next_attempt_at,
               d.account_id || '/' || d.webhook_id AS endpoint
          FROM envoisms.webhook_deliveries d
         WHERE d.status = 'pending' AND d.next_attempt_at <= now()
           AND (d.locked_until IS NULL OR d.locked_until < now())
           AND coalesce((busy->>(d.account_id || '/' || d.webhook_id))::int, 0) < per_endpoint
         ORDER BY d.next_attempt_at
         LIMIT batch * 4
    ), ranked AS (
        SELECT c.*, w.url, w.secret, w.signature_format,
               w.deleted_at IS NULL AND (w.active OR c.event_type = 'message.test') AS live,
               row_number() OVER (PARTITION BY c.endpoint ORDER BY c.next_attempt_at) AS rn
          FROM candidates c
          JOIN envoisms.webhooks w ON w.account_id = c.account_id AND w.webhook_id = c.webhook_id
    ), picked AS (
        SELECT r.* FROM ranked r
         WHERE NOT r.live OR r.rn <= per_endpoint - coalesce((busy->>r.endpoint)::int, 0)
         ORDER BY r.next_attempt_at
         LIMIT batch
    ), locked AS (
        SELECT p.account_id, p.delivery_id, p.url, p.secret, p.signature_format, p.live
          FROM envoisms.webhook_deliveries d
          JOIN picked p ON p.account_id = d.account_id AND p.delivery_id = d.delivery_id
         WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
           FOR UPDATE OF d SKIP LOCKED
    ), cancelled AS (
        UPDATE envoisms.webhook_deliveries d
           SET status = 'cancelled', last_error = 'the webhook was disabled or deleted', locked_until = NULL
          FROM locked l
         WHERE NOT l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
        RETURNING 1
    ), leased AS (
        UPDATE envoisms.webhook_deliveries d
           SET locked_until = now() + lease, attempts = d.attempts + 1
          FROM locked l
         WHERE l.live AND d.account_id = l.account_id AND d.delivery_id = l.delivery_id
        RETURNING d.account_id, d.delivery_id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts,
                  l.url, l.secret, l.signature_format
    )
    SELECT l.* FROM leased l;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.webhook_enqueue(account_id text, event_type text, data jsonb,
                                         only_webhook text DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    event_id text := envoisms.new_id('evt');
    payload text;
    n int;
BEGIN
    -- most status changes have no subscriber: do not render a payload for nobody
    IF NOT EXISTS (SELECT 1 FROM envoisms.webhooks w
                    WHERE w.account_id = webhook_enqueue.account_id AND w.deleted_at IS NULL
                      AND (only_webhook IS NOT NULL AND w.webhook_id = only_webhook
                           OR only_webhook IS NULL AND w.active AND event_type = ANY (w.events))) THEN
        RETURN 0;
    END IF;
    -- "event" and "timestamp" repeat "type" and "created_at" under the names
    -- the official SDKs' WebhookEvent reads
    payload := jsonb_build_object('id', event_id, 'type', event_type, 'event', event_type,
                                  'created_at', envoisms.iso_time(now()), 'timestamp', envoisms.iso_time(now()),
                                  'data', data)::text;
    INSERT INTO envoisms.webhook_deliveries (account_id, webhook_id, event_id, event_type, payload)
    SELECT w.account_id, w.webhook_id, event_id, event_type, payload
      FROM envoisms.webhooks w
     WHERE w.account_id = webhook_enqueue.account_id AND w.deleted_at IS NULL
       AND (only_webhook IS NOT NULL AND w.webhook_id = only_webhook
            OR only_webhook IS NULL AND w.active AND event_type = ANY (w.events));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM envoisms.wake_webhooks();
    END IF;
    RETURN n;
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/verify/:id/cancel', 'envoisms.api_verify_cancel(envoisms.api_request)', 'verify');

-- ---- 7. nothing is open to PUBLIC (as 95_grants.sql does at install)
REVOKE ALL ON FUNCTION envoisms.verify_cancel(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_verify_cancel(envoisms.api_request) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.check_webhook_signature_format(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.webhook_create(text, text, text[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.webhook_update(text, text, text, text[], boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.webhook_claim(int, interval, int, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.permissions_normalize(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.check_no_escalation(envoisms.api_keys, text[], cidr[], int) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.check_key_kind(envoisms.api_keys, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_key_issue(text, text, text, text[], text[], int, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.message_body_shown(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.ratelimit_take(text, int, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.ratelimit_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.raise_unauthorized() FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_route_refusal(text, text, regprocedure, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.api_precheck(text, text, jsonb, inet) FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.webhook_address_refusal(inet) FROM PUBLIC;
