-- 65_apikeys.sql — API keys managed over HTTP: GET/POST /v1/api-keys,
-- PATCH/DELETE /v1/api-keys/:id.
--
-- The operator creates keys with envoisms.api_key_create (below);
-- here a key manages its account's keys, with these rules on top:
--   * no escalation: a key creates, changes or re-enables a key only within
--     its own rights: no permission it lacks (a key with NULL permissions has
--     them all, an empty list means none), no address outside its own IP
--     allowlist (an empty allowlist is any address, so a key bound to
--     addresses cannot make an unbound one), no higher rate limit (NULL is
--     unlimited). A new key defaults to the creating key's permissions and
--     allowlist, and to 100 requests per minute or the creator's lower limit.
--     Deactivating or revoking a key is never an escalation;
--   * a key is live or test like the key that creates it, unless the body
--     says "key_prefix": "env_test" / "env_live"; a test (sandbox) key cannot
--     create a live key, nor change or revoke one;
--   * revoking (DELETE, or PATCH active=false) is immediate — envoisms.api
--     reads keys through api_key_lookup(), whose cache every backend forgets
--     when api_keys changes (keys.c) — and answers with a
--     "warning" when the calling key revokes itself or when no active key is
--     left in the account.
-- Over HTTP rate_limit is 10..1000 requests per minute (default 100).

-- A permission list as stored: sorted, without duplicates. NULL (every
-- permission) stays NULL and an empty list stays empty (no permission): an
-- aggregate over no row would turn it into NULL, that is into every one.
CREATE FUNCTION envoisms.permissions_normalize(permissions text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN permissions IS NOT NULL THEN ARRAY(SELECT DISTINCT p FROM unnest(permissions) p ORDER BY p) END;

-- Create an API key; returns the contract's POST /v1/api-keys response with
-- the full key (shown once: only its SHA-256 is stored). NULL permissions =
-- all, an empty list = none; the operator may set any rate limit or NULL
-- (unlimited).
CREATE FUNCTION envoisms.api_key_create(account_id text, name text DEFAULT 'API key', live boolean DEFAULT true,
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
COMMENT ON FUNCTION envoisms.api_key_create(text, text, boolean, text[], text[], int) IS
'Create an API key as the operator (env_live_… or sandbox env_test_…); the full key is in the answer, only its SHA-256 is stored';

-- Parse a list of IPs or CIDRs (text) or raise VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.parse_ip_list(entries text[], field text) RETURNS cidr[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    e text;
    result cidr[] := '{}';
BEGIN
    IF entries IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(entries) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', format('%s has at most 100 entries', field), field);
    END IF;
    FOREACH e IN ARRAY entries LOOP
        BEGIN
            IF e IS NULL OR e !~ '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' THEN
                RAISE invalid_text_representation;
            END IF;
            result := result || e::inet::cidr;
        EXCEPTION WHEN invalid_text_representation OR invalid_binary_representation THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR',
                format('%s entries must be IP addresses or CIDR ranges, got "%s"', field, left(e, 64)), field);
        END;
    END LOOP;
    RETURN result;
END
$$;
-- The contract's API key shape (never the key itself: only its hash is kept).
CREATE FUNCTION envoisms.api_key_json(k envoisms.api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', k.api_key_id, 'name', k.name, 'key_prefix', k.key_prefix, 'key_hint', '…' || k.key_hint,
        'ip_whitelist', to_jsonb(ARRAY(SELECT CASE WHEN masklen(n) = CASE family(n) WHEN 4 THEN 32 ELSE 128 END
                                                   THEN host(n) ELSE n::text END
                                         FROM unnest(coalesce(k.ip_whitelist, '{}')) n)),
        'rate_limit', k.rate_limit,
        'permissions', to_jsonb(coalesce(k.permissions, envoisms.api_permissions())),
        'active', k.active, 'last_used_at', envoisms.iso_time(k.last_used_at),
        'created_at', envoisms.iso_time(k.created_at), 'revoked_at', envoisms.iso_time(k.revoked_at))
$$;

-- Every key of the account (active and revoked), newest first.
CREATE FUNCTION envoisms.api_key_list(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.api_key_json(ROW(k.*)::envoisms.api_keys) ORDER BY k.api_key_id DESC), '[]'))
          FROM envoisms.api_keys k WHERE k.account_id = api_key_list.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.api_key_list(text) IS
