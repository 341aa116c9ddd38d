-- 50_contacts.sql — contacts and contact lists: GET/POST /v1/contacts,
-- POST /v1/contacts/import, DELETE /v1/contacts/:id, GET/POST /v1/contacts/lists.
--
-- A contact's phone is stored in E.164; one contact per phone per account
-- (unique key). List membership is a table of its own, so a list's count is
-- always live (count of its members) and a contact can be in many lists.
--
-- Search (q) must stay fast at 1M contacts without pg_trgm (which would make
-- the extension require another one). Every branch of the search is an index
-- scan, OR-ed by the planner (BitmapOr):
--   * words of the name: a GIN index on a 'simple' tsvector of the name,
--     queried with prefix terms (q "kar benn" finds "Karim Bennani"); a q
--     that is a phone fragment is not searched among words;
--   * the email's beginning, for a q without spaces: btree on lower(email)
--     text_pattern_ops (emails are not in the tsvector: every address would
--     be a lexeme of its own, and a prefix such as "karim" would have to
--     walk thousands of them);
--   * the phone's beginning (+212 6…, 06…, 2126…) and its last digits:
--     the unique btree on (account_id, phone) (phone is COLLATE "C", so LIKE
--     'prefix%' is a range scan) and a btree on reverse(phone).
-- Substrings in the middle of a word are not searched. The total of a listing
-- is an exact count: without q, at 1M contacts, that count costs ~0.3 s.

CREATE TABLE envoisms.contact_lists (
    account_id   text NOT NULL REFERENCES envoisms.accounts,
    list_id      text NOT NULL CHECK (list_id ~ '^lst_[0-9a-f]{28}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text CHECK (length(description) <= 1000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list_id)
);

CREATE TABLE envoisms.contacts (
    account_id  text NOT NULL REFERENCES envoisms.accounts,
    contact_id  text NOT NULL CHECK (contact_id ~ '^ctc_[0-9a-f]{28}$'),
    phone       text COLLATE "C" NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    name        text CHECK (length(name) <= 200),
    email       text CHECK (length(email) <= 254),
    custom1     text CHECK (length(custom1) <= 255),
    custom2     text CHECK (length(custom2) <= 255),
    custom3     text CHECK (length(custom3) <= 255),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, contact_id),
    UNIQUE (account_id, phone)
);
-- fastupdate off: a pending list would be scanned linearly by every search
-- until the next vacuum (imports add thousands of rows at once).
CREATE INDEX contacts_words ON envoisms.contacts
    USING gin (to_tsvector('simple'::regconfig, coalesce(name, '')))
    WITH (fastupdate = off);
CREATE INDEX contacts_email ON envoisms.contacts (account_id, lower(email) text_pattern_ops);
CREATE INDEX contacts_phone_reversed ON envoisms.contacts (account_id, reverse(phone) text_pattern_ops);

CREATE TABLE envoisms.list_members (
    account_id  text NOT NULL,
    list_id     text NOT NULL,
    contact_id  text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list_id, contact_id),
    FOREIGN KEY (account_id, list_id) REFERENCES envoisms.contact_lists ON DELETE CASCADE,
    FOREIGN KEY (account_id, contact_id) REFERENCES envoisms.contacts ON DELETE CASCADE
);
CREATE INDEX list_members_contact ON envoisms.list_members (account_id, contact_id);

