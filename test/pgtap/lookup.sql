-- lookup.sql — POST /v1/verify/lookup and envoisms.number_lookup / carrier_of.
\set ON_ERROR_STOP 1
\set QUIET 1
BEGIN;
\ir lib/api_helpers.psql
SELECT plan(36);

SELECT pg_temp.new_account(10) AS acc \gset
SELECT pg_temp.use_key(pg_temp.new_key(:'acc')) IS NOT NULL AS ok \gset

CREATE TEMP TABLE r AS SELECT * FROM pg_temp.call('POST', '/v1/verify/lookup', '{"number": "+212612345678", "country_code": "MA"}');
SELECT is((SELECT status FROM r), 200, 'lookup → 200');
SELECT is((SELECT body FROM r), '{"valid": true, "number": "212612345678", "local_format": "0612345678",
    "international_format": "+212612345678", "country_prefix": "212", "country_code": "MA", "country_name": "Morocco",
    "location": "Morocco", "carrier": "Orange", "line_type": "mobile"}'::jsonb,
    'the contract''s fields; +212612… is Orange in the libphonenumber data (not the example''s IAM)');
SELECT is(envoisms.number_lookup('+212661000000')->>'carrier', 'Maroc Telecom (IAM)', 'Maroc Telecom is shown as "Maroc Telecom (IAM)"');
SELECT is(envoisms.number_lookup('+212600000000')->>'carrier', 'Inwi', 'Inwi by name');
SELECT is(envoisms.number_lookup('+212770000000')->>'carrier', 'Orange', 'Orange by name (21277)');
SELECT is(envoisms.number_lookup('+212692100000')->>'carrier', 'Al Hourria Telecom', 'seven-digit prefix 2126921');
SELECT is(envoisms.number_lookup('+212650000000')->>'carrier', 'Maroc Telecom (IAM)', '21265 → IAM');
SELECT is(envoisms.number_lookup('+212656000000')->>'carrier', 'Orange', 'the longest prefix wins (212656 over 21265)');
SELECT is(envoisms.carrier_of('+212612345678'), 'Orange', 'carrier_of');
SELECT is(envoisms.carrier_of('+33612345678'), NULL, 'no carrier outside the table');
SELECT is((SELECT count(*)::int FROM envoisms.carrier_prefixes WHERE source = 'libphonenumber'), 78, 'all 78 prefixes of the data file are seeded');
-- the operator can update the table
INSERT INTO envoisms.carrier_prefixes (prefix, carrier) VALUES ('2126123', 'Test Carrier');
SELECT is(envoisms.number_lookup('+212612345678')->>'carrier', 'Test Carrier', 'an operator row with a longer prefix wins');
DELETE FROM envoisms.carrier_prefixes WHERE source = 'operator';

-- formats and country_code
SELECT is(envoisms.number_lookup('0612345678', 'MA')->>'international_format', '+212612345678', 'local format with country_code MA');
SELECT is(envoisms.number_lookup('0612345678', 'ma')->>'international_format', '+212612345678', 'country_code is case-insensitive');
SELECT is(envoisms.number_lookup('0612345678', 'FR')->>'international_format', '+33612345678', 'the same local digits in France');
SELECT is(envoisms.number_lookup('+212612345678', 'FR')->>'country_code', 'MA', 'country_code does not override an international number');
SELECT is(envoisms.number_lookup('0612345678')->'valid', 'false'::jsonb, 'a local number without country_code is not valid');
SELECT is(envoisms.number_lookup('0522212345', 'MA')->>'line_type', 'fixed_line', 'fixed line');
SELECT is(envoisms.number_lookup('0522212345', 'MA')->>'location', 'Casablanca', 'location from the offline geocoder');
SELECT is(envoisms.number_lookup('+33612345678')->>'country_name', 'France', 'foreign number: country name');
SELECT is(envoisms.number_lookup('+212 6 12 34 56 78')->>'number', '212612345678', 'spaces are accepted');
CREATE TEMP TABLE bad AS SELECT * FROM pg_temp.call('POST', '/v1/verify/lookup', '{"number": "12"}');
SELECT is((SELECT status FROM bad), 200, 'an invalid number is a 200 answer');
SELECT is((SELECT body->'valid' FROM bad), 'false'::jsonb, '… with valid false');
SELECT is(envoisms.number_lookup(repeat('1', 32))->'valid', 'false'::jsonb, 'number of 32 characters is accepted (invalid)');

-- errors
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', '{}', 400, 'VALIDATION_ERROR', 'number missing');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', format('{"number": "%s"}', repeat('1', 33)), 400, 'VALIDATION_ERROR', 'number of 33 characters');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', '{"number": "0612345678", "country_code": "XX"}', 400, 'VALIDATION_ERROR', 'unknown country_code');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', '{"number": "0612345678", "country_code": "MAR"}', 400, 'VALIDATION_ERROR', 'three-letter country_code');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', '{"number": 612345678}', 400, 'VALIDATION_ERROR', 'number as a JSON number');
SELECT * FROM pg_temp.fails('POST', '/v1/verify/lookup', '{"number": "+212612345678"}', 403, 'FORBIDDEN', 'a key without verify',
                            pg_temp.new_key(:'acc', '{send}'));

SELECT * FROM finish();
ROLLBACK;
