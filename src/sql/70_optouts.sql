-- 70_optouts.sql — the opt-out list: its table, the send-side check, and
-- the routes GET/POST /v1/optouts, DELETE /v1/optouts/:phone (permission
-- "optouts").
--
-- message_send and bulk refuse an opted-out recipient (403 OPTED_OUT,
-- check_not_opted_out), campaigns leave them out of the run. OTP codes
-- (verify/send) are exempt: the recipient asked for the code. Inbound STOP
-- messages add rows with source 'inbound'.

CREATE TABLE envoisms.optouts (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    phone       text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    source      text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'inbound', 'import', 'operator')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, phone)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.optouts', '');

-- whether an account has any opt-out is cached per backend (account_lookup, accounts.c)
CREATE TRIGGER optouts_cache_forget
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON envoisms.optouts
    FOR EACH STATEMENT EXECUTE FUNCTION envoisms.cache_forget();

-- Whether any number opted out of the account (account_lookup's third
-- field). A query of its own, not a join with envoisms.accounts: on a
-- cluster accounts is a reference table and optouts is distributed, and a
-- call delegated to the account's node may not join the two.
CREATE FUNCTION envoisms.account_has_optouts(account_id text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM envoisms.optouts o WHERE o.account_id = account_has_optouts.account_id);
END
$$;

-- Refuse a recipient who opted out (OPTED_OUT). OTP sends skip this check:
-- a one-time code is requested by the recipient themself.
CREATE FUNCTION envoisms.check_not_opted_out(account_id text, phone text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM envoisms.optouts o
                WHERE o.account_id = check_not_opted_out.account_id AND o.phone = check_not_opted_out.phone) THEN
        PERFORM envoisms.raise_error('OPTED_OUT',
            format('%s opted out of messages from this account', phone), 'to');
    END IF;
END
$$;

-- The contract-style opt-out shape.
CREATE FUNCTION envoisms.optout_json(o envoisms.optouts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('phone', o.phone, 'source', o.source, 'reason', o.reason,
                              'created_at', envoisms.iso_time(o.created_at))
$$;

-- Add a number to the account's opt-out list; returns it with "created":
-- false when it was already there (the existing entry is kept unchanged).
CREATE FUNCTION envoisms.optout_add(account_id text, phone text, reason text DEFAULT NULL,
                                    source text DEFAULT 'api')
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    e164 text := envoisms.check_phone(phone, 'phone');
    o envoisms.optouts;
    created boolean := true;
BEGIN
    IF reason IS NOT NULL AND length(reason) > 500 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'reason must be at most 500 characters', 'reason');
    END IF;
    IF source IS NULL OR source NOT IN ('api', 'inbound', 'import', 'operator') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'source must be api, inbound, import or operator', 'source');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = optout_add.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.optouts AS x (account_id, phone, source, reason)
    VALUES (account_id, e164, source, reason)
    ON CONFLICT ON CONSTRAINT optouts_pkey DO NOTHING
    RETURNING * INTO o;
    IF o.phone IS NULL THEN
        created := false;
        SELECT * INTO o FROM envoisms.optouts x WHERE x.account_id = optout_add.account_id AND x.phone = e164;
    END IF;
    RETURN envoisms.optout_json(o) || jsonb_build_object('created', created);
END
$$;
COMMENT ON FUNCTION envoisms.optout_add(text, text, text, text) IS
'Add a number to an account''s opt-out list (POST /v1/optouts)';

-- Remove a number from the opt-out list, or NOT_FOUND when it is not on it.
CREATE FUNCTION envoisms.optout_remove(account_id text, phone text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    e164 text := envoisms.check_phone(phone, 'phone');
BEGIN
    DELETE FROM envoisms.optouts x WHERE x.account_id = optout_remove.account_id AND x.phone = e164;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', format('%s is not on the opt-out list', e164), 'phone');
    END IF;
    RETURN jsonb_build_object('deleted', true, 'phone', e164);
END
$$;
COMMENT ON FUNCTION envoisms.optout_remove(text, text) IS
'Remove a number from an account''s opt-out list (DELETE /v1/optouts/:phone)';

-- A page of the account's opt-outs, newest first (`phone` looks one number up).
CREATE FUNCTION envoisms.optout_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
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
COMMENT ON FUNCTION envoisms.optout_list(text, int, int, text) IS
'A page of an account''s opt-out list (GET /v1/optouts)';

-- The phone of DELETE /v1/optouts/:phone: an unencoded "+" in a URL path
-- arrives as a space after URL decoding, and a bare 212… means +212….
CREATE FUNCTION envoisms.optout_path_phone(segment text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN btrim(segment) ~ '^[0-9]' THEN '+' || btrim(segment) ELSE btrim(segment) END;

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_optouts_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.optout_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 100, 1, 500),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        CASE WHEN req.query ? 'phone' THEN envoisms.optout_path_phone(req.query->>'phone') END));
END
$$;

CREATE FUNCTION envoisms.api_optouts_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    o jsonb;
BEGIN
    IF jsonb_typeof(req.body->'phone') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'phone must be E.164 format, for example +212612345678', 'phone');
    END IF;
    o := envoisms.optout_add(req.account_id, envoisms.body_text(req.body, 'phone'),
                             envoisms.body_text(req.body, 'reason'), 'api');
    RETURN envoisms.reply(CASE WHEN (o->>'created')::boolean THEN 201 ELSE 200 END, o);
END
$$;

CREATE FUNCTION envoisms.api_optouts_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.optout_remove(req.account_id, envoisms.optout_path_phone(req.id)));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/optouts',     'envoisms.api_optouts_list(envoisms.api_request)',   'optouts'),
    ('POST',   '/v1/optouts',     'envoisms.api_optouts_create(envoisms.api_request)', 'optouts'),
    ('DELETE', '/v1/optouts/:id', 'envoisms.api_optouts_delete(envoisms.api_request)', 'optouts');
