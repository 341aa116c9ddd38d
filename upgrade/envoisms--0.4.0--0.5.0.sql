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
    PERFORM envoisms.check_page("limit", "offset", 200);
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
BEGIN
    IF handler IS NULL THEN
        SELECT string_agg(DISTINCT e.method, ', ') INTO allow
          FROM envoisms.api_endpoints e
         WHERE e.template IN (path, regexp_replace(path, '^(/v1/[^/]+/)[^/]+', '\1:id'),
                              regexp_replace(path, '^(/v1/[^/]+/[^/]+/)[^/]+', '\1:id'));
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
        -- path with its third (then its fourth) segment as :id
        r := envoisms.api_route(method, path);
        -- X-Envoisms-Route names the route matched for the gateway's access
        -- log and metrics (which strip it)
        out_headers := CASE WHEN r.template IS NOT NULL THEN jsonb_build_object('X-Envoisms-Route', r.template) ELSE '{}' END;
        IF r.by_template THEN
            req.id := envoisms.url_decode(split_part(path, '/', CASE WHEN split_part(r.template, '/', 4) = ':id' THEN 4 ELSE 5 END));
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
            out_headers := out_headers || CASE WHEN k.rate_limit IS NULL THEN jsonb_build_object('X-Envoisms-Key-Id', k.api_key_id)
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
    route text;         -- the template matched, for the gateway (X-Envoisms-Route)
    err_state text;
    err_message text;
    e envoisms.error_codes;
BEGIN
    method := upper(coalesce(method, ''));
    path := coalesce(nullif(rtrim(path, '/'), ''), '/');
    BEGIN
        r := envoisms.api_route(method, path);
        route := r.template;
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
    RETURN NEXT ROW(e.http_status, CASE WHEN allow IS NOT NULL THEN jsonb_build_object('Allow', allow) ELSE '{}' END
                    || CASE WHEN route IS NOT NULL THEN jsonb_build_object('X-Envoisms-Route', route) ELSE '{}' END,
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
    IF channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, coalesce(sandbox, false));
    END IF;
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
                        WHEN v.opted_out THEN 'OPTED_OUT'
                        WHEN v.wa_refusal IS NOT NULL THEN v.wa_refusal END AS error,
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
                        WHEN v.opted_out THEN 'the recipient opted out'
                        WHEN v.wa_refusal IS NOT NULL THEN envoisms.whatsapp_refusal_message(v.wa_refusal, v.e164) END AS detail
              FROM (SELECT w.*, w.e164 IS NOT NULL AND w.e164 IN (   -- hashed: one read of the account's opt-outs
                               SELECT o.phone FROM envoisms.optouts o
                                WHERE o.account_id = message_send_bulk.account_id) AS opted_out,
                           -- WhatsApp free text: only inside each number's 24-hour window (90_whatsapp.sql)
                           CASE WHEN channel = 'whatsapp' AND w.e164 IS NOT NULL
                                THEN envoisms.whatsapp_refusal(message_send_bulk.account_id, w.e164, sandbox) END AS wa_refusal
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

-- ---- 7. WhatsApp: the 24-hour window, the account's own sender, incoming
-- messages from Meta's callbacks, buttons Meta can carry

INSERT INTO envoisms.error_codes (code, sqlstate, http_status, description) VALUES
    ('WHATSAPP_NOT_CONNECTED', 'EV434', 403, 'The account has no connected WhatsApp Business number to send free text from.'),
    ('OUT_OF_24H_WINDOW',     'EV493', 409, 'The recipient has not written to the account''s WhatsApp number in the last 24 hours.');
ALTER TABLE envoisms.inbound_numbers
    ADD COLUMN phone_number_id text CHECK (phone_number_id IS NULL OR (phone_number_id ~ '^[0-9]{1,32}$' AND channel = 'whatsapp'));
CREATE UNIQUE INDEX inbound_numbers_phone_number_id ON envoisms.inbound_numbers (phone_number_id)
    WHERE phone_number_id IS NOT NULL;
COMMENT ON TABLE envoisms.inbound_numbers IS
'Which account receives the messages sent to a number (E.164) or a short code; a whatsapp row is the account''s connected WhatsApp sender; filled by the operator';

-- How long a customer's message keeps the window open.
CREATE FUNCTION envoisms.whatsapp_window() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN interval '24 hours';

CREATE TABLE envoisms.whatsapp_windows (
    account_id      text NOT NULL REFERENCES envoisms.accounts,
    phone           text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),  -- the customer
    number          text NOT NULL,          -- the account's WhatsApp number they wrote to
    last_inbound_at timestamptz NOT NULL,   -- when they last wrote
    PRIMARY KEY (account_id, phone)
);
COMMENT ON TABLE envoisms.whatsapp_windows IS
'When each customer last wrote to an account on WhatsApp (and to which number): free text reaches them for whatsapp_window() after it';
-- (pg_dump keeps its rows: 96_dump.sql)

CREATE FUNCTION envoisms.whatsapp_window_open(account_id text, phone text, number text, at timestamptz)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    INSERT INTO envoisms.whatsapp_windows AS w (account_id, phone, number, last_inbound_at)
    VALUES (account_id, phone, number, at)
    ON CONFLICT ON CONSTRAINT whatsapp_windows_pkey DO UPDATE
       SET number = EXCLUDED.number, last_inbound_at = EXCLUDED.last_inbound_at
     WHERE w.last_inbound_at < EXCLUDED.last_inbound_at
$$;