SELECT pg_catalog.pg_extension_config_dump('envoisms.contact_lists', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.contacts', '');
SELECT pg_catalog.pg_extension_config_dump('envoisms.list_members', '');

-- The contract's contact shape.
CREATE FUNCTION envoisms.contact_json(c envoisms.contacts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', c.contact_id, 'phone', c.phone, 'name', c.name, 'email', c.email,
                              'custom1', c.custom1, 'custom2', c.custom2, 'custom3', c.custom3,
                              'created_at', envoisms.iso_time(c.created_at))
$$;

-- A list of the account, or NOT_FOUND naming `field`.
CREATE FUNCTION envoisms.check_list(account_id text, list_id text, field text DEFAULT 'list_id') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    IF list_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM envoisms.contact_lists l
             WHERE l.account_id = check_list.account_id AND l.list_id = check_list.list_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', format('%s: no such contact list', field), field);
    END IF;
    RETURN list_id;
END
$$;

-- Why a contact's fields are invalid (NULL when they are valid): the first
-- problem as {code, field, message}. Shared by create and import.
CREATE FUNCTION envoisms.contact_problem(phone text, name text, email text, custom_fields jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    k text;
    v jsonb;
BEGIN
    IF phone IS NULL OR left(btrim(phone), 1) <> '+' OR envoisms.phone_e164(phone) IS NULL THEN
        RETURN jsonb_build_object('code', 'INVALID_PHONE', 'field', 'phone',
                                  'message', 'phone must be E.164 format, for example +212612345678');
    END IF;
    IF name IS NOT NULL AND length(name) > 200 THEN
        RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'name',
                                  'message', 'name must be at most 200 characters');
    END IF;
    IF email IS NOT NULL AND (length(email) > 254 OR email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$') THEN
        RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'email',
                                  'message', 'email must be an email address of at most 254 characters');
    END IF;
    IF custom_fields IS NOT NULL THEN
        IF jsonb_typeof(custom_fields) <> 'object' THEN
            RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields',
                                      'message', 'custom_fields must be an object with custom1, custom2, custom3');
        END IF;
        FOR k, v IN SELECT e.key, e.value FROM jsonb_each(custom_fields) e LOOP
            IF k NOT IN ('custom1', 'custom2', 'custom3') THEN
                RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields',
                    'message', format('custom_fields.%s is not allowed; use custom1, custom2, custom3', left(k, 50)));
            END IF;
            IF jsonb_typeof(v) NOT IN ('string', 'null') OR length(v #>> '{}') > 255 THEN
                RETURN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', 'custom_fields.' || k,
                    'message', format('custom_fields.%s must be a string of at most 255 characters', k));
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- Create a contact (optionally adding it to a list); returns the contract's
-- POST /v1/contacts response. A second contact with the same phone is CONFLICT.
CREATE FUNCTION envoisms.contact_create(account_id text, phone text, name text DEFAULT NULL,
                                        email text DEFAULT NULL, list_id text DEFAULT NULL,
                                        custom_fields jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    problem jsonb := envoisms.contact_problem(phone, name, email, custom_fields);
    c envoisms.contacts;
    existing text;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM envoisms.raise_error(problem->>'code', problem->>'message', problem->>'field');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);
    INSERT INTO envoisms.contacts AS x (account_id, contact_id, phone, name, email, custom1, custom2, custom3)
    VALUES (account_id, envoisms.new_id('ctc'), envoisms.phone_e164(phone), nullif(btrim(name), ''),
            lower(nullif(btrim(email), '')),
            custom_fields->>'custom1', custom_fields->>'custom2', custom_fields->>'custom3')
    ON CONFLICT ON CONSTRAINT contacts_account_id_phone_key DO NOTHING
    RETURNING * INTO c;
    IF c.contact_id IS NULL THEN
        SELECT x.contact_id INTO existing FROM envoisms.contacts x
         WHERE x.account_id = contact_create.account_id AND x.phone = envoisms.phone_e164(contact_create.phone);
        PERFORM envoisms.raise_error('CONFLICT',
            format('a contact with phone %s already exists (%s)', envoisms.phone_e164(contact_create.phone), existing), 'phone');
    END IF;
    IF list_id IS NOT NULL THEN
        INSERT INTO envoisms.list_members (account_id, list_id, contact_id) VALUES (account_id, list_id, c.contact_id);
    END IF;
    RETURN envoisms.contact_json(c);
END
$$;
COMMENT ON FUNCTION envoisms.contact_create(text, text, text, text, text, jsonb) IS
'Create a contact, optionally in a list (POST /v1/contacts)';

