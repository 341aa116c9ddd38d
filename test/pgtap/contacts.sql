-- contacts.sql — GET/POST /v1/contacts, POST /v1/contacts/import,
-- DELETE /v1/contacts/:id, GET/POST /v1/contacts/lists, and the domain functions.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(99);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset

-- ---- lists
CREATE TEMP TABLE l AS SELECT * FROM pg_temp.call('POST', '/v1/contacts/lists', '{"name": "Newsletter Clients", "description": "Clients inscrits"}');
SELECT is((SELECT status FROM l), 201, 'POST /v1/contacts/lists → 201');
SELECT is((SELECT body - 'id' - 'created_at' FROM l), '{"name": "Newsletter Clients", "description": "Clients inscrits", "count": 0}'::jsonb,
          'list: the contract''s fields, count 0');
SELECT matches((SELECT body->>'id' FROM l), '^lst_[0-9a-f]{28}$', 'list id is lst_…');
SELECT body->>'id' AS lst FROM l \gset
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/contacts/lists', format('{"name": "%s", "description": "%s"}', repeat('n', 200), repeat('d', 1000)))),
          201, 'list name of 200 and description of 1000 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/lists', format('{"name": "%s"}', repeat('n', 201)), 400, 'VALIDATION_ERROR', 'list name of 201 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/lists', format('{"name": "x", "description": "%s"}', repeat('d', 1001)), 400, 'VALIDATION_ERROR', 'description of 1001 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/lists', '{}', 400, 'VALIDATION_ERROR', 'list without name');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/lists', '{"name": "  "}', 400, 'VALIDATION_ERROR', 'blank list name');

-- ---- create
CREATE TEMP TABLE c AS SELECT * FROM pg_temp.call('POST', '/v1/contacts', format(
    '{"phone": "+212612345678", "name": "Karim Bennani", "email": "karim@example.ma", "list_id": "%s", "custom_fields": {"custom1": "VIP"}}', :'lst'));
SELECT is((SELECT status FROM c), 201, 'POST /v1/contacts → 201');
SELECT is((SELECT body - 'id' - 'created_at' FROM c),
          '{"phone": "+212612345678", "name": "Karim Bennani", "email": "karim@example.ma", "custom1": "VIP", "custom2": null, "custom3": null}'::jsonb,
          'contact: the contract''s fields');
SELECT matches((SELECT body->>'id' FROM c), '^ctc_[0-9a-f]{28}$', 'contact id is ctc_…');
SELECT body->>'id' AS ctc FROM c \gset
SELECT is((SELECT body->'data'->0->'count' FROM pg_temp.call('GET', '/v1/contacts/lists') WHERE body->'data'->0->>'id' = :'lst'),
          NULL, 'lists are newest first');
SELECT is((SELECT (d->>'count')::int FROM pg_temp.call('GET', '/v1/contacts/lists') r, jsonb_array_elements(r.body->'data') d
            WHERE d->>'id' = :'lst'), 1, 'GET /v1/contacts/lists: live count 1');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212612345678"}', 409, 'CONFLICT', 'a second contact with the same phone');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "0612345678"}', 400, 'INVALID_PHONE', 'phone in local format');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"name": "x"}', 400, 'INVALID_PHONE', 'phone missing');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": 212612345678}', 400, 'INVALID_PHONE', 'phone as a number');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+4964000079640000"}', 400, 'INVALID_PHONE',
                            'a 16-digit number libphonenumber calls valid (E.164 has at most 15 digits; it was a 500)');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/contacts', format('{"phone": "+212600000001", "name": "%s"}', repeat('n', 200)))), 201, 'name of 200 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', format('{"phone": "+212600000002", "name": "%s"}', repeat('n', 201)), 400, 'VALIDATION_ERROR', 'name of 201 characters');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/contacts', format('{"phone": "+212600000003", "email": "%s@example.ma"}', repeat('e', 243)))), 201, 'email of 254 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', format('{"phone": "+212600000004", "email": "%s@example.ma"}', repeat('e', 244)), 400, 'VALIDATION_ERROR', 'email of 255 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212600000004", "email": "not-an-email"}', 400, 'VALIDATION_ERROR', 'malformed email');
SELECT is((SELECT status FROM pg_temp.call('POST', '/v1/contacts', format('{"phone": "+212600000005", "custom_fields": {"custom3": "%s"}}', repeat('c', 255)))), 201, 'custom3 of 255 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', format('{"phone": "+212600000006", "custom_fields": {"custom3": "%s"}}', repeat('c', 256)), 400, 'VALIDATION_ERROR', 'custom3 of 256 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212600000006", "custom_fields": {"custom4": "x"}}', 400, 'VALIDATION_ERROR', 'custom4');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212600000006", "custom_fields": ["x"]}', 400, 'VALIDATION_ERROR', 'custom_fields as an array');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212600000006", "custom_fields": {"custom1": 5}}', 400, 'VALIDATION_ERROR', 'custom1 as a number');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts', '{"phone": "+212600000006", "list_id": "lst_nope"}', 404, 'NOT_FOUND', 'unknown list_id');

