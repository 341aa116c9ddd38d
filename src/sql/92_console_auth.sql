-- 92_console_auth.sql — the console's people and sessions: users of an
-- account (email + scrypt password, optional second factor by envoisms' own
-- verify), sign-in with backoff, sessions carried by an HttpOnly cookie and
-- stored hashed, CSRF, and the session's place in envoisms.api().
--
-- A console session is an API caller like a key: api() (80_api.sql) reads
-- the envoisms_session cookie when a request has no Authorization header
-- and console_session_auth() answers with the fields api_key_lookup() gives
-- for a key: the account, the session id in place of a key id (ses_…, so the
-- rate limiter, the idempotency store and message rows name it), the role's
-- permissions plus 'console', and a live key's prefix. Every rule of the API
-- therefore holds for the console too; api_key_row() (65_apikeys.sql) shows
-- a session as a live key holding its role's permissions, so a session
-- creates no key beyond its role.
--
-- Locking: a sign-in locks the throttle rows of its email and client address
-- (console_signin_throttle, in subject order) for its transaction, so two
-- concurrent sign-ins count failures one after the other and the fifth
-- failure blocks the sixth attempt whatever the interleaving
-- (test/isolation/specs/console_signin.spec). A failed sign-in answers 401
-- without raising, so that the failure it counted is committed.

-- ---- passwords (password.c: scrypt through OpenSSL)

CREATE FUNCTION envoisms.password_hash(password text, log_n int DEFAULT 14) RETURNS text
AS 'MODULE_PATHNAME', 'password_hash' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION envoisms.password_hash(text, int) IS
'A salted scrypt hash of a password ($scrypt$ln=…,r=8,p=1$salt$key), N = 2^log_n';

CREATE FUNCTION envoisms.password_verify(password text, hash text) RETURNS boolean
AS 'MODULE_PATHNAME', 'password_verify' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION envoisms.password_verify(text, text) IS
'Whether a password matches a password_hash() value (constant-time; an unreadable hash never matches)';

-- ---- tables