CREATE FUNCTION envoisms.whatsapp_refusal(account_id text, phone text, sandbox boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN sandbox THEN CASE phone WHEN '+212600000005' THEN 'OUT_OF_24H_WINDOW'
                                     WHEN '+212600000006' THEN 'WHATSAPP_NOT_CONNECTED' END
        WHEN NOT EXISTS (SELECT 1 FROM envoisms.inbound_numbers n
                          WHERE n.account_id = $1 AND n.channel = 'whatsapp')
            THEN 'WHATSAPP_NOT_CONNECTED'
        WHEN NOT EXISTS (SELECT 1 FROM envoisms.whatsapp_windows w
                          WHERE w.account_id = $1 AND w.phone = $2
                            AND w.last_inbound_at > now() - envoisms.whatsapp_window())
            THEN 'OUT_OF_24H_WINDOW' END
$$;

CREATE FUNCTION envoisms.whatsapp_refusal_message(code text, phone text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE code
    WHEN 'WHATSAPP_NOT_CONNECTED'
        THEN 'this account has no connected WhatsApp Business number to send free text from; '
             || 'send by SMS, or with cascade: true to fall back to SMS'
    WHEN 'OUT_OF_24H_WINDOW'
        THEN format('%s has not written to this account on WhatsApp in the last 24 hours, and WhatsApp allows '
                    'free text only inside that window; send by SMS, or with cascade: true to fall back to SMS', phone)
END;

CREATE FUNCTION envoisms.check_whatsapp_session(account_id text, phone text, cascade boolean, sandbox boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    refusal text := envoisms.whatsapp_refusal(account_id, phone, sandbox);
BEGIN
    IF refusal IS NULL THEN
        RETURN 'whatsapp';
    ELSIF cascade THEN
        RETURN 'sms';
    END IF;
    PERFORM envoisms.raise_error(refusal, envoisms.whatsapp_refusal_message(refusal, phone),
                                 CASE refusal WHEN 'OUT_OF_24H_WINDOW' THEN 'to' ELSE 'channel' END);
    RETURN NULL;
END
$$;

CREATE FUNCTION envoisms.check_whatsapp_connected(account_id text, sandbox boolean) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT sandbox AND NOT EXISTS (SELECT 1 FROM envoisms.inbound_numbers n
                                    WHERE n.account_id = check_whatsapp_connected.account_id
                                      AND n.channel = 'whatsapp') THEN
        PERFORM envoisms.raise_error('WHATSAPP_NOT_CONNECTED',
            envoisms.whatsapp_refusal_message('WHATSAPP_NOT_CONNECTED', NULL), 'channel');
    END IF;
END
$$;

CREATE FUNCTION envoisms.whatsapp_sender(account_id text, message_id text, campaign_id text, to_number text,
                                         metadata jsonb)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN metadata->>'purpose' = 'otp'
             AND EXISTS (SELECT 1 FROM envoisms.verify_sessions v
                          WHERE v.account_id = $1 AND v.session_id = metadata->>'verify_session_id'
                            AND v.message_id = $2)
            THEN '{}'::jsonb
        ELSE coalesce((SELECT jsonb_build_object('phone_number_id', n.phone_number_id)
                         FROM envoisms.inbound_numbers n
                         LEFT JOIN envoisms.whatsapp_windows w
                                ON w.account_id = n.account_id AND w.phone = $4 AND w.number = n.number
                        WHERE n.account_id = $1 AND n.channel = 'whatsapp' AND n.phone_number_id IS NOT NULL
                        ORDER BY w.last_inbound_at DESC NULLS LAST, n.created_at, n.number
                        LIMIT 1), '{}')
             || CASE WHEN $3 IS NOT NULL AND jsonb_typeof(metadata->'template') = 'object'
                          AND EXISTS (SELECT 1 FROM envoisms.campaigns c
                                       WHERE c.account_id = $1 AND c.campaign_id = $3 AND c.template_id IS NOT NULL)
                     THEN jsonb_build_object('template', metadata->'template') ELSE '{}' END END
$$;

CREATE FUNCTION envoisms.whatsapp_message_text(message jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    CASE message->>'type'
        WHEN 'text' THEN message->'text'->>'body'
        WHEN 'button' THEN message->'button'->>'text'
        WHEN 'interactive' THEN coalesce(message->'interactive'->'button_reply'->>'title',
                                         message->'interactive'->'list_reply'->>'title')
        WHEN 'reaction' THEN message->'reaction'->>'emoji'
        ELSE message->(message->>'type')->>'caption' END,
    '[' || coalesce(message->>'type', 'unknown') || ']');

CREATE FUNCTION envoisms.whatsapp_receive(carrier_id text, value jsonb) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    ours text;
    m jsonb;
    n int := 0;
BEGIN
    IF jsonb_typeof(value->'messages') IS DISTINCT FROM 'array' THEN
        RETURN 0;
    END IF;
    SELECT x.number INTO ours FROM envoisms.inbound_numbers x
     WHERE x.phone_number_id = value->'metadata'->>'phone_number_id' AND x.channel = 'whatsapp';
    IF ours IS NULL THEN
        ours := '+' || regexp_replace(coalesce(value->'metadata'->>'display_phone_number', ''), '[^0-9]', '', 'g');
    END IF;
    FOR m IN SELECT e.value FROM jsonb_array_elements(value->'messages') e LOOP
        CONTINUE WHEN jsonb_typeof(m) <> 'object' OR m->>'id' IS NULL OR m->>'from' IS NULL;
        PERFORM envoisms.inbound_receive(carrier_id,
            CASE WHEN m->>'from' ~ '^[0-9]{7,15}$' THEN '+' || (m->>'from') ELSE m->>'from' END,
            ours, envoisms.whatsapp_message_text(m), left(m->>'id', 200), 'whatsapp',
            CASE WHEN m->>'timestamp' ~ '^[0-9]{1,12}$' THEN to_timestamp((m->>'timestamp')::bigint) END);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.check_buttons(buttons jsonb, channel text) RETURNS jsonb
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
        IF label IS NULL OR length(label) NOT BETWEEN 1 AND (CASE t WHEN 'copy' THEN 25 ELSE 20 END) THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('buttons[%s].text must be 1 to %s characters%s', i - 1, CASE t WHEN 'copy' THEN 25 ELSE 20 END,
                       CASE WHEN t <> 'copy' THEN ' (WhatsApp''s limit for a call-to-action button)' ELSE '' END), 'buttons');
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
    IF i > 1 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('a WhatsApp message carries one button (a url or call button is one call-to-action, a copy button '
                   'is the copy-code template); got %s', i), 'buttons');
    END IF;
    RETURN result;
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
    -- WhatsApp free text needs the account's own number and the recipient's
    -- 24-hour window (90_whatsapp.sql), or goes as an SMS at once for a
    -- cascade; an OTP (skip_opt_out: verify_send) goes from the shared sender
    IF channel = 'whatsapp' AND NOT coalesce(skip_opt_out, false) THEN
        IF envoisms.check_whatsapp_session(account_id, e164, cascade, sandbox) = 'sms' THEN
            channel := 'sms';
            btns := NULL;
            n_segments := envoisms.sms_segment_count(message);
            cost_mad := envoisms.unit_price(account_id, 'sms', 'MAD') * n_segments;
            cost_eur := envoisms.unit_price(account_id, 'sms', 'EUR') * n_segments;
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
    IF channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, coalesce(sandbox, false));
        IF template_id IS NOT NULL AND btns IS NOT NULL THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                'a WhatsApp template carries the buttons it was approved with; give buttons with a body, not a template_id',
                'buttons');
        END IF;
    END IF;
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