-- Import up to 5,000 contacts at once (optionally into a list); returns
-- {"imported", "skipped", "errors"}. Invalid entries and phones already in
-- the account (or repeated in the request) are skipped, not fatal; a phone
-- already in the account still joins the list. Set-based: one insert.
CREATE FUNCTION envoisms.contact_import(account_id text, contacts jsonb, list_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    total int;
    imported int;
    errors jsonb;
    n_invalid int;
BEGIN
    IF contacts IS NULL OR jsonb_typeof(contacts) <> 'array' OR jsonb_array_length(contacts) = 0 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'contacts must be an array of 1 to 5000 objects', 'contacts');
    END IF;
    total := jsonb_array_length(contacts);
    IF total > 5000 THEN
        PERFORM envoisms.raise_error('PAYLOAD_TOO_LARGE',
            format('an import holds at most 5000 contacts; got %s', total), 'contacts');
    END IF;
    PERFORM envoisms.check_list(account_id, list_id);

    WITH src AS MATERIALIZED (
        SELECT e.ord, envoisms.phone_e164(v.phone) AS phone, nullif(btrim(v.name), '') AS name,
               lower(nullif(btrim(v.email), '')) AS email,
               v.cf->>'custom1' AS custom1, v.cf->>'custom2' AS custom2, v.cf->>'custom3' AS custom3,
               CASE WHEN jsonb_typeof(e.value) <> 'object'
                    THEN '{"code": "VALIDATION_ERROR", "field": "contacts", "message": "must be an object"}'::jsonb
                    WHEN v.bad_type IS NOT NULL
                    THEN jsonb_build_object('code', 'VALIDATION_ERROR', 'field', v.bad_type,
                                            'message', v.bad_type || ' must be a string')
                    ELSE envoisms.contact_problem(v.phone, v.name, v.email, v.cf) END AS problem
          FROM jsonb_array_elements(contacts) WITH ORDINALITY AS e(value, ord)
         CROSS JOIN LATERAL (
            SELECT CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'phone' END AS phone,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'name' END AS name,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->>'email' END AS email,
                   CASE WHEN jsonb_typeof(e.value) = 'object'
                        THEN coalesce(nullif(e.value->'custom_fields', 'null'),
                                      nullif(jsonb_strip_nulls(jsonb_build_object(
                                          'custom1', e.value->'custom1', 'custom2', e.value->'custom2',
                                          'custom3', e.value->'custom3')), '{}')) END AS cf,
                   CASE WHEN jsonb_typeof(e.value) = 'object' THEN
                        (SELECT f FROM unnest(ARRAY['phone', 'name', 'email']) f
                          WHERE jsonb_typeof(e.value->f) NOT IN ('string', 'null') LIMIT 1) END AS bad_type) v),
    ins AS (
        INSERT INTO envoisms.contacts (account_id, contact_id, phone, name, email, custom1, custom2, custom3)
        SELECT DISTINCT ON (s.phone) contact_import.account_id, envoisms.new_id('ctc'), s.phone, s.name, s.email,
               s.custom1, s.custom2, s.custom3
          FROM src s
         WHERE s.problem IS NULL
         ORDER BY s.phone, s.ord
        ON CONFLICT ON CONSTRAINT contacts_account_id_phone_key DO NOTHING
        RETURNING contact_id),
    members AS (
        INSERT INTO envoisms.list_members (account_id, list_id, contact_id)
        SELECT contact_import.account_id, contact_import.list_id, x.contact_id
          FROM (SELECT i.contact_id FROM ins i
                UNION
                SELECT c.contact_id FROM envoisms.contacts c
                 WHERE c.account_id = contact_import.account_id
                   AND c.phone IN (SELECT s.phone FROM src s WHERE s.problem IS NULL)) x
         WHERE contact_import.list_id IS NOT NULL
        ON CONFLICT DO NOTHING)
    SELECT (SELECT count(*) FROM ins),
           (SELECT count(*) FROM src s WHERE s.problem IS NOT NULL),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('index', p.ord - 1) || p.problem ORDER BY p.ord), '[]')
              FROM (SELECT s.ord, s.problem FROM src s WHERE s.problem IS NOT NULL ORDER BY s.ord LIMIT 100) p)
      INTO imported, n_invalid, errors;
    RETURN jsonb_build_object('imported', imported, 'skipped', total - imported, 'invalid', n_invalid,
                              'errors', errors);
END
$$;
COMMENT ON FUNCTION envoisms.contact_import(text, jsonb, text) IS
'Import up to 10,000 contacts, optionally into a list; reports what was created, updated or refused (POST /v1/contacts/import)';

-- Delete a contact for good (and its list memberships); NOT_FOUND when the
-- account has no such contact.
CREATE FUNCTION envoisms.contact_delete(account_id text, contact_id text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM envoisms.contacts c
     WHERE c.account_id = contact_delete.account_id AND c.contact_id = contact_delete.contact_id;
    IF NOT FOUND THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'contact not found', 'id');
    END IF;
    RETURN jsonb_build_object('deleted', true, 'id', contact_id);
