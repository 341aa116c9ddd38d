-- 10_errors.sql — the one table that maps every user-reachable error to its
-- SQLSTATE, API code and HTTP status, and the helpers that raise them.
--
-- Domain functions raise with envoisms.raise_error('INVALID_PHONE', message,
-- field); SQL callers see the SQLSTATE (class EV) and the message, HTTP
-- callers get the contract's envelope built by envoisms.api from this table.

CREATE TABLE envoisms.error_codes (
    code        text PRIMARY KEY,
    sqlstate    char(5) NOT NULL UNIQUE CHECK (sqlstate ~ '^EV[0-9A-Z]{3}$'),
    http_status int NOT NULL CHECK (http_status BETWEEN 400 AND 599),
    description text NOT NULL
);
INSERT INTO envoisms.error_codes (code, sqlstate, http_status, description) VALUES
    ('VALIDATION_ERROR',      'EV400', 400, 'A field is missing or invalid; the message names it.'),
    ('INVALID_PHONE',         'EV401', 400, 'The recipient number is not a valid E.164 number.'),
    ('INVALID_JSON',          'EV402', 400, 'The request body is not valid JSON.'),
    ('UNAUTHORIZED',          'EV411', 401, 'The API key is missing or invalid.'),
    ('INSUFFICIENT_BALANCE',  'EV421', 402, 'The balance does not cover the cost.'),
    ('FORBIDDEN',             'EV431', 403, 'The API key lacks the permission for this route.'),
    ('CHANNEL_NOT_ALLOWED',   'EV432', 403, 'The channel is not enabled on the account.'),
    ('OPTED_OUT',             'EV433', 403, 'The recipient opted out of messages from this account.'),
    ('WHATSAPP_NOT_CONNECTED', 'EV434', 403, 'The account has no connected WhatsApp Business number to send free text from.'),
    ('NOT_FOUND',             'EV441', 404, 'No such route or object in this account.'),
    ('METHOD_NOT_ALLOWED',    'EV451', 405, 'The route exists but not with this method.'),
    ('CONFLICT',              'EV491', 409, 'The object is not in a state that allows this.'),
    ('IDEMPOTENCY_IN_FLIGHT', 'EV492', 409, 'A request with this Idempotency-Key is still being processed.'),
    ('OUT_OF_24H_WINDOW',     'EV493', 409, 'The recipient has not written to the account''s WhatsApp number in the last 24 hours.'),
    ('EXPIRED',               'EV410', 410, 'The object expired.'),
    ('PAYLOAD_TOO_LARGE',     'EV413', 413, 'The request is larger than the limit.'),
    ('IDEMPOTENCY_MISMATCH',  'EV422', 422, 'The Idempotency-Key was used with a different request.'),
    ('RATE_LIMITED',          'EV429', 429, 'Too many requests for this API key.'),
    ('TOO_MANY_ATTEMPTS',     'EV42A', 429, 'Too many attempts; wait or start over.'),
    ('INTERNAL_ERROR',        'EV500', 500, 'An unexpected error; it was logged.'),
    ('SERVICE_UNAVAILABLE',   'EV503', 503, 'The service is temporarily unavailable.');

-- Raise the error `code` with a human message; `field` names the offending
-- request field (shown in the envelope as error.field).
CREATE FUNCTION envoisms.raise_error(code text, message text, field text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    state text;
BEGIN
    SELECT e.sqlstate INTO state FROM envoisms.error_codes e WHERE e.code = raise_error.code;
    IF state IS NULL THEN
        RAISE EXCEPTION 'unknown envoisms error code "%"', code;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, COLUMN = coalesce(field, '');
END
$$;

-- The contract's time format: 2026-05-15T10:30:00Z (UTC, whole seconds); json.c.
CREATE FUNCTION envoisms.iso_time(ts timestamptz) RETURNS text
AS 'MODULE_PATHNAME', 'iso_time' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- Money as a JSON number without trailing zeros (0.31, not 0.3100). STABLE
-- like to_jsonb, so the planner inlines it (an IMMUTABLE wrapper around a
-- STABLE call would be called, and re-planned, on every use).
CREATE FUNCTION envoisms.money(amount numeric) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_jsonb(trim_scale(amount));

-- Parse an ISO 8601 time given by a user, or raise VALIDATION_ERROR naming the field.
CREATE FUNCTION envoisms.parse_time(value text, field text) RETURNS timestamptz
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

-- Check a page's limit (1 to max_limit) and offset (0 or more) given to a
-- domain function, or raise VALIDATION_ERROR naming the one at fault.
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
