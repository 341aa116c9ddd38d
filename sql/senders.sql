-- sender_id_valid (checks.c) against the rule it replaced, written as the
-- regular expressions of 0.3.0's check_sender_id: every string of up to 4
-- characters over an alphabet of each character class (letters, digits, +,
-- the allowed punctuation, a forbidden sign, a non-ASCII letter), then
-- 20,000 random strings of 1 to 12 characters and 3,000 numbers of 1 to 18 digits.
CREATE FUNCTION pg_temp.rule(s text) RETURNS boolean LANGUAGE sql IMMUTABLE
RETURN s ~ '^(\+?[0-9]{3,15}|[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$'
       AND NOT (s ~ '^[0-9 ._&-]+$' AND s !~ '^\+?[0-9]{3,15}$');
CREATE TEMP TABLE alphabet AS
SELECT c FROM unnest(ARRAY['a', 'Z', '0', '9', '+', ' ', '.', '_', '&', '-', '!', 'é']) c;
CREATE TEMP TABLE samples AS
SELECT '' AS s
UNION ALL SELECT a.c FROM alphabet a
UNION ALL SELECT a.c || b.c FROM alphabet a, alphabet b
UNION ALL SELECT a.c || b.c || c.c FROM alphabet a, alphabet b, alphabet c
UNION ALL SELECT a.c || b.c || c.c || d.c FROM alphabet a, alphabet b, alphabet c, alphabet d;
SELECT setseed(0.42);
INSERT INTO samples
SELECT string_agg(substr('aZ09+ ._&-!é5m', 1 + floor(random() * 14)::int, 1)
                  || CASE WHEN random() < 0.6 THEN substr('0123456789', 1 + floor(random() * 10)::int, 1) ELSE '' END, '')
  FROM generate_series(1, 20000) g, LATERAL generate_series(1, 1 + (g % 12)) k
 GROUP BY g;
INSERT INTO samples   -- numbers of 1 to 18 digits, a third with +, some with one other character
SELECT CASE WHEN g % 3 = 0 THEN '+' ELSE '' END
       || string_agg(CASE WHEN g % 7 = 0 AND k = 2 THEN substr('a .-+', 1 + g % 5, 1)
                          ELSE substr('0123456789', 1 + floor(random() * 10)::int, 1) END, '')
  FROM generate_series(1, 3000) g, LATERAL generate_series(1, 1 + (g % 18)) k
 GROUP BY g;
SELECT count(*) AS samples,
       count(*) FILTER (WHERE pg_temp.rule(s)) AS valid,
       count(*) FILTER (WHERE length(s) BETWEEN 12 AND 16 AND pg_temp.rule(s)) AS long_valid,
       count(*) FILTER (WHERE envoisms.sender_id_valid(s) IS DISTINCT FROM pg_temp.rule(s)) AS disagree
  FROM samples;
SELECT s, envoisms.sender_id_valid(s) AS c, pg_temp.rule(s) AS rule
  FROM samples WHERE envoisms.sender_id_valid(s) IS DISTINCT FROM pg_temp.rule(s) LIMIT 5;
-- the cases the contract names
SELECT s, envoisms.sender_id_valid(s) AS valid
  FROM unnest(ARRAY['MaBoutique', 'ENVOISMS', 'MyShop', '+212612345678', '0612345678', '12', '123',
                    '1234567890123456', 'Ma Boutique', 'MaBoutique12', '-shop', '12.34', 'Café']) s;
SELECT envoisms.check_sender_id(NULL) AS none, envoisms.check_sender_id('MyShop') AS named;
SELECT envoisms.check_sender_id('MaBoutique12');
