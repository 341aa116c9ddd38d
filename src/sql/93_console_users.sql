-- 93_console_users.sql — what an account's owner manages in the console:
-- its users and their invitations, the account's legal identifiers, and
-- the invoices of its completed top-ups.
--
-- Invoices (money): one per completed top-up, issued by topup_complete()
-- in the transaction that completes it (whatever completes it: Stripe's
-- webhook, the operator's topup_confirm, a failed top-up completed after
-- all; not a trigger, which a Citus cluster would fire on every placement
-- of the topups reference table). Numbers are YYYY-NNNNNN, gapless per calendar year
-- for the whole install (they are the seller's numbers): the year's row of
-- console_invoice_counters is incremented in that same transaction, so its
-- row lock orders concurrent completions and a rolled-back completion
-- gives its number back (test/isolation/specs/console_invoices.spec). The
-- top-up's amount is TTC (tax included): HT = round(TTC / 1.20, 2), TVA =
-- TTC − HT.

-- ---- invitations

CREATE TABLE envoisms.console_invitations (
    account_id    text NOT NULL REFERENCES envoisms.accounts,
    invitation_id text NOT NULL CHECK (invitation_id ~ '^inv_[0-9a-f]{28}$'),
    email         text NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    role          text NOT NULL CHECK (role IN ('owner', 'developer', 'billing', 'viewer')),
    token_hash    text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    invited_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    PRIMARY KEY (account_id, invitation_id)
);
-- An invitation is accepted by its token alone.
CREATE UNIQUE INDEX console_invitations_token ON envoisms.console_invitations (token_hash);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invitations', '');

CREATE FUNCTION envoisms.console_invitation_json(i envoisms.console_invitations) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('invitation_id', i.invitation_id, 'email', i.email, 'role', i.role,
                          'created_at', envoisms.iso_time(i.created_at), 'expires_at', envoisms.iso_time(i.expires_at));

-- GET /v1/console/users (owner): the users and the pending invitations.
CREATE FUNCTION envoisms.api_console_users(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    RETURN envoisms.reply(200, jsonb_build_object(
        'data', coalesce((SELECT jsonb_agg(envoisms.console_user_json(u) ORDER BY u.created_at, u.user_id)
                            FROM envoisms.console_users u WHERE u.account_id = req.account_id), '[]'),
        'invitations', coalesce((SELECT jsonb_agg(envoisms.console_invitation_json(i) ORDER BY i.created_at)
                                   FROM envoisms.console_invitations i
                                  WHERE i.account_id = req.account_id AND i.accepted_at IS NULL
                                    AND i.expires_at > now()), '[]')));
END
$$;

-- POST /v1/console/invitations {"email","role"} (owner): the token, shown once.
CREATE FUNCTION envoisms.api_console_invite(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_invite>>
DECLARE
    u envoisms.console_users := envoisms.console_caller(req, '{owner}');
    email text := lower(btrim(envoisms.body_text(req.body, 'email')));
    role text := envoisms.body_text(req.body, 'role');
    token text := envoisms.random_bytes_hex(32);
    i envoisms.console_invitations;
BEGIN
    IF email IS NULL OR length(email) > 254 OR email !~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'email must be an email address', 'email');
    END IF;
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    IF EXISTS (SELECT 1 FROM envoisms.console_users x WHERE x.email = api_console_invite.email) THEN
        PERFORM envoisms.raise_error('CONFLICT', 'a user with this email exists already', 'email');
    END IF;
    INSERT INTO envoisms.console_invitations (account_id, invitation_id, email, role, token_hash, invited_by, expires_at)
    VALUES (u.account_id, envoisms.new_id('inv'), email, role, envoisms.sha256_hex(token), u.user_id,
            now() + interval '7 days')
    RETURNING * INTO i;
    RETURN envoisms.reply(201, envoisms.console_invitation_json(i)
                               || jsonb_build_object('token', token, 'accept_url', '/console/#/accept/' || token));
END
$$;

-- DELETE /v1/console/invitations/:id (owner)
CREATE FUNCTION envoisms.api_console_invitation_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    DELETE FROM envoisms.console_invitations i
     WHERE i.account_id = req.account_id AND i.invitation_id = req.id AND i.accepted_at IS NULL;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'invitation not found', 'id');
    END IF;
    RETURN envoisms.reply(200, jsonb_build_object('deleted', true, 'invitation_id', req.id));
END
$$;

-- POST /v1/console/invitations/accept {"token","name","password","phone"} (public):
-- the new user, signed in.
CREATE FUNCTION envoisms.api_console_invitation_accept(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_invitation_accept>>
DECLARE
    token text := envoisms.body_text(req.body, 'token');
    i envoisms.console_invitations;
    u envoisms.console_users;
    user_id text;
BEGIN
    PERFORM envoisms.console_check_origin(req.headers);
    SELECT * INTO i FROM envoisms.console_invitations x
     WHERE x.token_hash = envoisms.sha256_hex(coalesce(token, '')) AND x.accepted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'no such invitation, or it was used', 'token');
    END IF;
    IF i.expires_at <= now() THEN
        PERFORM envoisms.raise_error('EXPIRED', 'the invitation expired; ask for a new one', 'token');
    END IF;
    UPDATE envoisms.console_invitations x SET accepted_at = now()
     WHERE x.account_id = i.account_id AND x.invitation_id = i.invitation_id;
    user_id := envoisms.console_user_create(i.account_id, i.email, envoisms.body_text(req.body, 'password'), i.role,
                                            envoisms.body_text(req.body, 'name'), envoisms.body_text(req.body, 'phone'));
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = i.account_id AND x.user_id = api_console_invitation_accept.user_id;
    RETURN envoisms.console_session_start(u, req.client_ip, req.headers->>'user-agent');
END
$$;

-- The owners an account keeps after a change; CONFLICT when none would.
CREATE FUNCTION envoisms.console_check_owner_left(account_id text, changed_user text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM 1 FROM envoisms.console_users u WHERE u.account_id = console_check_owner_left.account_id FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM envoisms.console_users u
                    WHERE u.account_id = console_check_owner_left.account_id AND u.role = 'owner'
                      AND u.user_id <> changed_user) THEN
        PERFORM envoisms.raise_error('CONFLICT', 'an account keeps at least one owner', 'role');
    END IF;
END
$$;

-- PATCH /v1/console/users/:id {"role"} (owner)
CREATE FUNCTION envoisms.api_console_user_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_user_update>>
DECLARE
    role text := envoisms.body_text(req.body, 'role');
    u envoisms.console_users;
BEGIN
    PERFORM envoisms.console_caller(req, '{owner}');
    IF role IS NULL OR role NOT IN ('owner', 'developer', 'billing', 'viewer') THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'role must be owner, developer, billing or viewer', 'role');
    END IF;
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = req.account_id AND x.user_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'user not found', 'id');
    END IF;
    IF u.role = 'owner' AND role <> 'owner' THEN
        PERFORM envoisms.console_check_owner_left(req.account_id, u.user_id);
    END IF;
    UPDATE envoisms.console_users x SET role = api_console_user_update.role
     WHERE x.account_id = u.account_id AND x.user_id = u.user_id
    RETURNING * INTO u;
    RETURN envoisms.reply(200, envoisms.console_user_json(u));