'Every API key of an account, active and revoked, without the keys themselves (GET /v1/api-keys)';

-- Raise FORBIDDEN unless a key with these permissions, IP allowlist and
-- rate limit grants nothing that `holder` lacks: every permission held (NULL
-- = every one), every allowed address inside holder's allowlist (NULL or
-- empty = any address), a rate limit no higher (NULL = unlimited).
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

-- Raise FORBIDDEN when a test (sandbox) key would manage a live key.
CREATE FUNCTION envoisms.check_key_kind(caller envoisms.api_keys, target_prefix text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF caller.key_prefix = 'env_test' AND target_prefix = 'env_live' THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a test key can only manage test keys', 'id');
    END IF;
END
$$;

-- Validate permission names (VALIDATION_ERROR) and an HTTP rate limit.
CREATE FUNCTION envoisms.check_key_fields(permissions text[], rate_limit int) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    bad text;
BEGIN
    SELECT p INTO bad FROM unnest(permissions) p WHERE p IS NULL OR NOT p = ANY (envoisms.api_permissions()) LIMIT 1;
    IF FOUND THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            format('unknown permission "%s"; allowed: %s', left(bad, 50), array_to_string(envoisms.api_permissions(), ', ')),
            'permissions');
    END IF;
    IF rate_limit IS NOT NULL AND rate_limit NOT BETWEEN 10 AND 1000 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rate_limit must be an integer from 10 to 1000', 'rate_limit');
    END IF;
END
$$;

-- The calling key, or NOT_FOUND.
CREATE FUNCTION envoisms.api_key_row(account_id text, api_key_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k envoisms.api_keys;
BEGIN
    SELECT * INTO k FROM envoisms.api_keys x
     WHERE x.account_id = api_key_row.account_id AND x.api_key_id = api_key_row.api_key_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'API key not found', 'id');
    END IF;
    RETURN k;
END
$$;

