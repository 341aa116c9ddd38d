-- message_request (json.c) reads a POST /v1/messages body. It replaced a
-- PL/pgSQL expression of jsonb operators and type tests (0.3.0's
-- api_messages_create), kept here as old_fields(). Every body that sets any
-- two of the eight fields to any of seven JSON kinds (absent, null, string,
-- number, boolean, object, array) must give the same fields, or the same
-- error (code, message, field) through envoisms.api as 0.3.0 raised.
CREATE FUNCTION pg_temp.old_fields(b jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    col text;
BEGIN
    IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') OR jsonb_typeof(b->'buttons') NOT IN ('array', 'null')
       OR jsonb_typeof(b->'to') NOT IN ('string', 'null') THEN
        IF jsonb_typeof(b->'metadata') NOT IN ('object', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'metadata must be an object', 'metadata');
        ELSIF jsonb_typeof(b->'buttons') NOT IN ('array', 'null') THEN
            PERFORM envoisms.raise_error('VALIDATION_ERROR', 'buttons must be an array', 'buttons');
        END IF;
        PERFORM envoisms.raise_error('INVALID_PHONE', 'to must be E.164 format, for example +212612345678', 'to');
    END IF;
    RETURN 'fields ' || ROW(
        CASE jsonb_typeof(b->'to') WHEN 'string' THEN b->>'to' ELSE envoisms.body_text(b, 'to') END,
        CASE jsonb_typeof(b->'message') WHEN 'string' THEN b->>'message'
             ELSE coalesce(envoisms.body_text(b, 'message'), envoisms.body_text(b, 'body')) END,
        CASE WHEN b->'from' IS NULL THEN 'ENVOISMS' WHEN jsonb_typeof(b->'from') = 'string' THEN b->>'from'
             ELSE coalesce(envoisms.body_text(b, 'from'), 'ENVOISMS') END,
        CASE WHEN b->'channel' IS NULL THEN 'sms' WHEN jsonb_typeof(b->'channel') = 'string' THEN b->>'channel'
             ELSE coalesce(envoisms.body_text(b, 'channel'), 'sms') END,
        b->'cascade' IS NOT NULL AND envoisms.body_bool(b, 'cascade', false),
        nullif(b->'metadata', 'null'),
        nullif(b->'buttons', 'null'))::text;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, col = COLUMN_NAME;
    RETURN format('error %s: %s (%s)', (SELECT e.code FROM envoisms.error_codes e WHERE e.sqlstate = st), msg, col);
END
$$;
SELECT envoisms.api_key_create(envoisms.account_create('requests', 100), 'test', live => false,
                               rate_limit => NULL)->>'api_key' AS key \gset
CREATE FUNCTION pg_temp.new_fields(b jsonb, key text) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN f.bad_field IS NULL
                THEN 'fields ' || ROW(f."to", f.message, f."from", f.channel, f.cascade, f.metadata, f.buttons)::text
                ELSE format('error %s: %s (%s)', e->>'code', e->>'message', e->>'field') END
      FROM envoisms.message_request(b) f,
           LATERAL (SELECT (a.body->'error') AS e
                      FROM envoisms.api('POST', '/v1/messages', '', jsonb_build_object('Authorization', 'Bearer ' || key),
                                        b::text, '127.0.0.1') a
                     WHERE f.bad_field IS NOT NULL
                     UNION ALL SELECT NULL WHERE f.bad_field IS NULL) x
$$;
CREATE TEMP TABLE fields (name text, good jsonb);
INSERT INTO fields VALUES ('metadata', '{"k": "v"}'), ('buttons', '[]'), ('to', '"+212612345678"'),
    ('message', '"x"'), ('body', '"y"'), ('from', '"MyShop"'), ('channel', '"sms"'), ('cascade', 'true');
CREATE TEMP TABLE kinds (kind text, value jsonb);
INSERT INTO kinds VALUES ('absent', NULL), ('null', 'null'), ('string', '"s"'), ('number', '42'),
    ('boolean', 'false'), ('object', '{"a": 1}'), ('array', '[1]'), ('good', NULL);
CREATE TEMP TABLE bodies AS
SELECT '{}'::jsonb
       || CASE WHEN k1.kind = 'absent' THEN '{}' ELSE jsonb_build_object(f1.name, coalesce(k1.value, f1.good)) END
       || CASE WHEN k2.kind = 'absent' THEN '{}' ELSE jsonb_build_object(f2.name, coalesce(k2.value, f2.good)) END AS b
  FROM fields f1, fields f2, kinds k1, kinds k2
 WHERE f1.name < f2.name;
SELECT count(*) AS bodies,
       count(*) FILTER (WHERE pg_temp.old_fields(b) LIKE 'error%') AS refused,
       count(*) FILTER (WHERE pg_temp.old_fields(b) IS DISTINCT FROM pg_temp.new_fields(b, :'key')) AS disagree
  FROM bodies;
SELECT b, pg_temp.old_fields(b) AS old, pg_temp.new_fields(b, :'key') AS new
  FROM bodies WHERE pg_temp.old_fields(b) IS DISTINCT FROM pg_temp.new_fields(b, :'key') LIMIT 5;
-- each refusal, once
SELECT DISTINCT pg_temp.new_fields(b, :'key') AS refusal FROM bodies
 WHERE pg_temp.new_fields(b, :'key') LIKE 'error%' ORDER BY 1;
-- nothing was sent for a refused body
SELECT count(*) AS messages FROM envoisms.messages;

-- body_jsonb (json.c) parses a request body once, building the jsonb value
-- as jsonb_in does. Every document it accepts must equal the cast (as text,
-- so that a number's scale counts too); the ones it refuses must be refused
-- for the right reason.
CREATE TEMP TABLE docs (t text);
INSERT INTO docs VALUES
    ('{}'), ('{"a": 1}'), ('  {"a" : [1, 2.50, -0, 1e5, 1E-7, 0.0001, 123456789012345678901234567890]}  '),
    ('{"a": 1, "a": 2, "b": {"a": 3, "a": [true, false, null]}}'), ('{"\u00e9t\u00e9": "\ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t"}'),
    ('{"nested": {"x": {"y": {"z": [[[{}]]]}}}, "empty": [], "s": ""}'), (E'{\n\t"k":\r\n"v"\n}'),
    ('{"to": "+212612345678", "message": "Votre code de validation est 849204", "from": "MaBoutique"}'),
    ('{"n": 1e1000, "m": -1e-1000, "z": 0e99999}');
SELECT setseed(0.7);
INSERT INTO docs
SELECT jsonb_build_object(
           'k' || g, g,
           chr(97 + g % 26) || chr(19968 + g % 500), round((random() * 10 ^ (g % 30 - 10))::numeric, g % 12),
           'list', jsonb_build_array(g % 2 = 0, NULL, 'x' || chr(1536 + g % 200), jsonb_build_object('deep', g)),
           'o', jsonb_build_object('a', -g, 'b', repeat('é', g % 40)))::text
  FROM generate_series(1, 2000) g;
SELECT count(*) AS documents,
       count(*) FILTER (WHERE (envoisms.body_jsonb(t)).value::text IS DISTINCT FROM t::jsonb::text) AS differ,
       count(*) FILTER (WHERE (envoisms.body_jsonb(t)).problem IS NOT NULL) AS refused
  FROM docs;
-- refused: the reason, and the value is never set then
SELECT t, (envoisms.body_jsonb(t)).*
  FROM unnest(ARRAY['', '   ', '[1, 2]', '"s"', '42', 'null', '{"a": 1', '{"a": 1}}', '{a: 1}', '{"a": 01}',
                    '{"a": "\u0000"}', '{"a\u0000": 1}', '{"a": "\ud800"}', '{"a": "\x"}', '{"a": 1e1001}',
                    '{"a": [1e-1001]}', '{"a": 1e1000000}', '{"a": 1}{"b": 2}', E'{"a": "\x01"}']) t;