END
$$;

-- DELETE /v1/console/users/:id (owner): the user and their sessions.
CREATE FUNCTION envoisms.api_console_user_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    me envoisms.console_users := envoisms.console_caller(req, '{owner}');
    u envoisms.console_users;
BEGIN
    SELECT * INTO u FROM envoisms.console_users x WHERE x.account_id = req.account_id AND x.user_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'user not found', 'id');
    END IF;
    IF u.user_id = me.user_id THEN
        PERFORM envoisms.raise_error('CONFLICT', 'you cannot remove yourself', 'id');
    END IF;
    IF u.role = 'owner' THEN
        PERFORM envoisms.console_check_owner_left(req.account_id, u.user_id);
    END IF;
    DELETE FROM envoisms.console_users x WHERE x.account_id = u.account_id AND x.user_id = u.user_id;
    RETURN envoisms.reply(200, jsonb_build_object('deleted', true, 'user_id', u.user_id));
END
$$;

-- ---- the account's legal identifiers (Morocco: ICE, IF, RC)

CREATE TABLE envoisms.console_account_legal (
    account_id text PRIMARY KEY REFERENCES envoisms.accounts,
    ice        text CHECK (ice ~ '^[0-9]{15}$'),
    "if"       text CHECK ("if" ~ '^[0-9]{1,10}$'),
    rc         text CHECK (length(rc) BETWEEN 1 AND 20),
    address    text CHECK (length(address) <= 300),
    city       text CHECK (length(city) <= 100),
    updated_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_account_legal', '');

CREATE FUNCTION envoisms.console_legal_json(account_id text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object('name', a.name, 'ice', l.ice, 'if', l."if", 'rc', l.rc,
                              'address', l.address, 'city', l.city)
      FROM envoisms.accounts a
      LEFT JOIN envoisms.console_account_legal l ON l.account_id = a.account_id
     WHERE a.account_id = console_legal_json.account_id
$$;

-- GET /v1/console/account
CREATE FUNCTION envoisms.api_console_account(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM envoisms.console_caller(req);
    RETURN envoisms.reply(200, envoisms.console_account_json(req.account_id) || envoisms.console_legal_json(req.account_id));
END
$$;

-- PATCH /v1/console/account {"name","ice","if","rc","address","city"} (owner, billing)
CREATE FUNCTION envoisms.api_console_account_update(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
<<api_console_account_update>>
DECLARE
    name text := btrim(envoisms.body_text(req.body, 'name'));
    ice text := btrim(envoisms.body_text(req.body, 'ice'));
    fiscal text := btrim(envoisms.body_text(req.body, 'if'));
    rc text := btrim(envoisms.body_text(req.body, 'rc'));
    address text := btrim(envoisms.body_text(req.body, 'address'));
    city text := btrim(envoisms.body_text(req.body, 'city'));
BEGIN
    PERFORM envoisms.console_caller(req, '{owner,billing}');
    IF NOT (req.body ?| ARRAY['name', 'ice', 'if', 'rc', 'address', 'city']) THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'give at least one of name, ice, if, rc, address, city', 'name');
    END IF;
    IF name IS NOT NULL AND length(name) NOT BETWEEN 1 AND 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name must be 1 to 200 characters', 'name');
    ELSIF ice !~ '^[0-9]{15}$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'ice (Identifiant Commun de l''Entreprise) is 15 digits', 'ice');
    ELSIF fiscal !~ '^[0-9]{1,10}$' THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'if (Identifiant Fiscal) is 1 to 10 digits', 'if');
    ELSIF length(rc) NOT BETWEEN 1 AND 20 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'rc (Registre de Commerce) is 1 to 20 characters', 'rc');
    ELSIF length(address) > 300 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'address must be at most 300 characters', 'address');
    ELSIF length(city) > 100 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'city must be at most 100 characters', 'city');
    END IF;
    IF name IS NOT NULL THEN
        UPDATE envoisms.accounts a SET name = api_console_account_update.name WHERE a.account_id = req.account_id;
    END IF;
    INSERT INTO envoisms.console_account_legal AS l (account_id, ice, "if", rc, address, city)
    VALUES (req.account_id, ice, fiscal, rc, address, city)
    ON CONFLICT (account_id) DO UPDATE
       SET ice = coalesce(excluded.ice, l.ice), "if" = coalesce(excluded."if", l."if"),
           rc = coalesce(excluded.rc, l.rc), address = coalesce(excluded.address, l.address),
           city = coalesce(excluded.city, l.city), updated_at = now();
    RETURN envoisms.reply(200, envoisms.console_account_json(req.account_id) || envoisms.console_legal_json(req.account_id));