-- ---- list and search
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/contacts')), '4'::jsonb, 'GET /v1/contacts: total');
SELECT is((SELECT body->'limit' FROM pg_temp.call('GET', '/v1/contacts')), '100'::jsonb, 'default limit 100');
SELECT is((SELECT jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/contacts', query => 'limit=1')), 1, 'limit=1');
SELECT is((SELECT jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/contacts', query => 'limit=500')), 4, 'limit=500');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 400, 'VALIDATION_ERROR', 'limit=0', query => 'limit=0');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 400, 'VALIDATION_ERROR', 'limit=501', query => 'limit=501');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 400, 'VALIDATION_ERROR', 'offset=-1', query => 'offset=-1');
SELECT is((SELECT body->>'offset' || ' ' || jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/contacts', query => 'offset=3')),
          '3 1', 'offset=3 skips three');
SELECT is((SELECT body->>'total' || ' ' || jsonb_array_length(body->'data') FROM pg_temp.call('GET', '/v1/contacts', query => 'offset=100')),
          '4 0', 'an offset past the end: no data, the total still counted');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=benn')), :'ctc', 'q matches a word of the name');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=KARIM%20b')), :'ctc', 'q: several word prefixes, any case');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=karim%40exa')), :'ctc', 'q matches the email''s start');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=example.ma')), '0'::jsonb, 'the middle of an email is not searched');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=%2B2126123')), :'ctc', 'q matches +212… phone prefixes');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=06%2012%2034')), :'ctc', 'q matches the local form 06 12 34');
SELECT is((SELECT body->'data'->0->>'id' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=345678')), :'ctc', 'q matches the last digits');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=zzz')), '0'::jsonb, 'q without a match');
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/contacts', query => 'q=%25')), '0'::jsonb, 'q of punctuation only matches nothing');
SELECT is((SELECT status FROM pg_temp.call('GET', '/v1/contacts', query => 'q=' || repeat('a', 100))), 200, 'q of 100 characters');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 400, 'VALIDATION_ERROR', 'q of 101 characters', query => 'q=' || repeat('a', 101));
SELECT is((SELECT body->'total' FROM pg_temp.call('GET', '/v1/contacts', query => 'list_id=' || :'lst')), '1'::jsonb, 'list_id filter');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 404, 'NOT_FOUND', 'unknown list_id filter', query => 'list_id=lst_nope');
SELECT is(envoisms.contact_list(:'acc', 10, 0, 'bennani')->'data'->0->>'id', :'ctc', 'contact_list called directly');

-- ---- import
CREATE TEMP TABLE i AS SELECT * FROM pg_temp.call('POST', '/v1/contacts/import', format('{"list_id": "%s", "contacts": [
    {"phone": "+212611111111", "name": "Karim"},
    {"phone": "+212622222222", "name": "Youssef", "email": "y@example.ma"},
    {"phone": "+212612345678", "name": "already there"},
    {"phone": "+212622222222", "name": "twice in the request"},
    {"phone": "06 00 00 00 00"},
    {"name": "no phone"},
    "not an object",
    {"phone": "+212633333333", "email": "bad"}]}', :'lst'));
SELECT is((SELECT status FROM i), 200, 'import → 200');
SELECT is((SELECT body->'imported' FROM i), '2'::jsonb, 'import: two new contacts');
SELECT is((SELECT body->'skipped' FROM i), '6'::jsonb, 'import: duplicates and invalid entries skipped');
SELECT is((SELECT jsonb_agg(e->'index' ORDER BY (e->>'index')::int) FROM i, jsonb_array_elements(body->'errors') e),
          '[4, 5, 6, 7]'::jsonb, 'import: the invalid entries are named');
SELECT is((SELECT (d->>'count')::int FROM pg_temp.call('GET', '/v1/contacts/lists') r, jsonb_array_elements(r.body->'data') d
            WHERE d->>'id' = :'lst'), 3, 'import: new contacts and the existing one joined the list');
SELECT is((SELECT name FROM envoisms.contacts WHERE phone = '+212622222222'), 'Youssef', 'import: the first of repeated phones wins');
SELECT is((SELECT name FROM envoisms.contacts WHERE phone = '+212612345678'), 'Karim Bennani', 'import: an existing contact is not changed');
SELECT is(envoisms.contact_import(:'acc', (SELECT jsonb_agg(jsonb_build_object('phone', '+2126' || lpad(g::text, 8, '0'))) FROM generate_series(1, 5000) g))->'imported',
          '4997'::jsonb, 'import of 5000 (three already there)');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/import',
    (SELECT jsonb_build_object('contacts', jsonb_agg(jsonb_build_object('phone', '+2127' || lpad(g::text, 8, '0'))))::text FROM generate_series(1, 5001) g),
    413, 'PAYLOAD_TOO_LARGE', 'import of 5001');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/import', '{"contacts": []}', 400, 'VALIDATION_ERROR', 'import of nothing');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/import', '{"contacts": {"phone": "+212611111119"}}', 400, 'VALIDATION_ERROR', 'contacts not an array');
SELECT * FROM pg_temp.fails('POST', '/v1/contacts/import', '{"contacts": [{"phone": "+212611111119"}], "list_id": "lst_nope"}', 404, 'NOT_FOUND', 'import into an unknown list');

-- ---- delete
CREATE TEMP TABLE d AS SELECT * FROM pg_temp.call('DELETE', '/v1/contacts/' || :'ctc');
SELECT is((SELECT status FROM d), 200, 'DELETE /v1/contacts/:id → 200');
SELECT is((SELECT body FROM d), jsonb_build_object('deleted', true, 'id', :'ctc'), 'delete: the contract''s shape');
SELECT is((SELECT count(*)::int FROM envoisms.list_members WHERE contact_id = :'ctc'), 0, 'delete: memberships go too');
SELECT * FROM pg_temp.fails('DELETE', '/v1/contacts/' || :'ctc', NULL, 404, 'NOT_FOUND', 'delete twice');
SELECT * FROM pg_temp.fails_sql(format('SELECT envoisms.contact_create(%L, %L)', :'acc', '+212611111111'), 'CONFLICT', 'contact_create(duplicate)');
SELECT * FROM pg_temp.fails('GET', '/v1/contacts', NULL, 403, 'FORBIDDEN', 'a key without contacts', pg_temp.new_key(:'acc', '{send}'));

SELECT * FROM finish();
ROLLBACK;