CREATE OR REPLACE FUNCTION envoisms.campaign_launch(account_id text, campaign_id text, sandbox boolean DEFAULT false,
                                         api_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    c envoisms.campaigns;
    t envoisms.templates;
    price record;
    started timestamptz := now();
    text_body text;
    meta jsonb;
    members int;
    opted int;
    outside int := 0;
    free_text_whatsapp boolean;
    params text[];
    n int;
    too_long record;
    units int;
    run envoisms.bulk_entry[];
    spacing interval;
    run_sandbox boolean;
BEGIN
    SELECT * INTO c FROM envoisms.campaigns x
     WHERE x.account_id = campaign_launch.account_id AND x.campaign_id = campaign_launch.campaign_id
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'campaign not found', 'id');
    END IF;
    IF c.status NOT IN ('draft', 'scheduled') THEN
        PERFORM envoisms.raise_error('CONFLICT', format('the campaign is %s; a campaign is sent once', c.status), 'id');
    END IF;
    IF c.list_id IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the campaign has no list_id to send to', 'list_id');
    END IF;
    PERFORM envoisms.check_account_channel(account_id, c.channel);
    run_sandbox := c.sandbox OR coalesce(sandbox, false);
    IF c.channel = 'whatsapp' THEN
        PERFORM envoisms.check_whatsapp_connected(account_id, run_sandbox);
    END IF;
    free_text_whatsapp := c.channel = 'whatsapp' AND c.template_id IS NULL;
    text_body := c.body;
    meta := coalesce(c.metadata, '{}') || jsonb_build_object('campaign_id', c.campaign_id);
    IF c.template_id IS NOT NULL THEN
        SELECT * INTO t FROM envoisms.templates x WHERE x.account_id = c.account_id AND x.template_id = c.template_id;
        text_body := t.body;
        meta := meta || jsonb_build_object('template', jsonb_build_object('id', t.template_id, 'name', t.name,
                                                                          'language', t.language));
        -- the parameters a WhatsApp template is sent with, in order of first use
        IF c.channel = 'whatsapp' THEN
            SELECT array_agg(p ORDER BY first_at) INTO params
              FROM (SELECT m[1] AS p, min(ord) AS first_at
                      FROM regexp_matches(t.body, '\{\{(name|custom1|custom2|custom3)\}\}', 'g') WITH ORDINALITY AS x(m, ord)
                     GROUP BY m[1]) u;
        END IF;
    END IF;
    SELECT * INTO price FROM envoisms.channel_prices(account_id, c.channel);
    spacing := CASE WHEN c.throttle_per_minute IS NOT NULL
                    THEN make_interval(secs => 60 / c.throttle_per_minute) ELSE interval '0' END;

    -- the recipients, personalised, in order of list membership
    SELECT array_agg(ROW(r.ord, envoisms.new_id('msg'), r.phone, r.body,
                         CASE WHEN params IS NOT NULL THEN jsonb_set(meta, '{template,parameters}', r.parameters) END,
                         s.encoding, CASE WHEN c.channel = 'whatsapp' THEN 1 ELSE s.segments END,
                         NULL, NULL, NULL)::envoisms.bulk_entry ORDER BY r.ord)
             FILTER (WHERE r.reachable),
           count(*) FILTER (WHERE NOT r.reachable)
      INTO run, outside
      FROM (SELECT row_number() OVER (ORDER BY m.added_at, m.contact_id)::int AS ord, k.phone,
                   replace(replace(replace(replace(text_body, '{{name}}', coalesce(k.name, '')),
                           '{{custom1}}', coalesce(k.custom1, '')), '{{custom2}}', coalesce(k.custom2, '')),
                           '{{custom3}}', coalesce(k.custom3, '')) AS body,
                   CASE WHEN params IS NOT NULL THEN
                       (SELECT jsonb_agg(jsonb_build_object('name', p.name, 'text', coalesce(
                                   CASE p.name WHEN 'name' THEN k.name WHEN 'custom1' THEN k.custom1
                                               WHEN 'custom2' THEN k.custom2 ELSE k.custom3 END, '')) ORDER BY p.i)
                          FROM unnest(params) WITH ORDINALITY AS p(name, i)) END AS parameters,
                   NOT free_text_whatsapp OR envoisms.whatsapp_refusal(c.account_id, k.phone, run_sandbox) IS NULL AS reachable
              FROM envoisms.list_members m
              JOIN envoisms.contacts k ON k.account_id = m.account_id AND k.contact_id = m.contact_id
             WHERE m.account_id = c.account_id AND m.list_id = c.list_id
               AND NOT EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = k.account_id AND o.phone = k.phone)) r
      LEFT JOIN LATERAL envoisms.sms_segments(CASE WHEN length(r.body) BETWEEN 1 AND 1600 THEN r.body END) s ON true;
    n := coalesce(cardinality(run), 0);
    SELECT count(*) INTO members FROM envoisms.list_members m WHERE m.account_id = c.account_id AND m.list_id = c.list_id;
    opted := members - n - outside;
    IF n = 0 AND outside > 0 THEN
        PERFORM envoisms.raise_error('OUT_OF_24H_WINDOW',
            format('none of the %s contacts of list %s wrote to this account on WhatsApp in the last 24 hours, and '
                   'WhatsApp allows free text only inside that window (%s opted out); use an approved WhatsApp '
                   'template (template_id) or SMS', outside, c.list_id, opted), 'list_id');
    ELSIF n = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('list %s has no contact to send to (%s opted out)', c.list_id, opted), 'list_id');
    END IF;
    SELECT u.to_number, length(u.body) AS len INTO too_long FROM unnest(run) u WHERE u.encoding IS NULL LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('the personalised message to %s is %s characters; the maximum is 1600', too_long.to_number, too_long.len),
            'body');
    END IF;

    SELECT sum(u.segments) INTO units FROM unnest(run) u;
    IF NOT run_sandbox THEN
        PERFORM envoisms.balance_debit(account_id, units * price.mad);
    END IF;
    INSERT INTO envoisms.messages (account_id, message_id, api_key_id, campaign_id, to_number, sender_id, channel,
                                   body, encoding, segments, cost_mad, cost_eur, charged_mad, sandbox,
                                   metadata, buttons, created_at, updated_at, next_attempt_at, expires_at)
    SELECT c.account_id, u.id, coalesce(campaign_launch.api_key_id, c.api_key_id), c.campaign_id,
           u.to_number, c.sender_id, c.channel, u.body, u.encoding, u.segments,
           price.mad * u.segments, price.eur * u.segments,
           CASE WHEN run_sandbox THEN 0 ELSE price.mad * u.segments END, run_sandbox,
           coalesce(u.metadata, meta), c.buttons, started, started, started + spacing * (u.pos - 1),
           started + spacing * (u.pos - 1) + interval '72 hours'
      FROM unnest(run) WITH ORDINALITY AS u(ord, id, to_number, body, metadata, encoding, segments, error, field,
                                            detail, pos);   -- pos: the place among the recipients sent to

    UPDATE envoisms.campaigns x
       SET status = 'running', started_at = started, total_count = n, error_code = NULL, error_message = NULL
     WHERE x.account_id = c.account_id AND x.campaign_id = c.campaign_id;
    PERFORM envoisms.wake_dispatcher();
    RETURN jsonb_build_object('id', c.campaign_id, 'queued', n, 'total', members, 'opted_out', opted,
                              'cost', jsonb_build_object('eur', envoisms.money(units * price.eur),
                                                         'mad', envoisms.money(units * price.mad)))
        || CASE WHEN free_text_whatsapp THEN jsonb_build_object('out_of_window', outside) ELSE '{}' END;