END
$$;

-- ---- invoices

CREATE TABLE envoisms.console_invoice_counters (
    year        int PRIMARY KEY CHECK (year BETWEEN 2000 AND 9999),
    last_number int NOT NULL CHECK (last_number > 0)
);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invoice_counters', '');

CREATE TABLE envoisms.console_invoices (
    account_id        text NOT NULL REFERENCES envoisms.accounts,
    invoice_id        text NOT NULL CHECK (invoice_id ~ '^fac_[0-9a-f]{28}$'),
    year              int NOT NULL,
    number            int NOT NULL CHECK (number > 0),
    topup_id          text NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    total_ttc_mad     numeric(16,2) NOT NULL CHECK (total_ttc_mad > 0),
    total_ht_mad      numeric(16,2) NOT NULL,
    tva_rate          numeric(4,2) NOT NULL,
    tva_mad           numeric(16,2) NOT NULL,
    seller            jsonb NOT NULL,
    buyer             jsonb NOT NULL,
    paid_with         text NOT NULL,
    payment_reference text NOT NULL,
    PRIMARY KEY (account_id, invoice_id),
    UNIQUE (account_id, topup_id),
    CHECK (total_ht_mad + tva_mad = total_ttc_mad)
);
-- The seller's numbering is global: one number per year, once.
CREATE UNIQUE INDEX console_invoices_number ON envoisms.console_invoices (year, number);
SELECT pg_catalog.pg_extension_config_dump('envoisms.console_invoices', '');