-- The console's settings, filled by the operator: the seller's legal
-- identifiers printed on invoices, where second-factor codes are sent from
-- (two_factor_account, default the user's own account; two_factor_sandbox
-- 'on' sends them as sandbox messages, for demos and tests), and a
-- session's rate limit per minute (session_rate_limit, default 600; 0: none).
CREATE TABLE envoisms.console_settings (
    name  text PRIMARY KEY CHECK (name IN ('seller_name', 'seller_ice', 'seller_if', 'seller_rc',
                                           'seller_address', 'seller_city', 'seller_email',
                                           'two_factor_account', 'two_factor_sandbox', 'session_rate_limit')),
    value text NOT NULL CHECK (length(value) <= 500),
    CHECK (name <> 'session_rate_limit' OR value ~ '^[0-9]{1,6}$'),
    CHECK (name <> 'two_factor_sandbox' OR value IN ('on', 'off'))
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_settings', '');

CREATE TABLE envoisms.console_users (
    account_id      text NOT NULL REFERENCES envoisms.accounts,
    user_id         text NOT NULL CHECK (user_id ~ '^usr_[0-9a-f]{28}$'),
    email           text NOT NULL CHECK (email = lower(email) AND length(email) <= 254
                                         AND email ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'),
    name            text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    role            text NOT NULL CHECK (role IN ('owner', 'developer', 'billing', 'viewer')),
    operator        boolean NOT NULL DEFAULT false,     -- the install's operator area
    password_hash   text NOT NULL CHECK (password_hash LIKE '$scrypt$%'),
    phone           text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    two_factor      boolean NOT NULL DEFAULT false,
    two_factor_channel text NOT NULL DEFAULT 'sms' CHECK (two_factor_channel IN ('sms', 'whatsapp')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz,
    PRIMARY KEY (account_id, user_id),
    CHECK (NOT two_factor OR phone IS NOT NULL)
);
-- A sign-in finds the account from the email: emails are global.
CREATE UNIQUE INDEX console_users_email ON envoisms.console_users (email);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_users', '');

-- Sessions: only the SHA-256 of the cookie's token is stored. A session
-- lives until revoked_at, expires_at (absolute), or 30 minutes after
-- last_seen_at (idle).
CREATE TABLE envoisms.console_sessions (
    account_id   text NOT NULL,
    session_id   text NOT NULL CHECK (session_id ~ '^ses_[0-9a-f]{28}$'),
    user_id      text NOT NULL,
    token_hash   text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    client_ip    inet,
    user_agent   text CHECK (length(user_agent) <= 300),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    PRIMARY KEY (account_id, session_id),
    FOREIGN KEY (account_id, user_id) REFERENCES envoisms.console_users ON DELETE CASCADE
);
-- The cookie names the session by its token alone.
CREATE UNIQUE INDEX console_sessions_token ON envoisms.console_sessions (token_hash);
CREATE INDEX console_sessions_user ON envoisms.console_sessions (account_id, user_id);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_sessions', '');

-- Failed sign-ins per subject ('email:…', 'ip:…') in a 15-minute window,
-- and until when the subject is refused.
CREATE TABLE envoisms.console_signin_throttle (
    subject       text PRIMARY KEY CHECK (length(subject) <= 300),
    failures      int NOT NULL DEFAULT 0 CHECK (failures >= 0),
    window_start  timestamptz NOT NULL DEFAULT now(),
    blocked_until timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_signin_throttle', '');

-- Second-factor challenges: a right password whose code was sent by
-- verify_send() on verify_account_id, waiting for POST /v1/console/sign-in/verify.
CREATE TABLE envoisms.console_challenges (
    account_id        text NOT NULL,
    challenge_id      text NOT NULL CHECK (challenge_id ~ '^chl_[0-9a-f]{28}$'),
    user_id           text NOT NULL,
    verify_account_id text NOT NULL,
    verify_session_id text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    used_at           timestamptz,
    PRIMARY KEY (account_id, challenge_id),
    FOREIGN KEY (account_id, user_id) REFERENCES envoisms.console_users ON DELETE CASCADE
);
CREATE UNIQUE INDEX console_challenges_id ON envoisms.console_challenges (challenge_id);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_challenges', '');

-- ---- roles

-- The API permissions of a console role ('console': the console's own routes).
CREATE FUNCTION envoisms.console_role_permissions(role text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE role
    WHEN 'owner' THEN envoisms.api_permissions()
    WHEN 'developer' THEN ARRAY['send', 'status', 'verify', 'contacts', 'campaigns', 'webhooks', 'api_keys',
                                'analytics', 'optouts']
    WHEN 'billing' THEN ARRAY['billing', 'balance', 'analytics']
    WHEN 'viewer' THEN ARRAY['status', 'analytics', 'campaigns', 'contacts', 'verify', 'balance']
    END || ARRAY['console'];

-- A console session as the API key rules see it (api_key_caller(),
-- 65_apikeys.sql): a live key holding its role's permissions (the owner's:
-- NULL, every one), no IP allowlist, no rate-limit cap.
CREATE FUNCTION envoisms.console_session_key(account_id text, session_id text) RETURNS envoisms.api_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k envoisms.api_keys;
BEGIN
    SELECT s.account_id, s.session_id, 'console session', 'env_live', s.token_hash, '',
           CASE WHEN u.role <> 'owner' THEN array_remove(envoisms.console_role_permissions(u.role), 'console') END,
           NULL, NULL, true, NULL, s.created_at, s.revoked_at
      INTO k
      FROM envoisms.console_sessions s
      JOIN envoisms.console_users u ON u.account_id = s.account_id AND u.user_id = s.user_id
     WHERE s.account_id = console_session_key.account_id AND s.session_id = console_session_key.session_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'console session not found', 'id');
    END IF;
    RETURN k;
END
$$;

-- A console setting, or NULL.
CREATE FUNCTION envoisms.console_setting(name text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN (SELECT s.value FROM envoisms.console_settings s WHERE s.name = console_setting.name);

-- ---- users

-- Create a user of an account (the operator's first owner, and invitations);
-- returns its usr_… id. The password is at least 10 characters.
CREATE FUNCTION envoisms.console_user_create(account_id text, email text, password text, role text DEFAULT 'owner',
                                             name text DEFAULT '', phone text DEFAULT NULL,
                                             operator boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('usr');
BEGIN
    email := lower(btrim(email));
    IF email IS NULL OR length(email) > 254 OR email !~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email must be an email address', 'email');
    END IF;
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    PERFORM envoisms.console_check_password(password);
    IF length(coalesce(name, '')) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be at most 200 characters', 'name');
    END IF;
    IF phone IS NOT NULL THEN
        phone := envoisms.check_phone(phone, 'phone');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = console_user_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.console_users (account_id, user_id, email, name, role, operator, password_hash, phone)
    VALUES (account_id, id, email, coalesce(btrim(name), ''), role, coalesce(operator, false),
            envoisms.password_hash(password), phone)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('CONFLICT', 'a user with this email exists already', 'email');
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.console_user_create(text, text, text, text, text, text, boolean) IS
'Create a console user of an account (email, password, role); returns its usr_… id';

-- Raise VALIDATION_ERROR unless the password is 10 to 200 characters.
CREATE FUNCTION envoisms.console_check_password(password text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF password IS NULL OR length(password) NOT BETWEEN 10 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'password must be 10 to 200 characters', 'password');
    END IF;
END
$$;

CREATE FUNCTION envoisms.console_user_json(u envoisms.console_users) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('user_id', u.user_id, 'email', u.email, 'name', u.name, 'role', u.role,
                          'phone', u.phone, 'two_factor', u.two_factor, 'two_factor_channel', u.two_factor_channel,
                          'operator', u.operator,
                          'created_at', envoisms.iso_time(u.created_at),
                          'last_sign_in_at', envoisms.iso_time(u.last_sign_in_at));

CREATE FUNCTION envoisms.console_account_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('account_id', a.account_id, 'name', a.name, 'status', a.status,
                              'balance_mad', envoisms.money(b.mad),
                              'balance_eur', envoisms.money(envoisms.mad_to_eur(b.mad)))
      FROM envoisms.accounts a, LATERAL (SELECT envoisms.account_balance(a.account_id) AS mad) b
     WHERE a.account_id = console_account_json.account_id
$$;

-- ---- sessions

-- The token of the envoisms_session cookie in a Cookie header, or NULL.
CREATE FUNCTION envoisms.console_cookie_token(cookie text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN substring(cookie FROM '(?:^|;)\s*envoisms_session=([0-9a-f]{64})\s*(?:;|$)');

-- The CSRF token of a session token: derived, so nothing more is stored,
-- and the session token cannot be read back from it.
CREATE FUNCTION envoisms.console_csrf_token(token text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN envoisms.sha256_hex('envoisms-csrf/' || token);

-- The Set-Cookie value that carries (or, with NULL, clears) a session.
CREATE FUNCTION envoisms.console_cookie(token text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog
RETURN CASE WHEN token IS NULL THEN 'envoisms_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0'
            ELSE 'envoisms_session=' || token || '; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=43200' END;

-- When a session ends unless used again.
CREATE FUNCTION envoisms.console_session_end(s envoisms.console_sessions) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
RETURN least(s.expires_at, s.last_seen_at + interval '30 minutes');

-- The live session a Cookie header names, or nothing.
CREATE FUNCTION envoisms.console_session_of(cookie text) RETURNS envoisms.console_sessions
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT s.* FROM envoisms.console_sessions s
     WHERE s.token_hash = envoisms.sha256_hex(envoisms.console_cookie_token(cookie))
       AND s.revoked_at IS NULL AND envoisms.console_session_end(s) > now()
$$;

-- FORBIDDEN unless a request's Origin, when it has one, is its own Host:
-- writes and sign-ins come from the console's own pages (no login CSRF).
CREATE FUNCTION envoisms.console_check_origin(headers jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
    origin_host text := substring(headers->>'origin' FROM '^https?://([^/]+)$');
BEGIN
    IF headers ? 'origin' AND (origin_host IS NULL OR lower(origin_host) IS DISTINCT FROM lower(headers->>'host')) THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'a console write must come from the console''s own origin');
    END IF;
END
$$;

-- Authenticate a request by its session cookie, for envoisms.api(): the
-- fields api_key_lookup() gives for a key (all NULL when the cookie names
-- no live session). Writes (any method but GET and HEAD) need the session's
-- X-CSRF-Token and, when an Origin is sent, the request's own host, else
-- FORBIDDEN; a viewer writes only to the console's own routes. touch:
-- slide the idle expiry (at most once a minute).
CREATE FUNCTION envoisms.console_session_auth(headers jsonb, method text, permission text, client_ip inet,
                                              touch boolean,
                                              OUT account_id text, OUT api_key_id text, OUT key_prefix text,
                                              OUT permissions text[], OUT ip_whitelist cidr[], OUT rate_limit int,
                                              OUT last_used_at timestamptz, OUT account_status text)
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.console_sessions := envoisms.console_session_of(headers->>'cookie');
    u envoisms.console_users;
BEGIN
    IF s.session_id IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = s.account_id AND x.user_id = s.user_id;
    SELECT a.status INTO account_status FROM envoisms.accounts a WHERE a.account_id = s.account_id;
    IF method NOT IN ('GET', 'HEAD') THEN
        IF NOT envoisms.secure_equals(coalesce(headers->>'x-csrf-token', ''),
                                      envoisms.console_csrf_token(envoisms.console_cookie_token(headers->>'cookie'))) THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'a console write needs the session''s X-CSRF-Token header');
        END IF;
        PERFORM envoisms.console_check_origin(headers);
        IF u.role = 'viewer' AND permission IS DISTINCT FROM 'console' THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'the viewer role can only read');
        END IF;
    END IF;
    IF touch AND s.last_seen_at < now() - interval '1 minute' THEN
        UPDATE envoisms.console_sessions x SET last_seen_at = now()
         WHERE x.account_id = s.account_id AND x.session_id = s.session_id;
    END IF;
    account_id := s.account_id;
    api_key_id := s.session_id;
    key_prefix := 'env_live';
    permissions := envoisms.console_role_permissions(u.role);
    -- requests a minute per session (and the account's live bucket); 0: none
    rate_limit := nullif(coalesce(envoisms.console_setting('session_rate_limit'), '600')::int, 0);
    last_used_at := now();     -- api() updates api_keys.last_used_at, which a session has not
END
$$;

-- Start a session for a user: its row, and the reply that sets its cookie.
CREATE FUNCTION envoisms.console_session_start(u envoisms.console_users, client_ip inet, user_agent text)
RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    token text := envoisms.random_bytes_hex(32);
    s envoisms.console_sessions;
BEGIN
    INSERT INTO envoisms.console_sessions (account_id, session_id, user_id, token_hash, client_ip, user_agent, expires_at)
    VALUES (u.account_id, envoisms.new_id('ses'), u.user_id, envoisms.sha256_hex(token), client_ip,
            left(user_agent, 300), now() + interval '12 hours')
    RETURNING * INTO s;
    UPDATE envoisms.console_users x SET last_sign_in_at = now()
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN ROW(200, jsonb_build_object('Set-Cookie', envoisms.console_cookie(token), 'Cache-Control', 'no-store'),
               envoisms.console_session_json(s, token))::envoisms.api_reply;
END
$$;

-- GET /v1/console/session's body.
CREATE FUNCTION envoisms.console_session_json(s envoisms.console_sessions, token text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('user', envoisms.console_user_json(u), 'account', envoisms.console_account_json(u.account_id),
                              'role', u.role, 'permissions', to_jsonb(envoisms.console_role_permissions(u.role)),
                              'operator', u.operator, 'csrf_token', envoisms.console_csrf_token(token),
                              'expires_at', envoisms.iso_time(envoisms.console_session_end(s)))
      FROM envoisms.console_users u WHERE u.account_id = s.account_id AND u.user_id = s.user_id
$$;

-- The session user of a console request, or FORBIDDEN: a key, a role not
-- among `roles` (NULL: any), or not the operator when `operator` is asked.
CREATE FUNCTION envoisms.console_caller(req envoisms.api_request, roles text[] DEFAULT NULL,
                                        operator boolean DEFAULT false)
RETURNS envoisms.console_users
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    u envoisms.console_users;
BEGIN
    SELECT x.* INTO u FROM envoisms.console_sessions s
      JOIN envoisms.console_users x ON x.account_id = s.account_id AND x.user_id = s.user_id
     WHERE s.account_id = req.account_id AND s.session_id = req.api_key_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'this route needs a console session, not an API key');
    END IF;
    IF operator AND NOT u.operator THEN
        PERFORM envoisms.raise_error('FORBIDDEN', 'this route is for the operator only');
    END IF;
    IF roles IS NOT NULL AND NOT u.role = ANY (roles) THEN
        PERFORM envoisms.raise_error('FORBIDDEN',
            format('this needs the %s role', array_to_string(roles, ' or ')));
    END IF;
    RETURN u;
END
$$;

-- ---- sign-in and its backoff

-- Lock the throttle rows of a sign-in (email and client address), in subject
-- order; the seconds to wait when one is blocked, else NULL.
CREATE FUNCTION envoisms.console_throttle_lock(subjects text[]) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    until timestamptz;
BEGIN
    INSERT INTO envoisms.console_signin_throttle (subject)
    SELECT x FROM unnest(subjects) x ORDER BY 1
    ON CONFLICT DO NOTHING;
    SELECT max(t.blocked_until) INTO until
      FROM (SELECT * FROM envoisms.console_signin_throttle x
             WHERE x.subject = ANY (subjects) ORDER BY x.subject FOR UPDATE) t;
    IF until > now() THEN
        RETURN greatest(1, ceil(extract(epoch FROM until - now())))::int;
    END IF;
    RETURN NULL;
END
$$;

-- Count a failed sign-in for each subject (locked by console_throttle_lock):
-- from the fifth failure in 15 minutes, the subject waits 30 s, doubled by
-- each further failure, at most 15 minutes.
CREATE FUNCTION envoisms.console_throttle_fail(subjects text[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog AS $$
    UPDATE envoisms.console_signin_throttle t
       SET failures = n.failures, window_start = n.window_start,
           blocked_until = CASE WHEN n.failures >= 5
                                THEN now() + make_interval(secs => least(900, 30 * 2 ^ least(n.failures - 5, 10)))
                           END
      FROM (SELECT x.subject,
                   CASE WHEN x.window_start < now() - interval '15 minutes' THEN 1 ELSE x.failures + 1 END AS failures,
                   CASE WHEN x.window_start < now() - interval '15 minutes' THEN now() ELSE x.window_start END AS window_start
              FROM envoisms.console_signin_throttle x WHERE x.subject = ANY (subjects)) n
     WHERE t.subject = n.subject
$$;

CREATE FUNCTION envoisms.console_signin_subjects(email text, client_ip inet) RETURNS text[]
LANGUAGE sql IMMUTABLE
RETURN array_remove(ARRAY['email:' || left(email, 254), 'ip:' || host(client_ip)], NULL);

-- The replies of a refused sign-in: they are returned, not raised, so that
-- the failure they counted is committed.
CREATE FUNCTION envoisms.console_refusal(status int, code text, message text, headers jsonb DEFAULT '{}')
RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE
RETURN ROW(status, headers, envoisms.error_envelope(code, message))::envoisms.api_reply;

CREATE FUNCTION envoisms.console_backoff_reply(wait int) RETURNS envoisms.api_reply
LANGUAGE sql IMMUTABLE
RETURN envoisms.console_refusal(429, 'RATE_LIMITED',
           format('too many failed sign-ins; retry in %s s', wait), jsonb_build_object('Retry-After', wait::text));

-- POST /v1/console/sign-in {"email","password"}: a session, or a second-factor
-- challenge; one 401 for a wrong email or password; 429 while backing off.
CREATE FUNCTION envoisms.api_console_sign_in(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_sign_in>>
DECLARE
    email text := lower(btrim(envoisms.body_text(req.body, 'email')));
    password text := envoisms.body_text(req.body, 'password');
    subjects text[];
    wait int;
    u envoisms.console_users;
    ok boolean;
    verify_account text;
    v jsonb;
    c envoisms.console_challenges;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    IF email IS NULL OR email = '' OR length(email) > 254 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email is required', 'email');
    END IF;
    IF password IS NULL OR password = '' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'password is required', 'password');
    END IF;
    subjects := envoisms.console_signin_subjects(email, req.client_ip);
    wait := envoisms.console_throttle_lock(subjects);
    IF wait IS NOT NULL THEN
        RETURN envoisms.console_backoff_reply(wait);
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.email = api_console_sign_in.email;
    -- a hash is checked either way, so an unknown email costs the same time
    ok := envoisms.password_verify(password, coalesce(u.password_hash,
              '$scrypt$ln=14,r=8,p=1$00000000000000000000000000000000$0000000000000000000000000000000000000000000000000000000000000000'))
          AND u.user_id IS NOT NULL
          AND (SELECT a.status <> 'closed' FROM envoisms.accounts a WHERE a.account_id = u.account_id);
    IF NOT ok THEN
        PERFORM envoisms.console_throttle_fail(subjects);
        RETURN envoisms.console_refusal(401, 'UNAUTHORIZED', 'wrong email or password');
    END IF;
    DELETE FROM envoisms.console_signin_throttle t WHERE t.subject = subjects[1];
    IF NOT u.two_factor THEN
        RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
    END IF;

    -- the second factor: a code sent by envoisms' own verify
    verify_account := coalesce(envoisms.console_setting('two_factor_account'), u.account_id);
    v := envoisms.verify_send(verify_account, u.phone, u.two_factor_channel, 'EnvoiSMS', 6, 300,
                              sandbox => coalesce(envoisms.console_setting('two_factor_sandbox') = 'on', false));
    INSERT INTO envoisms.console_challenges (account_id, challenge_id, user_id, verify_account_id, verify_session_id, expires_at)
    VALUES (u.account_id, envoisms.new_id('chl'), u.user_id, verify_account, v->>'session_id',
            envoisms.parse_time(v->>'expires_at', 'expires_at'))
    RETURNING * INTO c;
    RETURN envoisms.reply(200, jsonb_build_object(
        'second_factor', 'required', 'challenge_id', c.challenge_id, 'channel', u.two_factor_channel,
        'to', left(u.phone, 5) || repeat('•', greatest(length(u.phone) - 8, 0)) || right(u.phone, 3),
        'expires_at', envoisms.iso_time(c.expires_at)));
END
$$;

-- POST /v1/console/sign-in/verify {"challenge_id","code"}: the session, once.
CREATE FUNCTION envoisms.api_console_sign_in_verify(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.body_text(req.body, 'challenge_id');
    code text := envoisms.body_text(req.body, 'code');
    c envoisms.console_challenges;
    u envoisms.console_users;
    subjects text[];
    wait int;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    IF id IS NULL OR code IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'challenge_id and code are required',
                                     CASE WHEN id IS NULL THEN 'challenge_id' ELSE 'code' END);
    END IF;
    SELECT * INTO c FROM envoisms.console_challenges x WHERE x.challenge_id = id AND x.used_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'no such sign-in challenge', 'challenge_id');
    END IF;
    IF c.expires_at <= now() THEN
        PERFORM envoisms.raise_error('EXPIRED', 'the sign-in code expired; sign in again', 'code');
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = c.account_id AND x.user_id = c.user_id;
    subjects := envoisms.console_signin_subjects(u.email, req.client_ip);
    wait := envoisms.console_throttle_lock(subjects);
    IF wait IS NOT NULL THEN
        RETURN envoisms.console_backoff_reply(wait);
    END IF;
    IF NOT (envoisms.verify_check(c.verify_account_id, c.verify_session_id, code)->>'verified')::boolean THEN
        PERFORM envoisms.console_throttle_fail(subjects);
        RETURN envoisms.console_refusal(401, 'UNAUTHORIZED', 'wrong code');
    END IF;
    UPDATE envoisms.console_challenges x SET used_at = now()
     WHERE x.account_id = c.account_id AND x.challenge_id = c.challenge_id;
    DELETE FROM envoisms.console_signin_throttle t WHERE t.subject = subjects[1];
    RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
END
$$;

-- GET /v1/console/session
CREATE FUNCTION envoisms.api_console_session(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    s envoisms.console_sessions;
BEGIN
    PERFORM envoisms.console_caller(req);
    s := envoisms.console_session_of(req.headers->>'cookie');
    RETURN ROW(200, '{"Cache-Control": "no-store"}',
               envoisms.console_session_json(s, envoisms.console_cookie_token(req.headers->>'cookie')))::envoisms.api_reply;
END
$$;

-- POST /v1/console/sign-out: the session revoked, the cookie cleared.
CREATE FUNCTION envoisms.api_console_sign_out(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req);
    UPDATE envoisms.console_sessions s SET revoked_at = now()
     WHERE s.account_id = req.account_id AND s.session_id = req.api_key_id AND s.revoked_at IS NULL;
    RETURN ROW(204, jsonb_build_object('Set-Cookie', envoisms.console_cookie(NULL)), NULL)::envoisms.api_reply;
END
$$;

-- PATCH /v1/console/me {"name","phone","two_factor","two_factor_channel","password","current_password"}
CREATE FUNCTION envoisms.api_console_me(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    u envoisms.console_users := envoisms.console_caller(req);
    password text := envoisms.body_text(req.body, 'password');
    phone text;
BEGIN
    IF NOT (req.body ?| ARRAY['name', 'phone', 'two_factor', 'two_factor_channel', 'password']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR',
            'give at least one of name, phone, two_factor, two_factor_channel, password', 'name');
    END IF;
    IF length(envoisms.body_text(req.body, 'name')) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be at most 200 characters', 'name');
    END IF;
    u.name := coalesce(btrim(envoisms.body_text(req.body, 'name')), u.name);
    IF req.body ? 'phone' THEN
        phone := envoisms.body_text(req.body, 'phone');
        u.phone := CASE WHEN phone IS NULL THEN NULL ELSE envoisms.check_phone(phone, 'phone') END;
    END IF;
    u.two_factor := envoisms.body_bool(req.body, 'two_factor', u.two_factor);
    u.two_factor_channel := coalesce(envoisms.body_text(req.body, 'two_factor_channel'), u.two_factor_channel);
    IF u.two_factor_channel NOT IN ('sms', 'whatsapp') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'two_factor_channel must be "sms" or "whatsapp"', 'two_factor_channel');
    END IF;
    IF u.two_factor AND u.phone IS NULL THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'two-factor sign-in needs a phone number', 'phone');
    END IF;
    IF password IS NOT NULL THEN
        PERFORM envoisms.console_check_password(password);
        IF NOT envoisms.password_verify(coalesce(envoisms.body_text(req.body, 'current_password'), ''), u.password_hash) THEN
            PERFORM envoisms.raise_error('FORBIDDEN', 'current_password is wrong', 'current_password');
        END IF;
        u.password_hash := envoisms.password_hash(password);
        -- a new password ends every other session of the user
        UPDATE envoisms.console_sessions s SET revoked_at = now()
         WHERE s.account_id = u.account_id AND s.user_id = u.user_id AND s.session_id <> req.api_key_id
           AND s.revoked_at IS NULL;
    END IF;
    UPDATE envoisms.console_users x
       SET name = u.name, phone = u.phone, two_factor = u.two_factor, two_factor_channel = u.two_factor_channel,
           password_hash = u.password_hash
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN envoisms.reply(200, envoisms.console_user_json(u));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('POST',  '/v1/console/sign-in',        'envoisms.api_console_sign_in(envoisms.api_request)',        'console', true),
    ('POST',  '/v1/console/sign-in/verify', 'envoisms.api_console_sign_in_verify(envoisms.api_request)', 'console', true),
    ('GET',   '/v1/console/session',        'envoisms.api_console_session(envoisms.api_request)',        'console', false),
    ('POST',  '/v1/console/sign-out',       'envoisms.api_console_sign_out(envoisms.api_request)',       'console', false),
    ('PATCH', '/v1/console/me',             'envoisms.api_console_me(envoisms.api_request)',             'console', false);