END
$$;
COMMENT ON FUNCTION envoisms.contact_delete(text, text) IS
'Delete a contact (DELETE /v1/contacts/:id)';

-- The search condition of q as a tsquery of word prefixes ("kar benn" →
-- 'kar':* & 'benn':*), NULL when q has no word.
CREATE FUNCTION envoisms.contact_words_query(q text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsquery('simple', string_agg(quote_literal(w) || ':*', ' & '))
      FROM regexp_split_to_table(lower(q), '[^[:alnum:]]+') w
     WHERE w <> ''
$$;

-- The phone prefix q stands for, in E.164 ("06 12" → "+212612", "00336" →
-- "+336", "2126" → "+2126"), NULL when q is not a phone fragment.
CREATE FUNCTION envoisms.contact_phone_prefix(q text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN d !~ '^\+?[0-9]{2,15}$' THEN NULL
                WHEN d LIKE '+%' THEN d
                WHEN d LIKE '00%' THEN '+' || substr(d, 3)
                WHEN d LIKE '0%' THEN '+212' || substr(d, 2)
                ELSE '+' || d END
      FROM (SELECT regexp_replace(btrim(q), '[\s().-]', '', 'g') AS d) x
$$;

-- The contacts matching a search, planned with its arguments as constants
-- (force_custom_plan): the plan drops the arms that are NULL and OR-s the
-- index scans of the others (BitmapOr). PL/pgSQL rather than an inlined SQL
-- function, which Citus cannot plan (96_distribute.sql); a listing without
-- a search reads envoisms.contacts itself (contact_list) to walk the
-- primary key for one page.
CREATE FUNCTION envoisms.contact_search(account_id text, list_id text, searching boolean, words tsquery,
                                        phone_prefix text, digits text, email_prefix text)
RETURNS SETOF envoisms.contacts
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.* FROM envoisms.contacts c
     WHERE c.account_id = contact_search.account_id
       AND (contact_search.list_id IS NULL OR EXISTS (
               SELECT 1 FROM envoisms.list_members m
                WHERE m.account_id = c.account_id AND m.list_id = contact_search.list_id
                  AND m.contact_id = c.contact_id))
       AND (NOT searching
            OR to_tsvector('simple'::regconfig, coalesce(c.name, '')) @@ words
            OR c.phone LIKE phone_prefix || '%'
            OR reverse(c.phone) LIKE reverse(digits) || '%'
            OR lower(c.email) LIKE replace(replace(replace(email_prefix, '\', '\\'), '%', '\%'), '_', '\_') || '%');
END
$$;

-- A page of the account's contacts, newest first: q searches name, email and
-- phone (see the file's head); list_id keeps the members of one list.
-- Plans are made for each call's values (force_custom_plan): a generic plan
-- could not use the LIKE prefixes for index ranges nor drop the unused arms.
CREATE FUNCTION envoisms.contact_list(account_id text, "limit" int DEFAULT 100, "offset" int DEFAULT 0,
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
        WITH listed AS NOT MATERIALIZED (
            SELECT c.* FROM envoisms.contacts c
             WHERE c.account_id = contact_list.account_id
               AND (contact_list.list_id IS NULL OR EXISTS (
                       SELECT 1 FROM envoisms.list_members m
                        WHERE m.account_id = c.account_id AND m.list_id = contact_list.list_id
                          AND m.contact_id = c.contact_id)))
        SELECT (SELECT count(*) FROM listed),
               (SELECT coalesce(jsonb_agg(envoisms.contact_json(ROW(p.*)::envoisms.contacts) ORDER BY p.contact_id DESC), '[]')
                  FROM (SELECT * FROM listed l ORDER BY l.contact_id DESC LIMIT "limit" OFFSET "offset") p)
          INTO n, rows;
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
COMMENT ON FUNCTION envoisms.contact_list(text, int, int, text, text) IS
'A page of an account''s contacts, searched by name, phone or email, or by list (GET /v1/contacts)';

-- The contract's list shape, with its live member count.
CREATE FUNCTION envoisms.contact_list_json(l envoisms.contact_lists) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('id', l.list_id, 'name', l.name, 'description', l.description,
                                  'count', (SELECT count(*) FROM envoisms.list_members m
                                             WHERE m.account_id = l.account_id AND m.list_id = l.list_id),
                                  'created_at', envoisms.iso_time(l.created_at)));
END
$$;

-- Create an empty contact list; returns the contract's POST /v1/contacts/lists response.
CREATE FUNCTION envoisms.contact_list_create(account_id text, name text, description text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    l envoisms.contact_lists;
BEGIN
    IF name IS NULL OR length(btrim(name)) = 0 OR length(name) > 200 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'name is required (1 to 200 characters)', 'name');
    END IF;
    IF length(description) > 1000 THEN
        PERFORM envoisms.raise_error('VALIDATION_ERROR', 'description must be at most 1000 characters', 'description');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM envoisms.accounts a WHERE a.account_id = contact_list_create.account_id) THEN
        PERFORM envoisms.raise_error('NOT_FOUND', 'account not found', 'account_id');
    END IF;
    INSERT INTO envoisms.contact_lists (account_id, list_id, name, description)
    VALUES (account_id, envoisms.new_id('lst'), btrim(name), description)
    RETURNING * INTO l;
    RETURN envoisms.contact_list_json(l);
END
$$;
COMMENT ON FUNCTION envoisms.contact_list_create(text, text, text) IS
'Create a contact list (POST /v1/contacts/lists)';

-- Every contact list of the account, newest first.
CREATE FUNCTION envoisms.contact_lists(account_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN (
        SELECT jsonb_build_object('data', coalesce(jsonb_agg(envoisms.contact_list_json(ROW(l.*)::envoisms.contact_lists) ORDER BY l.list_id DESC), '[]'))
          FROM envoisms.contact_lists l WHERE l.account_id = contact_lists.account_id);
END
$$;
COMMENT ON FUNCTION envoisms.contact_lists(text) IS
'Every contact list of an account with its member count (GET /v1/contacts/lists)';

-- ---- HTTP handlers

CREATE FUNCTION envoisms.api_contacts_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_list(
        req.account_id,
        envoisms.query_int(req.query, 'limit', 100, 1, 500),
        envoisms.query_int(req.query, 'offset', 0, 0, 1000000000),
        req.query->>'q',
        req.query->>'list_id'));
END
$$;

CREATE FUNCTION envoisms.api_contacts_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    b jsonb := req.body;
BEGIN
    IF jsonb_typeof(b->'phone') NOT IN ('string', 'null') THEN
        PERFORM envoisms.raise_error('INVALID_PHONE', 'phone must be E.164 format, for example +212612345678', 'phone');
    END IF;
    RETURN envoisms.reply(201, envoisms.contact_create(
        req.account_id,
        envoisms.body_text(b, 'phone'),
        envoisms.body_text(b, 'name'),
        envoisms.body_text(b, 'email'),
        envoisms.body_text(b, 'list_id'),
        nullif(b->'custom_fields', 'null')));
END
$$;

CREATE FUNCTION envoisms.api_contacts_import(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_import(
        req.account_id, req.body->'contacts', envoisms.body_text(req.body, 'list_id')));
END
$$;

CREATE FUNCTION envoisms.api_contacts_delete(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_delete(req.account_id, req.id));
END
$$;

CREATE FUNCTION envoisms.api_contact_lists_list(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(200, envoisms.contact_lists(req.account_id));
END
$$;

CREATE FUNCTION envoisms.api_contact_lists_create(req envoisms.api_request) RETURNS envoisms.api_reply
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RETURN envoisms.reply(201, envoisms.contact_list_create(
        req.account_id, envoisms.body_text(req.body, 'name'), envoisms.body_text(req.body, 'description')));
END
$$;

INSERT INTO envoisms.api_endpoints (method, template, handler, permission) VALUES
    ('GET',    '/v1/contacts',        'envoisms.api_contacts_list(envoisms.api_request)',        'contacts'),
    ('POST',   '/v1/contacts',        'envoisms.api_contacts_create(envoisms.api_request)',      'contacts'),
    ('POST',   '/v1/contacts/import', 'envoisms.api_contacts_import(envoisms.api_request)',      'contacts'),
    ('DELETE', '/v1/contacts/:id',    'envoisms.api_contacts_delete(envoisms.api_request)',      'contacts'),
    ('GET',    '/v1/contacts/lists',  'envoisms.api_contact_lists_list(envoisms.api_request)',   'contacts'),
    ('POST',   '/v1/contacts/lists',  'envoisms.api_contact_lists_create(envoisms.api_request)', 'contacts');
