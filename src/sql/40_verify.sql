-- 40_verify.sql — verification (OTP): POST /v1/verify/send, POST /v1/verify/check,
-- GET /v1/verify/:id.
--
-- Security design:
--   * the code comes from envoisms.random_digits (OpenSSL CSPRNG, rejection
--     sampling: uniform digits, no modulo bias);
--   * only HMAC-SHA256(per-install secret, session_id ':' code) is stored; the
--     secret is a one-row table readable by the extension owner only, used
--     through one SECURITY DEFINER function;
--   * the check compares HMACs with envoisms.secure_equals (constant time);
--   * a session is single use; after 5 wrong codes it is dead, even for the
--     right code (429 TOO_MANY_ATTEMPTS); an expired one answers 410 EXPIRED;
--   * a wrong code, an unknown session (or another account's) and an already
--     used session all get the same 200 {"verified": false} answer;
--   * sends are capped per number (5 per 10 minutes per account) and per
--     number block (E.164 without its last 4 digits: 10,000 numbers) per day,
--     to blunt SMS pumping. Both caps are per account in verify_limits.
--
-- Locking: verify_check changes the session with conditional UPDATEs (right
-- code: sent → verified; wrong code: attempts + 1) whose conditions are
-- re-checked on the latest row version when another check holds it, so
-- concurrent checks of one session serialise on the row: exactly one right
-- code verifies, and wrong attempts can never pass the cap. verify_send takes a
-- transaction advisory lock on (account, number block) while it counts and
-- inserts, so concurrent sends cannot overshoot either cap.
--
-- The OTP message is a real outbound message (message_send: priced, debited,
-- refunded if it finally fails). OTPs are exempt from opt-outs: the
-- recipient asked for the code.

CREATE TABLE envoisms.verify_secret (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret     text NOT NULL CHECK (secret ~ '^[0-9a-f]{64}$')
);
REVOKE ALL ON envoisms.verify_secret FROM PUBLIC;
-- pg_dump keeps the secret: sessions stay checkable after a restore. It is
-- made on first use, not by this script, so a restore does not collide with
-- a fresh one.
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_secret', '');

-- Anti-abuse limits; account_id '*' holds the defaults, a row for an account overrides.
CREATE TABLE envoisms.verify_limits (
    account_id            text PRIMARY KEY DEFAULT '*',
    sends_per_number      int NOT NULL DEFAULT 5 CHECK (sends_per_number > 0),     -- per 10 minutes
    sends_per_block_daily int NOT NULL DEFAULT 200 CHECK (sends_per_block_daily > 0),
    max_check_attempts    int NOT NULL DEFAULT 5 CHECK (max_check_attempts BETWEEN 1 AND 10)
);
INSERT INTO envoisms.verify_limits (account_id) VALUES ('*');
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_limits', 'WHERE account_id <> ''*''');

-- No foreign key to accounts, as for messages (00_schema.sql): the check
-- would KEY SHARE-lock the account row on every OTP sent; verify_send has
-- already checked the account (check_account_channel), which is never deleted.
CREATE TABLE envoisms.verify_sessions (
    account_id   text NOT NULL,
    session_id   text NOT NULL CHECK (session_id ~ '^vrf_[0-9a-f]{28}$'),
    api_key_id   text,
    to_number    text NOT NULL,
    number_block text NOT NULL,                 -- to_number without its last 4 digits
    channel      text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    message_id   text NOT NULL,
    code_hmac    text NOT NULL CHECK (code_hmac ~ '^[0-9a-f]{64}$'),
    status       text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'verified', 'failed', 'voided')),
    attempts     int  NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 10),
    max_attempts int  NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 10),   -- the account's limit at send time
    sandbox      boolean NOT NULL DEFAULT false,
    expires_at   timestamptz NOT NULL,
    verified_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, session_id),
    CHECK ((status = 'verified') = (verified_at IS NOT NULL)),
    CHECK (attempts <= max_attempts)
) WITH (fillfactor = 80);   -- room for HOT updates: every session is updated by its check
CREATE INDEX verify_sessions_block ON envoisms.verify_sessions (account_id, number_block, created_at);
SELECT pg_catalog.pg_extension_config_dump('envoisms.verify_sessions', '');

-- HMAC of a code for a session, keyed by the per-install secret (the only
-- reader of verify_secret).
-- (PL/pgSQL rather than SQL: the plan of the secret's lookup is cached per session.)
CREATE FUNCTION envoisms.verify_code_hmac(session_id text, code text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    key text;
BEGIN
    SELECT s.secret INTO key FROM envoisms.verify_secret s;
    IF key IS NULL THEN
        INSERT INTO envoisms.verify_secret (secret) VALUES (envoisms.random_bytes_hex(32))
            ON CONFLICT (singleton) DO NOTHING;
        SELECT s.secret INTO key FROM envoisms.verify_secret s;
    END IF;
    RETURN envoisms.hmac_sha256_hex(key, session_id || ':' || code);
END
$$;

-- The limits that apply to an account (PL/pgSQL: its plan is cached).
CREATE FUNCTION envoisms.verify_account_limits(account_id text) RETURNS envoisms.verify_limits
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    lim envoisms.verify_limits;
BEGIN
    SELECT l.* INTO lim FROM envoisms.verify_limits l
     WHERE l.account_id IN (verify_account_limits.account_id, '*')
     ORDER BY l.account_id = '*' LIMIT 1;
    RETURN lim;
END
$$;

-- The contract's GET /v1/verify/:id shape, with what the official clients
-- read beside it: "status" in their set (pending, verified, failed, expired,
-- voided) and "attempts" (wrong codes so far).
CREATE FUNCTION envoisms.verify_json(s envoisms.verify_sessions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.session_id, 'to', s.to_number, 'channel', s.channel, 'message_id', s.message_id,
        'status', CASE WHEN s.status = 'sent' AND s.expires_at <= now() THEN 'expired'
                       WHEN s.status = 'sent' THEN 'pending' ELSE s.status END,
        'attempts', s.attempts,
        'expires_at', envoisms.iso_time(s.expires_at), 'verified_at', envoisms.iso_time(s.verified_at),
        'created_at', envoisms.iso_time(s.created_at))
$$;

-- An OTP message carries its code in clear in its body, and only while a
-- carrier may still need it (retries, a WhatsApp cascade falling back to
-- SMS): once the message is final (delivered, failed, expired) the body is
-- purged, as retention later does for every message, so that the code is
-- then stored nowhere but as the session's HMAC.
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

-- Start a verification: send a fresh code to `to`; returns the contract's
-- POST /v1/verify/send response. Commits with the caller's transaction.
CREATE FUNCTION envoisms.verify_send(account_id text, "to" text, channel text DEFAULT 'sms',
                                     brand text DEFAULT 'EnvoiSMS', code_length int DEFAULT 6,
                                     expiry int DEFAULT 600, template text DEFAULT NULL,
                                     otp_button_text text DEFAULT NULL, api_key_id text DEFAULT NULL,
                                     sandbox boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('vrf');
    e164 text;
    block text;
    lim envoisms.verify_limits;
    code text;
    body text;
    msg jsonb;
    expires timestamptz;
    created timestamptz := now();
BEGIN
    channel := coalesce(channel, 'sms');
    brand := coalesce(brand, 'EnvoiSMS');
    code_length := coalesce(code_length, 6);
    expiry := coalesce(expiry, 600);
    e164 := envoisms.check_phone("to");
    PERFORM envoisms.check_account_channel(account_id, channel);
    IF code_length NOT BETWEEN 4 AND 8 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'code_length must be an integer from 4 to 8', 'code_length');
    END IF;
    IF expiry NOT BETWEEN 60 AND 1800 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'expiry must be an integer from 60 to 1800 (seconds)', 'expiry');
    END IF;
    IF length(btrim(brand)) = 0 OR length(brand) > 32 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'brand must be 1 to 32 characters', 'brand');
    END IF;
    IF template IS NOT NULL THEN
        IF strpos(template, '{{code}}') = 0 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'template must contain {{code}}', 'template');
        END IF;
        IF length(template) > 1000 THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'template must be at most 1000 characters', 'template');
        END IF;
    END IF;
    IF otp_button_text IS NOT NULL AND length(btrim(otp_button_text)) NOT BETWEEN 1 AND 25 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'otp_button_text must be 1 to 25 characters', 'otp_button_text');
    END IF;

    -- anti-abuse caps, counted under a lock on the number block
    block := left(e164, length(e164) - 4);
    lim := envoisms.verify_account_limits(account_id);
    PERFORM pg_advisory_xact_lock(hashtextextended(account_id || '/' || block, 4040));
    IF (SELECT count(*) FROM envoisms.verify_sessions s
         WHERE s.account_id = verify_send.account_id AND s.number_block = block
           AND s.to_number = e164 AND s.created_at > now() - interval '10 minutes') >= lim.sends_per_number THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('at most %s verification codes per number every 10 minutes; wait before sending another',
                   lim.sends_per_number), 'to');
    END IF;
    IF (SELECT count(*) FROM envoisms.verify_sessions s
         WHERE s.account_id = verify_send.account_id AND s.number_block = block
           AND s.created_at > now() - interval '24 hours') >= lim.sends_per_block_daily THEN
        PERFORM envoisms.raise_error('TOO_MANY_ATTEMPTS',
            format('daily limit of %s verification codes to numbers starting %s reached (protection against SMS pumping)',
                   lim.sends_per_block_daily, block), 'to');
    END IF;

    code := envoisms.random_digits(code_length);
    body := replace(replace(coalesce(template, '{{brand}} : votre code de vérification est {{code}}. Il expire dans '
                                               || ceil(expiry / 60.0)::int || ' min.'),
                            '{{brand}}', brand), '{{code}}', code);
    msg := envoisms.message_send(account_id, e164, body, 'ENVOISMS', channel, false,
                                 jsonb_build_object('purpose', 'otp', 'verify_session_id', id),
                                 CASE WHEN channel = 'whatsapp' THEN jsonb_build_array(jsonb_build_object(
                                     'type', 'copy', 'text', coalesce(btrim(otp_button_text), 'Copier le code'),
                                     'value', code)) END,
                                 api_key_id, sandbox, NULL, true);
    expires := created + make_interval(secs => expiry);
    INSERT INTO envoisms.verify_sessions (account_id, session_id, api_key_id, to_number, number_block, channel,
                                          message_id, code_hmac, max_attempts, sandbox, expires_at, created_at)
    VALUES (account_id, id, api_key_id, e164, block, channel, msg->>'id',
            envoisms.verify_code_hmac(id, code), lim.max_check_attempts, sandbox, expires, created);
    RETURN jsonb_build_object('session_id', id, 'message_id', msg->>'id', 'to', e164, 'channel', channel,
                              'expires_at', envoisms.iso_time(expires), 'status', 'sent');
END
$$;
COMMENT ON FUNCTION envoisms.verify_send(text, text, text, text, int, int, text, text, text, boolean) IS
'Start an OTP verification: a fresh code sent by SMS or WhatsApp, only its HMAC stored (POST /v1/verify/send)';

-- Check a code; returns the contract's POST /v1/verify/check response, with
-- "status" ("verified", or "failed" for this check) for the official clients.
-- Right code: {"verified": true} once, and a verify.success webhook event.
-- Wrong code, unknown session or used session: {"verified": false} (200).
-- Expired or voided: EXPIRED (410). Dead after too many wrong codes:
-- TOO_MANY_ATTEMPTS (429).
CREATE FUNCTION envoisms.verify_check(account_id text, session_id text, code text)
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
COMMENT ON FUNCTION envoisms.verify_check(text, text, text) IS
'Check an OTP code against a session: verified once, 5 wrong codes kill it (POST /v1/verify/check)';

-- Void a session (the user gave up, the app moved on): no code verifies it
-- any more. Voiding a voided session changes nothing; a verified one is a
-- CONFLICT, an expired or dead one is left as it is. Returns the session as
-- GET /v1/verify/:id shows it.
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
COMMENT ON FUNCTION envoisms.verify_cancel(text, text) IS
'Void a live verification session: no code verifies it any more (POST /v1/verify/:id/cancel)';

-- One verification session of an account, or NOT_FOUND.
CREATE FUNCTION envoisms.verify_get(account_id text, session_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.verify_sessions;
BEGIN
    SELECT * INTO s FROM envoisms.verify_sessions x
     WHERE x.account_id = verify_get.account_id AND x.session_id = verify_get.session_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'verification session not found', 'id');
    END IF;
    RETURN envoisms.verify_json(s);
END
$$;
COMMENT ON FUNCTION envoisms.verify_get(text, text) IS
'One verification session of an account (GET /v1/verify/:id)';

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_verify_send(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'to must be E.164 format, for example +212612345678', 'to');
    END IF;
    RETURN envoisms.reply(201, envoisms.verify_send(
        req.account_id,
        envoisms.body_text(b, 'to'),
        coalesce(envoisms.body_text(b, 'channel'), 'sms'),
        coalesce(envoisms.body_text(b, 'brand'), 'EnvoiSMS'),
        envoisms.body_int(b, 'code_length', 6, 4, 8),
        envoisms.body_int(b, 'expiry', 600, 60, 1800),
        envoisms.body_text(b, 'template'),
        envoisms.body_text(b, 'otp_button_text'),
        req.api_key_id,
        req.sandbox));
END
$$;

CREATE FUNCTION envoisms.api_verify_check(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    code jsonb := req.body->'code';
BEGIN
    -- a code typed as a JSON number is accepted (leading zeros are the caller's problem)
    RETURN envoisms.reply(200, envoisms.verify_check(
        req.account_id,
        envoisms.body_text(req.body, 'session_id'),
        CASE WHEN jsonb_typeof(code) = 'number' THEN code::text ELSE envoisms.body_text(req.body, 'code') END));
END
$$;

CREATE FUNCTION envoisms.api_verify_get(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.verify_get(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_verify_cancel(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.verify_cancel(req.account_id, req.id));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('POST', '/v1/verify/send',  'envoisms.api_verify_send(envoisms.api_request)',  'verify'),
    ('POST', '/v1/verify/check', 'envoisms.api_verify_check(envoisms.api_request)', 'verify'),
    ('GET',  '/v1/verify/:id',   'envoisms.api_verify_get(envoisms.api_request)',   'verify'),
    ('POST', '/v1/verify/:id/cancel', 'envoisms.api_verify_cancel(envoisms.api_request)', 'verify');