-- The key (or console session, ses_…: console_session_key() in
-- 92_console_auth.sql) a request over HTTP is made with, or NOT_FOUND.
CREATE FUNCTION envoisms.api_key_caller(account_id text, caller_key_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF caller_key_id LIKE 'ses\_%' THEN
        RETURN envoisms.console_session_key(account_id, caller_key_id);
    END IF;
    RETURN envoisms.api_key_row(account_id, caller_key_id);
END
$$;

-- Create a key on behalf of the key `issuer_key_id` (no escalation, live or
-- test like the issuer unless `live` says otherwise; NULL permissions, IP
-- allowlist and rate limit default to the issuer's, the rate limit to at
-- most 100); returns the contract's POST /v1/api-keys response with the
-- full key, shown once.
CREATE FUNCTION envoisms.api_key_issue(account_id text, issuer_key_id text, name text DEFAULT NULL,
                                       permissions text[] DEFAULT NULL, ip_whitelist text[] DEFAULT NULL,
                                       rate_limit int DEFAULT NULL, live boolean DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    issuer envoisms.api_keys := envoisms.api_key_caller(account_id, issuer_key_id);
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
COMMENT ON FUNCTION envoisms.api_key_issue(text, text, text, text[], text[], int, boolean) IS
'Create an API key on behalf of another key of the account, within that key''s rights (POST /v1/api-keys)';

-- The warning that goes with a revocation, or NULL.
CREATE FUNCTION envoisms.api_key_revoke_warning(account_id text, revoked_key_id text, caller_key_id text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT nullif(concat_ws(' ',
            CASE WHEN revoked_key_id = caller_key_id
                 THEN 'This request revoked the API key it was made with: that key no longer authenticates.' END,
            CASE WHEN NOT EXISTS (SELECT 1 FROM envoisms.api_keys k
                                   WHERE k.account_id = api_key_revoke_warning.account_id AND k.active)
                 THEN 'The account has no active API key left: create one from the console.' END), ''));
END
$$;

-- Change a key's name, permissions, IP allowlist, rate limit or active flag
-- (NULL = unchanged). With a caller (over HTTP), a key that is active after
-- the change must be within the caller's rights (check_no_escalation), and a
-- test key changes test keys only. A revoked key cannot be changed.
CREATE FUNCTION envoisms.api_key_update(account_id text, caller_key_id text, api_key_id text,
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
        caller := envoisms.api_key_caller(account_id, caller_key_id);
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
COMMENT ON FUNCTION envoisms.api_key_update(text, text, text, text, text[], text[], int, boolean) IS
'Change a key''s name, permissions, allowlist, rate limit or active flag, within the caller''s rights (PATCH /v1/api-keys/:id)';

-- Revoke a key for good (revoked_at, inactive); revoking a revoked key
-- changes nothing. A test caller revokes test keys only. Warns when the
-- caller revokes itself or the account is left without an active key.
CREATE FUNCTION envoisms.api_key_revoke(account_id text, api_key_id text, caller_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    target envoisms.api_keys := envoisms.api_key_row(account_id, api_key_id);
    revoked timestamptz := now();
BEGIN
    IF caller_key_id IS NOT NULL THEN
        PERFORM envoisms.check_key_kind(envoisms.api_key_caller(account_id, caller_key_id), target.key_prefix);
    END IF;
    -- (a value for now(): Citus refuses a non-immutable function in coalesce)
    UPDATE envoisms.api_keys x SET revoked_at = coalesce(x.revoked_at, revoked), active = false
     WHERE x.account_id = target.account_id AND x.api_key_id = target.api_key_id;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'revoked', true, 'id', api_key_id,
        'warning', envoisms.api_key_revoke_warning(account_id, api_key_id, caller_key_id)));
END
$$;
COMMENT ON FUNCTION envoisms.api_key_revoke(text, text, text) IS
'Revoke an API key for good (DELETE /v1/api-keys/:id)';

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_keys_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.api_key_list(req.account_id));
END
$$;

-- The kind of key asked for: "key_prefix" ("env_live" | "env_test") or
-- "scope" ("live" | "test", as the official Python client's README says);
-- both may be given if they agree.
CREATE FUNCTION envoisms.api_keys_create(req envoisms.api_request) RETURNS envoisms.api_reply
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

CREATE FUNCTION envoisms.api_keys_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NOT (req.body ?| ARRAY['name', 'permissions', 'ip_whitelist', 'rate_limit', 'active']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'give at least one of name, permissions, ip_whitelist, rate_limit, active', 'name');
    END IF;
    RETURN envoisms.reply(200, envoisms.api_key_update(
        req.account_id, req.api_key_id, req.id,
        envoisms.body_text(req.body, 'name'),
        envoisms.body_text_array(req.body, 'permissions'),
        envoisms.body_text_array(req.body, 'ip_whitelist'),
        envoisms.body_int(req.body, 'rate_limit', NULL, 10, 1000),
        envoisms.body_bool(req.body, 'active', NULL)));
END
$$;

CREATE FUNCTION envoisms.api_keys_revoke(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.api_key_revoke(req.account_id, req.id, req.api_key_id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/api-keys',     'envoisms.api_keys_list(envoisms.api_request)',   'api_keys'),
    ('POST',   '/v1/api-keys',     'envoisms.api_keys_create(envoisms.api_request)', 'api_keys'),
    ('PATCH',  '/v1/api-keys/:id', 'envoisms.api_keys_update(envoisms.api_request)', 'api_keys'),
    ('DELETE', '/v1/api-keys/:id', 'envoisms.api_keys_revoke(envoisms.api_request)', 'api_keys');