END
$$;

CREATE OR REPLACE FUNCTION envoisms.sandbox_magic_numbers()
RETURNS TABLE (phone text, outcome text, description text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('+212600000001', 'failed',    'sent, then a delivery report says failed (refunded)'),
           ('+212600000002', 'expired',   'sent, then a delivery report says expired (refunded)'),
           ('+212600000003', 'rejected',  'rejected at submit: failed at once, never sent (refunded)'),
           ('+212600000004', 'transient', 'first attempt fails transiently, retried after 1 s, then delivered'),
           ('+212600000005', 'out_of_window', 'WhatsApp free text refused: OUT_OF_24H_WINDOW (with cascade: sent as SMS)'),
           ('+212600000006', 'not_connected', 'WhatsApp free text refused: WHATSAPP_NOT_CONNECTED (with cascade: sent as SMS)')
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

CREATE OR REPLACE FUNCTION envoisms.api_whatsapp_verify(req envoisms.api_request) RETURNS envoisms.api_reply
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

CREATE OR REPLACE FUNCTION envoisms.api_whatsapp_status(req envoisms.api_request) RETURNS envoisms.api_reply
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

DROP FUNCTION envoisms.inbound_receive(text, text, text, text, text, text);

CREATE FUNCTION envoisms.inbound_receive(carrier_id text, from_number text, to_number text, body text,
                                         carrier_ref text DEFAULT NULL, channel text DEFAULT 'sms',
                                         sent_at timestamptz DEFAULT NULL)
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
    -- one redelivery at a time: the second one finds the first one's row
    IF carrier_ref IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(inbound_receive.carrier_id || '/' || carrier_ref, 8989));
    END IF;
    SELECT n.account_id, n.number INTO acc, ours
      FROM envoisms.inbound_numbers n
     WHERE n.channel = inbound_receive.channel
       AND n.number IN (ours, ltrim(ours, '+'), '+' || ltrim(ours, '+'), coalesce(envoisms.phone_e164(ours, 'MA'), ours))
     LIMIT 1;
    IF acc IS NULL THEN
        INSERT INTO envoisms.inbound_unmatched (carrier_id, from_number, to_number, body, carrier_ref, channel)
        SELECT inbound_receive.carrier_id, sender, to_number, body, carrier_ref, channel
         WHERE carrier_ref IS NULL
            OR NOT EXISTS (SELECT 1 FROM envoisms.inbound_unmatched u
                            WHERE u.carrier_id = inbound_receive.carrier_id AND u.carrier_ref = inbound_receive.carrier_ref);
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

    IF channel = 'whatsapp' AND sender ~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM envoisms.whatsapp_window_open(acc, sender, ours, least(coalesce(sent_at, now()), now()));
    END IF;

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

