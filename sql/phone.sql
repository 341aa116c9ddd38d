-- phone: envoisms.phone_e164, envoisms.phone_parse, envoisms.phone_country_name
-- (libphonenumber). A number is accepted only when it parses and is a valid
-- number; local forms need the ISO region. Garbage is never an error.

-- phone_e164: Moroccan mobiles (06 and 07 ranges of IAM, Orange, Inwi),
-- fixed lines, every accepted separator, E.164 and international prefixes,
-- foreign numbers; each bad input next to the good one.
SELECT v.label, v.number, char_length(v.number) AS len, v.region, envoisms.phone_e164(v.number, v.region) AS e164
FROM (VALUES
    (1, 'MA mobile 061 local', '0612345678', 'MA'),
    (2, 'MA mobile 066 local', '0661234567', 'MA'),
    (3, 'MA mobile 062 local', '0662123456', 'MA'),
    (4, 'MA mobile 064 local', '0644123456', 'MA'),
    (5, 'MA mobile 065 local', '0650123456', 'MA'),
    (6, 'MA mobile 070 local', '0700123456', 'MA'),
    (7, 'MA mobile 077 local', '0770123456', 'MA'),
    (8, 'MA fixed Casablanca', '0522201234', 'MA'),
    (9, 'MA fixed Rabat', '0537701234', 'MA'),
    (10, 'region is case-insensitive', '0612345678', 'ma'),
    (11, 'spaces', '06 12 34 56 78', 'MA'),
    (12, 'dashes', '06-12-34-56-78', 'MA'),
    (13, 'dots', '06.12.34.56.78', 'MA'),
    (14, 'parentheses', '(0522) 20-12-34', 'MA'),
    (15, 'surrounding blanks', '  0612345678  ', 'MA'),
    (16, 'E.164 mobile', '+212612345678', NULL),
    (17, 'E.164 fixed', '+212522201234', NULL),
    (18, 'E.164 with spaces', '+212 6 12 34 56 78', NULL),
    (19, 'E.164 with dashes', '+212-661-234-567', NULL),
    (20, 'E.164 wins over region', '+212612345678', 'FR'),
    (21, '00 international prefix', '00212612345678', 'MA'),
    (22, 'country code without +', '212612345678', 'MA'),
    (23, 'FR mobile E.164', '+33 6 12 34 56 78', NULL),
    (24, 'FR mobile local', '06 12 34 56 78', 'FR'),
    (25, 'US Washington', '+1 202-555-0123', NULL),
    (26, 'GB London', '+44 20 7946 0000', NULL),
    (27, 'local without region', '0612345678', NULL),
    (28, 'local with unknown region', '0612345678', 'XX'),
    (29, 'local with bad region', '0612345678', 'Morocco'),
    (30, 'MA number, wrong region', '0612345678', 'US'),
    (31, 'too short for MA', '+2126123', NULL),
    (32, 'too long for MA', '+2126123456789', NULL),
    (33, 'MA unassigned 01 range', '0112345678', 'MA'),
    (34, 'letters', 'abc', 'MA'),
    (35, 'letters in digits', '06123456a8', 'MA'),
    (36, 'vanity letters', '+1 800 FLOWERS', NULL),
    (37, 'empty', '', 'MA'),
    (38, 'blank', '   ', 'MA'),
    (39, 'plus alone', '+', NULL),
    (40, 'double plus', '++212612345678', NULL),
    (41, 'plus inside', '06+12345678', 'MA'),
    (42, 'over 32 characters', repeat('1', 33), 'MA'),
    (43, 'exactly 32 characters', '+212' || repeat(' ', 19) || '612345678', NULL),
    (44, '33 characters', '+212' || repeat(' ', 20) || '612345678', NULL),
    (45, 'sql quote', $$0612345678'; DROP TABLE x; --$$, 'MA'),
    (46, 'trailing dashes are separators', '0612345678--', 'MA'),
    (47, 'semicolon', '0612345678;', 'MA'),
    (48, 'percent', '06%', 'MA'),
    (49, 'arabic-indic digits', '٠٦١٢٣٤٥٦٧٨', 'MA'),
    (50, 'newline inside', E'0612\n345678', 'MA'),
    (51, 'null number', NULL, 'MA')
) AS v(n, label, number, region)
ORDER BY v.n;

-- phone_parse: every field for valid numbers.
SELECT v.number, v.region, p.*
FROM (VALUES
    (1, '0612345678', 'MA'),
    (2, '+212 7 70 12 34 56', NULL),
    (3, '05 22 20 12 34', 'MA'),
    (4, '+212537701234', NULL),
    (5, '0524431234', 'MA'),
    (6, '0801234567', 'MA'),
    (7, '0892123456', 'MA'),
    (8, '+33612345678', NULL),
    (9, '+33140000000', NULL),
    (10, '+1 202-555-0123', NULL),
    (11, '+442079460000', NULL),
    (12, '+80012345678', NULL)
) AS v(n, number, region),
LATERAL envoisms.phone_parse(v.number, v.region) AS p
ORDER BY v.n;

-- phone_parse: invalid numbers are one row, valid = false, the rest NULL.
SELECT v.number, v.region, p.*
FROM (VALUES
    (1, '0612345678', NULL),
    (2, 'abc', 'MA'),
    (3, '', 'MA'),
    (4, '+', NULL),
    (5, '++212612345678', NULL),
    (6, repeat('9', 100), NULL),
    (7, $$'); SELECT pg_sleep(10); --$$, 'MA'),
    (8, '+2126123', NULL),
    (9, '+882 1234 5678', NULL)
) AS v(n, number, region),
LATERAL envoisms.phone_parse(v.number, v.region) AS p
ORDER BY v.n;

-- The region defaults to NULL; a NULL number gives a row of NULLs.
SELECT * FROM envoisms.phone_parse('+212612345678');
SELECT * FROM envoisms.phone_parse(NULL);
SELECT envoisms.phone_e164('+212612345678') AS e164_default_region,
       envoisms.phone_e164(NULL) AS e164_of_null;

-- phone_country_name: English names, NULL for what libphonenumber does not know.
SELECT r AS region, envoisms.phone_country_name(r) AS name
FROM unnest(ARRAY['MA', 'FR', 'ES', 'US', 'GB', 'DE', 'BE', 'NL', 'IT', 'DZ', 'TN',
                  'SN', 'CI', 'AE', 'SA', 'QA', 'CA', 'ma', 'XX', 'ZZ', '001', 'MAR', '',
                  NULL]) WITH ORDINALITY AS x(r, n)
ORDER BY n;

-- The region a number parses to always has a country name.
SELECT p.region, envoisms.phone_country_name(p.region) AS name
FROM envoisms.phone_parse('+212612345678') AS p;

-- phone_e164 answers from a per-backend cache: asked three times over 3000
-- numbers (more than the cache holds, valid and invalid mixed, with and
-- without region), it always agrees with phone_parse, which never caches.
SELECT count(*) AS asked,
       count(*) FILTER (WHERE envoisms.phone_e164(number, region) IS NOT DISTINCT FROM
                              (SELECT e164 FROM envoisms.phone_parse(number, region))) AS agree,
       count(envoisms.phone_e164(number, region)) AS valid
FROM generate_series(1, 3) AS round,
     generate_series(1, 1500) AS n,
     LATERAL (VALUES ('06' || lpad((n * 7919)::text, 8, '0'), 'MA'),
                     ('+2120' || lpad(n::text, 8, '0'), NULL)) AS v(number, region);

-- "+212" and nine digits skips Parse() (see phone_lib.cpp): over every
-- leading digit, Western Sahara's 5288/5289 blocks (country code 212 too)
-- and 4,050 numbers, valid and invalid, with and without a region, it
-- answers what the full parse (phone_parse) answers.
SELECT count(*) AS asked,
       count(*) FILTER (WHERE envoisms.phone_e164(number, region) IS NOT DISTINCT FROM
                              (SELECT e164 FROM envoisms.phone_parse(number, region))) AS agree,
       count(envoisms.phone_e164(number, region)) > 0 AS some_valid,
       count(*) > count(envoisms.phone_e164(number, region)) AS some_invalid
FROM generate_series(1, 9) AS lead,
     generate_series(1, 150) AS n,
     LATERAL (VALUES ('+212' || lead || lpad((n * 104729 % 100000000)::text, 8, '0'), NULL),
                     ('+212' || lead || lpad((n * 7919)::text, 8, '0'), 'MA'),
                     ('+21252' || (8 + n % 2) || lead || lpad((n * 7919 % 100000)::text, 5, '0'), NULL)) AS v(number, region);