-- The Moroccan VAT (TVA) rate applied to top-ups.
CREATE FUNCTION envoisms.console_tva_rate() RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 0.20;

-- Issue the invoice of a completed top-up (once; the next number of the
-- year, locked until the caller commits); returns its id.
CREATE FUNCTION envoisms.invoice_issue(t envoisms.topups) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    id text := envoisms.new_id('fac');
    issue_year int := extract(year FROM coalesce(t.completed_at, now()) AT TIME ZONE 'UTC')::int;
    issue_number int;
    ttc numeric := round(t.amount_mad, 2);
    ht numeric := round(round(t.amount_mad, 2) / (1 + envoisms.console_tva_rate()), 2);
BEGIN
    IF EXISTS (SELECT 1 FROM envoisms.console_invoices i WHERE i.account_id = t.account_id AND i.topup_id = t.topup_id) THEN
        RETURN NULL;
    END IF;
    INSERT INTO envoisms.console_invoice_counters AS c (year, last_number) VALUES (issue_year, 1)
    ON CONFLICT (year) DO UPDATE SET last_number = c.last_number + 1
    RETURNING c.last_number INTO issue_number;
    INSERT INTO envoisms.console_invoices (account_id, invoice_id, year, number, topup_id, total_ttc_mad, total_ht_mad,
                                           tva_rate, tva_mad, seller, buyer, paid_with, payment_reference)
    VALUES (t.account_id, id, issue_year, issue_number, t.topup_id, ttc, ht, envoisms.console_tva_rate(), ttc - ht,
            jsonb_build_object('name', envoisms.console_setting('seller_name'), 'ice', envoisms.console_setting('seller_ice'),
                               'if', envoisms.console_setting('seller_if'), 'rc', envoisms.console_setting('seller_rc'),
                               'address', envoisms.console_setting('seller_address'),
                               'city', envoisms.console_setting('seller_city'),
                               'email', envoisms.console_setting('seller_email')),
            envoisms.console_legal_json(t.account_id), t.method, t.reference);
    RETURN id;
END
$$;
COMMENT ON FUNCTION envoisms.invoice_issue(envoisms.topups) IS
'Issue the invoice of a completed top-up: the year''s next gapless number, TVA 20% included in the amount';