COMMENT ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text, timestamptz) IS
'Record an inbound message (direction inbound, status received) for the account owning to_number; applies STOP/START; on WhatsApp opens the sender''s 24-hour window';

SELECT pg_catalog.pg_extension_config_dump('envoisms.whatsapp_windows', '');
REVOKE ALL ON envoisms.whatsapp_windows FROM PUBLIC;
REVOKE ALL ON FUNCTION envoisms.whatsapp_window(), envoisms.whatsapp_window_open(text, text, text, timestamptz),
    envoisms.whatsapp_refusal(text, text, boolean), envoisms.whatsapp_refusal_message(text, text),
    envoisms.check_whatsapp_session(text, text, boolean, boolean), envoisms.check_whatsapp_connected(text, boolean),
    envoisms.whatsapp_sender(text, text, text, text, jsonb), envoisms.whatsapp_message_text(jsonb),
    envoisms.whatsapp_receive(text, jsonb), envoisms.inbound_receive(text, text, text, text, text, text, timestamptz) FROM PUBLIC;

-- ---- 8. billing: balance_eur, packs, payment methods, top-ups (Stripe
-- Checkout, bank transfer) credited once, Stripe's signed events; routes
-- may take their fourth segment as :id (api, api_route_refusal, routes.c)

ALTER TABLE envoisms.ledger ADD COLUMN topup_id text,
    ADD CONSTRAINT ledger_topup_id_kind CHECK (topup_id IS NULL OR kind = 'topup');
CREATE UNIQUE INDEX ledger_one_credit_per_topup
    ON envoisms.ledger (topup_id) WHERE topup_id IS NOT NULL;

CREATE FUNCTION envoisms.body_amount(body jsonb, field text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR abs(v::numeric) >= 1e12 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be a number', field), field);
    END IF;
    RETURN v::numeric;
END
$$;

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
LANGUAGE sql STABLE
RETURN coalesce((SELECT s.value FROM envoisms.billing_settings s WHERE s.name = billing_setting.name),
                (SELECT d.value FROM envoisms.billing_setting_defaults() d WHERE d.name = billing_setting.name));

-- Every setting as it applies now, secrets masked ("sk_live_…4242"): what
-- an operator checks after a change.
CREATE FUNCTION envoisms.billing_config()
RETURNS TABLE (name text, value text, is_default boolean, description text)
LANGUAGE sql STABLE AS $$
    SELECT d.name,
           CASE WHEN d.secret AND s.value IS NOT NULL
                THEN coalesce(substring(s.value FROM '^[a-z]+_(?:test_|live_)?'), '') || '…' || right(s.value, 4)
                ELSE coalesce(s.value, d.value) END,
           s.value IS NULL, d.description
      FROM envoisms.billing_setting_defaults() d LEFT JOIN envoisms.billing_settings s ON s.name = d.name
     ORDER BY d.name
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
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('packs', coalesce(jsonb_agg(jsonb_build_object(
               'id', p.pack_id, 'name', p.name, 'sms_count', p.sms_count,
               'price_mad', envoisms.money(p.price_mad),
               'price_eur', envoisms.money(coalesce(p.price_eur, envoisms.mad_to_eur(p.price_mad, 2))),
               'credit_mad', envoisms.money(envoisms.pack_credit(p, pack_list.account_id)))
             ORDER BY p.sort_order, p.price_mad, p.pack_id), '[]'))
      FROM envoisms.billing_packs p WHERE p.active
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
-- failed) becomes completed and the ledger gets its 'topup' row. True when
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
    SELECT coalesce(jsonb_agg(envoisms.topup_json(t) ORDER BY t.topup_id DESC), '[]') INTO rows
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
CREATE OR REPLACE FUNCTION envoisms.api_billing_balance(req envoisms.api_request) RETURNS envoisms.api_reply
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
    ('GET',  '/v1/billing/packs',           'envoisms.api_billing_packs(envoisms.api_request)',           'billing', false),
    ('GET',  '/v1/billing/payment-methods', 'envoisms.api_billing_payment_methods(envoisms.api_request)', 'billing', false),
    ('GET',  '/v1/billing/topups',          'envoisms.api_billing_topups_list(envoisms.api_request)',     'billing', false),
    ('POST', '/v1/billing/topups',          'envoisms.api_billing_topups_create(envoisms.api_request)',   'billing', false),
    ('GET',  '/v1/billing/topups/:id',      'envoisms.api_billing_topups_get(envoisms.api_request)',      'billing', false),
    ('POST', '/v1/billing/stripe/webhook',  'envoisms.api_billing_stripe_webhook(envoisms.api_request)',  'billing', true);

SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_settings', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.billing_packs', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.topups', '');

-- ---- 9. one home per concern: the page checks of the list functions
-- in one helper; psql's \df+ explains the SQL API (a comment on every public
-- domain function)

CREATE FUNCTION envoisms.check_page("limit" int, "offset" int, max_limit int) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF "limit" IS NULL OR "limit" NOT BETWEEN 1 AND max_limit THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('limit must be an integer from 1 to %s', max_limit), 'limit');
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'offset must be an integer of 0 or more', 'offset');
    END IF;
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
    PERFORM envoisms.check_page("limit", "offset", 200);
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

CREATE OR REPLACE FUNCTION envoisms.contact_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
                                      q text DEFAULT NULL, list_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    words tsquery;
    phone_prefix text;
    digits text;
    email_prefix text;
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 500);
    IF q IS NOT NULL AND length(q) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'q must be at most 100 characters', 'q');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    q := nullif(btrim(q), '');
    IF q IS NOT NULL THEN
        phone_prefix := envoisms.contact_phone_prefix(q);
        -- a phone fragment (digits, +, spaces) is not searched among words
        words := CASE WHEN phone_prefix IS NULL THEN envoisms.contact_words_query(q) END;
        digits := CASE WHEN phone_prefix IS NOT NULL AND length(phone_prefix) >= 5 THEN ltrim(phone_prefix, '+') END;
        email_prefix := CASE WHEN q !~ '\s' THEN lower(q) END;
        IF words IS NULL AND phone_prefix IS NULL AND email_prefix IS NULL THEN
            RETURN jsonb_build_object('data', '[]'::jsonb, 'limit', "limit", 'offset', "offset", 'total', 0);
        END IF;
    END IF;

    IF q IS NULL THEN
        -- a listing: the page walks the primary key backwards, the total counts
        SELECT coalesce(jsonb_agg(envoisms.contact_json(p) ORDER BY p.contact_id DESC), '[]') INTO rows
          FROM (SELECT * FROM envoisms.contact_search(account_id, list_id, false, NULL, NULL, NULL, NULL) c
                 ORDER BY c.contact_id DESC LIMIT "limit" OFFSET "offset") p;
        SELECT count(*) INTO n FROM envoisms.contact_search(account_id, list_id, false, NULL, NULL, NULL, NULL);
    ELSE
        -- a search: the hits come from the indexes (BitmapOr) once, then are
        -- counted and sorted; never a walk of the primary key that filters
        -- every contact (the planner cannot estimate prefix matches)
        WITH hits AS MATERIALIZED (
            SELECT * FROM envoisms.contact_search(account_id, list_id, true, words, phone_prefix, digits, email_prefix))
        SELECT (SELECT count(*) FROM hits),
               (SELECT coalesce(jsonb_agg(envoisms.contact_json(p) ORDER BY p.contact_id DESC), '[]')
                  FROM (SELECT * FROM hits h ORDER BY h.contact_id DESC LIMIT "limit" OFFSET "offset") p)
          INTO n, rows;
    END IF;
    RETURN jsonb_build_object('data', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;

CREATE OR REPLACE FUNCTION envoisms.optout_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
                                     phone text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    e164 text;
    rows jsonb;
    n bigint;
BEGIN
    PERFORM envoisms.check_page("limit", "offset", 500);
    IF phone IS NOT NULL THEN
        e164 := envoisms.check_phone(phone, 'phone');
    END IF;
    SELECT coalesce(jsonb_agg(envoisms.optout_json(o) ORDER BY o.created_at DESC, o.phone), '[]') INTO rows
      FROM (SELECT * FROM envoisms.optouts x
             WHERE x.account_id = optout_list.account_id AND (e164 IS NULL OR x.phone = e164)
             ORDER BY x.created_at DESC, x.phone LIMIT "limit" OFFSET "offset") o;
    SELECT count(*) INTO n FROM envoisms.optouts x
     WHERE x.account_id = optout_list.account_id AND (e164 IS NULL OR x.phone = e164);
    RETURN jsonb_build_object('data', rows, 'limit', "limit", 'offset', "offset", 'total', n);
END
$$;

COMMENT ON FUNCTION envoisms.sms_segments(text) IS
'Encoding (gsm7 or ucs2), number of SMS parts, units (septets or UTF-16 code units) and characters of a message body';
COMMENT ON FUNCTION envoisms.sms_split(text) IS
'The parts a message body is sent as, by the same rules as sms_segments';
COMMENT ON FUNCTION envoisms.phone_e164(text, text) IS
'E.164 form of a valid phone number (local numbers need the ISO region), else NULL';
COMMENT ON FUNCTION envoisms.phone_parse(text, text) IS
'Validity, formats, region, line type and English location of a phone number; valid = false for garbage';
COMMENT ON FUNCTION envoisms.phone_country_name(text) IS
'English name of an ISO 3166-1 region supported by libphonenumber, else NULL';
COMMENT ON FUNCTION envoisms.new_id(text) IS
'New time-ordered id: prefix, "_", 12 hex digits of Unix milliseconds, 16 random hex digits';
COMMENT ON FUNCTION envoisms.id_time(text) IS
'Creation time encoded in an id made by new_id, NULL when the id is malformed';
COMMENT ON FUNCTION envoisms.account_create(text, numeric, text, text[]) IS
'Create an account with an opening balance (MAD), a plan and its channels; returns its acc_… id';
COMMENT ON FUNCTION envoisms.account_balance(text) IS
'An account''s balance in MAD (the sum of its balance buckets)';
COMMENT ON FUNCTION envoisms.account_topup(text, numeric, text) IS
'Add money to an account (a ledger topup row with an optional reference); returns the new balance';
COMMENT ON FUNCTION envoisms.message_refund(text, text, text) IS
'Refund a failed or expired message once (a second call refunds nothing); returns the amount refunded';
COMMENT ON FUNCTION envoisms.balance_check(text) IS
'Prove the books: per account, the balance against what the ledger and the messages explain (ok = they agree)';
COMMENT ON FUNCTION envoisms.message_send(text, text, text, text, text, boolean, jsonb, jsonb, text, boolean, text, boolean) IS
'Send one message in the caller''s transaction: validated, priced, debited and queued (POST /v1/messages)';
COMMENT ON FUNCTION envoisms.message_send_bulk(text, jsonb, text, text, text, boolean) IS
'Send up to 10,000 messages at once, all or nothing (POST /v1/messages/bulk)';
COMMENT ON FUNCTION envoisms.message_get(text, text) IS
'One message of an account with its delivery log (GET /v1/messages/:id)';
COMMENT ON FUNCTION envoisms.message_list(text, int, int, text, text, timestamptz, timestamptz, text) IS
'A page of an account''s messages, newest first, with the contract''s filters (GET /v1/messages)';
COMMENT ON FUNCTION envoisms.analytics_summary(text, timestamptz, timestamptz) IS
'Volumes, delivery rate and billed cost of an account between two times (GET /v1/analytics)';
COMMENT ON FUNCTION envoisms.verify_send(text, text, text, text, int, int, text, text, text, boolean) IS
'Start an OTP verification: a fresh code sent by SMS or WhatsApp, only its HMAC stored (POST /v1/verify/send)';
COMMENT ON FUNCTION envoisms.verify_check(text, text, text) IS
'Check an OTP code against a session: verified once, 5 wrong codes kill it (POST /v1/verify/check)';
COMMENT ON FUNCTION envoisms.verify_cancel(text, text) IS
'Void a live verification session: no code verifies it any more (POST /v1/verify/:id/cancel)';
COMMENT ON FUNCTION envoisms.verify_get(text, text) IS
'One verification session of an account (GET /v1/verify/:id)';
COMMENT ON FUNCTION envoisms.number_lookup(text, text) IS
'Validate a phone number: formats, country, carrier, line type and location (POST /v1/verify/lookup)';
COMMENT ON FUNCTION envoisms.contact_create(text, text, text, text, text, jsonb) IS
'Create a contact, optionally in a list (POST /v1/contacts)';
COMMENT ON FUNCTION envoisms.contact_import(text, jsonb, text) IS
'Import up to 10,000 contacts, optionally into a list; reports what was created, updated or refused (POST /v1/contacts/import)';
COMMENT ON FUNCTION envoisms.contact_delete(text, text) IS
'Delete a contact (DELETE /v1/contacts/:id)';
COMMENT ON FUNCTION envoisms.contact_list(text, int, int, text, text) IS
'A page of an account''s contacts, searched by name, phone or email, or by list (GET /v1/contacts)';
COMMENT ON FUNCTION envoisms.contact_list_create(text, text, text) IS
'Create a contact list (POST /v1/contacts/lists)';
COMMENT ON FUNCTION envoisms.contact_lists(text) IS
'Every contact list of an account with its member count (GET /v1/contacts/lists)';
COMMENT ON FUNCTION envoisms.template_create(text, text, text, text, text) IS
'Create a message template (POST /v1/templates)';
COMMENT ON FUNCTION envoisms.template_list(text) IS
'Every template of an account (GET /v1/templates)';
COMMENT ON FUNCTION envoisms.campaign_create(text, text, text, text, text, text, text, timestamptz, jsonb, jsonb, text, boolean) IS
'Create a campaign, a draft or scheduled (POST /v1/campaigns)';
COMMENT ON FUNCTION envoisms.campaign_get(text, text) IS
'One campaign with its progress (GET /v1/campaigns/:id)';
COMMENT ON FUNCTION envoisms.campaign_list(text) IS
'Every campaign of an account (GET /v1/campaigns)';
COMMENT ON FUNCTION envoisms.campaign_launch(text, text, boolean, text) IS
'Send a campaign now: one queued message per reachable list member, debited at once (POST /v1/campaigns/:id/send)';
COMMENT ON FUNCTION envoisms.campaign_schedule_recurring(text, text, text) IS
'Run a copy of the campaign on a cron schedule (pg_cron)';
COMMENT ON FUNCTION envoisms.campaign_unschedule_recurring(text, text) IS
'Stop a campaign''s recurring runs';
COMMENT ON FUNCTION envoisms.webhook_address_refusal(inet) IS
'Why a webhook delivery would refuse to connect to an address, or NULL (the SSRF guard)';
COMMENT ON FUNCTION envoisms.webhook_create(text, text, text[], text, text) IS
'Register a webhook; the only answer that shows its signing secret (POST /v1/webhooks)';
COMMENT ON FUNCTION envoisms.webhook_list(text) IS
'Every live webhook of an account, without secrets (GET /v1/webhooks)';
COMMENT ON FUNCTION envoisms.webhook_update(text, text, text, text[], boolean, text) IS
'Change a webhook''s URL, events, active flag or signature format (PATCH /v1/webhooks/:id)';
COMMENT ON FUNCTION envoisms.webhook_delete(text, text) IS
'Delete a webhook and cancel its pending deliveries (DELETE /v1/webhooks/:id)';
COMMENT ON FUNCTION envoisms.webhook_test(text, text) IS
'Queue a message.test event to one webhook (POST /v1/webhooks/:id/test)';
COMMENT ON FUNCTION envoisms.api_key_create(text, text, boolean, text[], text[], int) IS
'Create an API key as the operator (env_live_… or sandbox env_test_…); the full key is in the answer, only its SHA-256 is stored';
COMMENT ON FUNCTION envoisms.api_key_list(text) IS
'Every API key of an account, active and revoked, without the keys themselves (GET /v1/api-keys)';
COMMENT ON FUNCTION envoisms.api_key_issue(text, text, text, text[], text[], int, boolean) IS
'Create an API key on behalf of another key of the account, within that key''s rights (POST /v1/api-keys)';
COMMENT ON FUNCTION envoisms.api_key_update(text, text, text, text, text[], text[], int, boolean) IS
'Change a key''s name, permissions, allowlist, rate limit or active flag, within the caller''s rights (PATCH /v1/api-keys/:id)';
COMMENT ON FUNCTION envoisms.api_key_revoke(text, text, text) IS
'Revoke an API key for good (DELETE /v1/api-keys/:id)';
COMMENT ON FUNCTION envoisms.optout_add(text, text, text, text) IS
'Add a number to an account''s opt-out list (POST /v1/optouts)';
COMMENT ON FUNCTION envoisms.optout_remove(text, text) IS
'Remove a number from an account''s opt-out list (DELETE /v1/optouts/:phone)';
COMMENT ON FUNCTION envoisms.optout_list(text, int, int, text) IS
'A page of an account''s opt-out list (GET /v1/optouts)';
COMMENT ON FUNCTION envoisms.ratelimit_stats() IS
'The rate limiter''s shared table: buckets in use, capacity, evictions since start';
COMMENT ON FUNCTION envoisms.api(text, text, text, jsonb, text, inet) IS
'The whole HTTP contract as one call: authentication, rate limit, routing, handler, error envelope (what the gateway calls)';
COMMENT ON FUNCTION envoisms.api_precheck(text, text, jsonb, inet) IS
'Whether a request may be read at all, from its head: no row when it may, else the refusal envoisms.api would give';
COMMENT ON FUNCTION envoisms.billing_config() IS
'Every billing setting as it applies now, secrets masked';
COMMENT ON FUNCTION envoisms.pack_list(text) IS
'The operator''s top-up packs as an account sees them (GET /v1/billing/packs)';
COMMENT ON FUNCTION envoisms.payment_methods() IS
'The payment methods this install offers (GET /v1/billing/payment-methods)';
COMMENT ON FUNCTION envoisms.topup_create(text, text, numeric, numeric, text, text) IS
'Start a top-up paid through Stripe Checkout or bank transfer (POST /v1/billing/topups)';
COMMENT ON FUNCTION envoisms.topup_fail(text, text) IS
'Cancel a pending top-up with a reason';
COMMENT ON FUNCTION envoisms.topup_confirm(text) IS
'Confirm a pending top-up as paid (a bank transfer received): credits once; false when it was credited already';
COMMENT ON FUNCTION envoisms.topup_get(text, text) IS
'One top-up of an account (GET /v1/billing/topups/:id)';
COMMENT ON FUNCTION envoisms.topup_list(text, int, int, text) IS
'A page of an account''s top-ups (GET /v1/billing/topups)';
COMMENT ON FUNCTION envoisms.wake_dispatcher() IS
'Wake the dispatchers when the calling transaction commits; false (and nothing happens) without the preload';
COMMENT ON FUNCTION envoisms.wake_webhooks() IS
'Wake the webhook workers when the calling transaction commits; false (and nothing happens) without the preload';
COMMENT ON FUNCTION envoisms.smpp_parse_receipt(text) IS
'Fields of the text form of an SMPP delivery receipt (id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…); an error says what is malformed';
COMMENT ON FUNCTION envoisms.smpp_binds() IS
'One row per running SMPP bind worker: its state (connecting, binding, bound, throttled, backoff, unbinding) and counters since it started';
COMMENT ON FUNCTION envoisms.inbound_receive(text, text, text, text, text, text, timestamptz) IS
'Record an inbound message (direction inbound, status received) for the account owning to_number; applies STOP/START; on WhatsApp opens the sender''s 24-hour window';
COMMENT ON FUNCTION envoisms.expiry_sweep(int) IS
'Expire a batch of messages past their validity (the scheduler calls it); returns how many';
COMMENT ON FUNCTION envoisms.retention_purge(int, int) IS
'Purge the bodies and delivery logs of a batch of messages older than the retention (the scheduler calls it); returns how many';

-- ---- 10. nothing is open to PUBLIC (as 95_grants.sql does at install)
REVOKE ALL ON ALL TABLES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA envoisms FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA envoisms FROM PUBLIC;
