-- 80_api.sql — envoisms.api(): the whole HTTP contract as one function.
--
-- One call per HTTP request (the gateway's only statement): route (method,
-- path) through envoisms.api_endpoints to a handler, authenticate the Bearer
-- key (SHA-256 looked up in api_keys; active; not revoked; client IP in the
-- allowlist), take a token from the key's and its account's rate-limit
-- buckets (shared memory), check the route's permission,
-- and turn every error into the contract's envelope with the HTTP status of
-- envoisms.error_codes. Every handler runs inside a subtransaction, so an
-- error leaves nothing behind (no message, no debit).
--
-- Areas add routes by inserting into api_endpoints a handler of signature
-- handler(envoisms.api_request) RETURNS envoisms.api_reply; the dispatcher is
-- never edited for a new route. Handlers read the parsed body (req.body,
-- always a JSON object for POST/PATCH) and query (req.query, a JSON object of
-- strings), and the path parameter (req.id).

-- The request and reply types and the api_endpoints table are in
-- 36_api_types.sql, before the area files that define handlers and routes.

-- The routes served, for documentation checks (the gateway's OpenAPI test).
CREATE FUNCTION envoisms.api_routes() RETURNS TABLE (method text, template text, permission text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.method, e.template, e.permission FROM envoisms.api_endpoints e ORDER BY e.template, e.method;
END
$$;

CREATE FUNCTION envoisms.api_call(handler regprocedure, request envoisms.api_request)
RETURNS envoisms.api_reply
AS 'MODULE_PATHNAME', 'api_call' LANGUAGE C STRICT VOLATILE;

-- One token from the key's bucket and from its account's (ratelimit.c).
CREATE FUNCTION envoisms.ratelimit_take(key_id text, per_minute int, account_key text DEFAULT NULL,
                                        OUT allowed boolean, OUT remaining int, OUT retry_after int)
AS 'MODULE_PATHNAME', 'ratelimit_take' LANGUAGE C VOLATILE;

-- The rate limiter's table: buckets in use, how many fit, evictions since start.
CREATE FUNCTION envoisms.ratelimit_stats(OUT buckets bigint, OUT capacity int, OUT evictions bigint)
AS 'MODULE_PATHNAME', 'ratelimit_stats' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION envoisms.ratelimit_stats() IS
'The rate limiter''s shared table: buckets in use, capacity, evictions since start';

CREATE FUNCTION envoisms.ratelimit_reset(key_id text) RETURNS boolean
AS 'MODULE_PATHNAME', 'ratelimit_reset' LANGUAGE C STRICT VOLATILE;

-- Request headers with lower-case names and string values (json.c).
CREATE FUNCTION envoisms.headers_normalize(headers jsonb) RETURNS jsonb
AS 'MODULE_PATHNAME', 'headers_normalize' LANGUAGE C IMMUTABLE;

-- SHA-256 of the key in "Authorization: Bearer env_live_...|env_test_...", or NULL (crypto.c).
CREATE FUNCTION envoisms.api_key_hash(authorization text) RETURNS text
AS 'MODULE_PATHNAME', 'api_key_hash' LANGUAGE C STRICT IMMUTABLE;

-- The active, unrevoked key with that hash and its account's status (every
-- field NULL when there is none), cached per backend and forgotten by every
-- backend when api_keys or accounts change (keys.c, cache.c).
CREATE FUNCTION envoisms.api_key_lookup(key_hash text, OUT account_id text, OUT api_key_id text, OUT key_prefix text,
                                        OUT permissions text[], OUT ip_whitelist cidr[], OUT rate_limit int,
                                        OUT last_used_at timestamptz, OUT account_status text)
AS 'MODULE_PATHNAME', 'api_key_lookup' LANGUAGE C STABLE;
-- The route serving (method, path): the exact path's, else the :id
-- template's (by_template); every field NULL when none. The whole of
-- api_endpoints is cached per backend (routes.c, cache.c).
CREATE FUNCTION envoisms.api_route(method text, path text, OUT handler regprocedure, OUT permission text,
                                   OUT template text, OUT public boolean, OUT by_template boolean)
AS 'MODULE_PATHNAME', 'api_route' LANGUAGE C STRICT STABLE;
CREATE TRIGGER api_endpoints_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();
CREATE TRIGGER api_keys_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();
CREATE TRIGGER accounts_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- A request body as jsonb in one parse, or why it is no JSON object jsonb
-- accepts ('syntax', 'nul', 'number', 'object'); both NULL for blanks only (json.c).
CREATE FUNCTION envoisms.body_jsonb(body text, OUT value jsonb, OUT problem text)
AS 'MODULE_PATHNAME', 'body_jsonb' LANGUAGE C STRICT IMMUTABLE;

-- Decode a URL component (%XX and '+'); NULL when it is not valid UTF-8.
CREATE FUNCTION envoisms.url_decode(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog AS $$
BEGIN
    IF strpos(value, '%') = 0 THEN
        RETURN replace(value, '+', ' ');
    END IF;
    RETURN convert_from(
        (SELECT string_agg(CASE WHEN m[1] IS NOT NULL THEN decode(substr(m[1], 2), 'hex')
                                ELSE convert_to(m[2], 'UTF8') END, ''::bytea ORDER BY ord)
           FROM regexp_matches(replace(value, '+', ' '), '(%[0-9A-Fa-f]{2})|([^%]+|%)', 'g')
                WITH ORDINALITY AS t(m, ord)), 'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character OR invalid_parameter_value THEN
    RETURN NULL;
END
$$;

-- Parse a query string into a JSON object of strings (the first of repeated keys wins).
CREATE FUNCTION envoisms.query_parse(query text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    result jsonb;
BEGIN
    IF query IS NULL OR query = '' THEN
        RETURN '{}';
    END IF;
    SELECT jsonb_object_agg(k, v) INTO result
      FROM (SELECT DISTINCT ON (k) k, v
              FROM (SELECT envoisms.url_decode(split_part(p, '=', 1)) AS k,
                           envoisms.url_decode(substr(p, strpos(p || '=', '=') + 1)) AS v, ord
                      FROM unnest(string_to_array(query, '&')) WITH ORDINALITY AS t(p, ord)
                     WHERE p <> '') x
             ORDER BY k, ord) y
     WHERE k IS NOT NULL;
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(result, '{}')) WHERE value = 'null') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'the query string is not valid UTF-8');
    END IF;
    RETURN coalesce(result, '{}');
END
$$;

-- Read an integer query parameter within [low, high], or raise VALIDATION_ERROR.
CREATE FUNCTION envoisms.query_int(query jsonb, name text, fallback int, low int, high int) RETURNS int
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v text := query->>name;
BEGIN
    IF v IS NULL THEN
        RETURN fallback;
    END IF;
    IF v !~ '^\s*[0-9]{1,9}\s*$' OR v::int NOT BETWEEN low AND high THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('%s must be an integer from %s to %s', name, low, high), name);
    END IF;
    RETURN v::int;