CREATE FUNCTION envoisms.invoice_number(i envoisms.console_invoices) RETURNS text
LANGUAGE sql IMMUTABLE RETURN i.year || '-' || lpad(i.number::text, 6, '0');

CREATE FUNCTION envoisms.invoice_json(i envoisms.console_invoices, full_detail boolean) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog
RETURN jsonb_build_object('invoice_id', i.invoice_id, 'number', envoisms.invoice_number(i),
                          'issued_at', envoisms.iso_time(i.issued_at), 'total_ht_mad', envoisms.money(i.total_ht_mad),
                          'tva_mad', envoisms.money(i.tva_mad), 'total_ttc_mad', envoisms.money(i.total_ttc_mad),
                          'topup_id', i.topup_id)
       || CASE WHEN full_detail THEN jsonb_build_object(
              'seller', i.seller, 'buyer', i.buyer, 'tva_rate', envoisms.money(i.tva_rate), 'currency', 'MAD',
              'lines', jsonb_build_array(jsonb_build_object(
                  'description', 'Crédit de messages (recharge ' || i.topup_id || ')', 'quantity', 1,
                  'unit_ht_mad', envoisms.money(i.total_ht_mad), 'total_ht_mad', envoisms.money(i.total_ht_mad))),
              'paid_with', i.paid_with, 'payment_reference', i.payment_reference)
          ELSE '{}' END;

-- GET /v1/console/invoices
CREATE FUNCTION envoisms.api_console_invoices(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    lim int := envoisms.query_int(req.query, 'limit', 50, 1, 200);
    off int := envoisms.query_int(req.query, 'offset', 0, 0, 1000000000);
BEGIN
    RETURN envoisms.reply(200, jsonb_build_object('data', coalesce((
        SELECT jsonb_agg(envoisms.invoice_json(i, false) ORDER BY i.issued_at DESC, i.invoice_id DESC)
          FROM (SELECT * FROM envoisms.console_invoices x WHERE x.account_id = req.account_id
                 ORDER BY x.issued_at DESC, x.invoice_id DESC LIMIT lim OFFSET off) i), '[]')));
END
$$;

-- GET /v1/console/invoices/:id
CREATE FUNCTION envoisms.api_console_invoice(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    i envoisms.console_invoices;
BEGIN
    SELECT * INTO i FROM envoisms.console_invoices x WHERE x.account_id = req.account_id AND x.invoice_id = req.id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'invoice not found', 'id');
    END IF;
    RETURN envoisms.reply(200, envoisms.invoice_json(i, true));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission, public) VALUES
    ('GET',    '/v1/console/users',              'envoisms.api_console_users(envoisms.api_request)',              'console', false),
    ('PATCH',  '/v1/console/users/:id',          'envoisms.api_console_user_update(envoisms.api_request)',        'console', false),
    ('DELETE', '/v1/console/users/:id',          'envoisms.api_console_user_delete(envoisms.api_request)',        'console', false),
    ('POST',   '/v1/console/invitations',        'envoisms.api_console_invite(envoisms.api_request)',             'console', false),
    ('DELETE', '/v1/console/invitations/:id',    'envoisms.api_console_invitation_delete(envoisms.api_request)',  'console', false),
    ('POST',   '/v1/console/invitations/accept', 'envoisms.api_console_invitation_accept(envoisms.api_request)',  'console', true),
    ('GET',    '/v1/console/account',            'envoisms.api_console_account(envoisms.api_request)',            'console', false),
    ('PATCH',  '/v1/console/account',            'envoisms.api_console_account_update(envoisms.api_request)',     'console', false),
    ('GET',    '/v1/console/invoices',           'envoisms.api_console_invoices(envoisms.api_request)',           'billing', false),
    ('GET',    '/v1/console/invoices/:id',       'envoisms.api_console_invoice(envoisms.api_request)',            'billing', false);