END
$$;

-- Read a string field of a JSON body: absent/null → NULL; anything but a
-- string → VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.body_text(body jsonb, field text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be a string', field), field);
    END IF;
    RETURN v #>> '{}';
END
$$;

-- Read a boolean field of a JSON body (absent/null → fallback).
CREATE FUNCTION envoisms.body_bool(body jsonb, field text, fallback boolean) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN fallback;
    END IF;
    IF jsonb_typeof(v) <> 'boolean' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be true or false', field), field);
    END IF;
    RETURN v::boolean;
END
$$;

-- Read an integer field of a JSON body within [low, high] (absent/null → fallback).
CREATE FUNCTION envoisms.body_int(body jsonb, field text, fallback int, low int, high int) RETURNS int
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN fallback;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR (v #>> '{}') !~ '^-?[0-9]{1,9}$' OR (v #>> '{}')::int NOT BETWEEN low AND high THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('%s must be an integer from %s to %s', field, low, high), field);
    END IF;
    RETURN (v #>> '{}')::int;
END
$$;

-- An amount field of a JSON body: absent/null → NULL; anything but a number → VALIDATION_ERROR.
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

-- Read an array-of-strings field (absent/null → NULL).
CREATE FUNCTION envoisms.body_text_array(body jsonb, field text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    v jsonb := body->field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) <> 'string') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s must be an array of strings', field), field);
    END IF;
    RETURN ARRAY(SELECT jsonb_array_elements_text(v));
END
$$;

-- Build a reply.
CREATE FUNCTION envoisms.reply(status int, body jsonb) RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE RETURN ROW(status, '{}'::jsonb, body)::envoisms.api_reply;

-- The contract's error envelope for an API code.
CREATE FUNCTION envoisms.error_envelope(code text, message text, field text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('error', jsonb_strip_nulls(jsonb_build_object(
        'code', code, 'message', message, 'field', nullif(field, ''),
        'docs', 'https://envoisms.ma/docs#errors')));

-- Raise the one answer every failed authentication gets (no oracle).
CREATE FUNCTION envoisms.raise_unauthorized() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.raise_error('UNAUTHORIZED',
        'invalid or missing API key: send Authorization: Bearer env_live_... or env_test_... from an allowed address');
END
$$;

-- Why an authenticated request is not served: no route (NOT_FOUND), not
-- this method (METHOD_NOT_ALLOWED, with the Allow header's value), or a
-- permission the key lacks (FORBIDDEN; 'billing' covers 'balance'); every
-- field NULL when it is served. Only an unknown route is looked up here
-- again, so that the request path pays nothing for it.
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

CREATE FUNCTION envoisms.api(method text, path text, query text DEFAULT '', headers jsonb DEFAULT '{}',
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
    a record;           -- api_account(): the account's part, on a cluster
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
        IF k.api_key_id IS NULL AND NOT coalesce(r.public, false) AND NOT hdr ? 'authorization' AND hdr ? 'cookie' THEN
            -- a console session's cookie instead of a key (92_console_auth.sql)
            k := envoisms.console_session_auth(hdr, method, r.permission, client_ip, true);
        END IF;
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
        -- (on a cluster, on the account's node: 96_distribute.sql)
        IF k.account_id IS NOT NULL AND envoisms.cluster_mode() AND envoisms.cluster_delegates(r.permission) THEN
            -- constants, not parameters: Citus delegates a call whose account is a constant
            EXECUTE format('SELECT * FROM envoisms.api_account(%L, %L::regprocedure, %L::envoisms.api_request, %L)',
                           k.account_id, r.handler, req,
                           CASE WHEN method = 'POST' AND hdr ? 'idempotency-key' THEN hdr->>'idempotency-key' END)
               INTO a;
            IF a.err_state IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = a.err_state, MESSAGE = a.err_message, COLUMN = coalesce(a.err_column, ''),
                                      DETAIL = coalesce(a.err_detail, ''), HINT = coalesce(a.err_context, '');
            END IF;
            rep := a.reply;
        ELSIF method = 'POST' AND k.api_key_id IS NOT NULL AND hdr ? 'idempotency-key' THEN
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
COMMENT ON FUNCTION envoisms.api(text, text, text, jsonb, text, inet) IS
'The whole HTTP contract as one call: authentication, rate limit, routing, handler, error envelope (what the gateway calls)';

-- Whether a request may be read at all, from its head alone: no row when it
-- may (a public route, or a key that authenticates and holds the route's
-- permission), else the reply envoisms.api would give (401, 403, 404, 405).
-- The gateway calls it before reading a large body, so that a refused
-- request is answered without its body ever being read. It takes no
-- rate-limit token and writes nothing: envoisms.api checks everything again.
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
        headers := envoisms.headers_normalize(headers);
        k := envoisms.api_key_lookup(envoisms.api_key_hash(headers->>'authorization'));
        IF k.api_key_id IS NULL AND NOT headers ? 'authorization' AND headers ? 'cookie' THEN
            k := envoisms.console_session_auth(headers, method, r.permission, client_ip, false);
        END IF;
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
COMMENT ON FUNCTION envoisms.api_precheck(text, text, jsonb, inet) IS
'Whether a request may be read at all, from its head: no row when it may, else the refusal envoisms.api would give';

-- ---- handlers of the messages and analytics routes (billing: 82_billing.sql)

-- The fields of a POST /v1/messages body with their defaults, or in
-- bad_field the first one of a wrong type (json.c).
CREATE FUNCTION envoisms.message_request(body jsonb, OUT "to" text, OUT message text, OUT "from" text,
                                         OUT channel text, OUT cascade boolean, OUT metadata jsonb,
                                         OUT buttons jsonb, OUT bad_field text)
AS 'MODULE_PATHNAME', 'message_request' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION envoisms.api_messages_create(req envoisms.api_request) RETURNS envoisms.api_reply
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

CREATE FUNCTION envoisms.api_messages_bulk(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.message_send_bulk(
        req.account_id,
        req.body->'messages',
        coalesce(envoisms.body_text(req.body, 'from'), 'ENVOISMS'),
        coalesce(envoisms.body_text(req.body, 'channel'), 'sms'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_messages_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.message_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 50, 1, 200),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        req.query->>'status',
        req.query->>'channel',
        envoisms.parse_time(req.query->>'from_date', 'from_date'),
        envoisms.parse_time(req.query->>'to_date', 'to_date'),
        req.query->>'direction', req.query->>'to', req.query->>'campaign_id'));
END
$$;

CREATE FUNCTION envoisms.api_messages_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.message_get(req.account_id, req.id));
END
$$;

-- GET /v1/analytics: from_date and to_date (the contract), or "days" (the
-- last N days, what the official clients send) when from_date is absent.
CREATE FUNCTION envoisms.api_analytics(req envoisms.api_request) RETURNS envoisms.api_reply
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

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/messages',        'envoisms.api_messages_create(envoisms.api_request)', 'send'),
    ('POST', '/v1/messages/bulk',   'envoisms.api_messages_bulk(envoisms.api_request)',   'send'),
    ('GET',  '/v1/messages',        'envoisms.api_messages_list(envoisms.api_request)',   'status'),
    ('GET',  '/v1/messages/:id',    'envoisms.api_messages_get(envoisms.api_request)',    'status'),
    ('GET',  '/v1/analytics',       'envoisms.api_analytics(envoisms.api_request)',       'analytics');
