-- crypto: envoisms.sha256_hex, hmac_sha256_hex, hmac_sha256_base64,
-- secure_equals, random_bytes_hex, random_digits (OpenSSL).

-- SHA-256 (FIPS 180-2 vectors), lower hex, of the text's UTF-8 bytes.
SELECT envoisms.sha256_hex('') AS sha256_empty,
       envoisms.sha256_hex('abc') AS sha256_abc;
SELECT envoisms.sha256_hex('é') AS sha256_e_acute;
-- Agrees with the server's own sha256() on the same bytes.
SELECT bool_and(envoisms.sha256_hex(t) = encode(sha256(convert_to(t, 'UTF8')), 'hex')) AS matches_builtin
FROM (VALUES ('a'), ('env_live_abcdef0123456789'), ('مرحبا 😀'), (repeat('x', 10000))) AS v(t);

-- HMAC-SHA256, RFC 4231 test cases 1 and 2, and the empty key and message.
SELECT envoisms.hmac_sha256_hex(repeat(chr(11), 20), 'Hi There') AS rfc4231_case1;
SELECT envoisms.hmac_sha256_hex('Jefe', 'what do ya want for nothing?') AS rfc4231_case2;
SELECT envoisms.hmac_sha256_hex('', '') AS hmac_empty;
-- Base64 form over a bytea key: case 2, and case 6 (131-byte key, hashed
-- first because it is longer than the block); both equal the hex digest
-- re-encoded.
SELECT envoisms.hmac_sha256_base64('Jefe'::bytea, 'what do ya want for nothing?') AS case2_base64,
       envoisms.hmac_sha256_base64('Jefe'::bytea, 'what do ya want for nothing?') =
       encode(decode('5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843', 'hex'), 'base64') AS case2_matches_hex;
SELECT envoisms.hmac_sha256_base64(decode(repeat('aa', 131), 'hex'),
                                   'Test Using Larger Than Block-Size Key - Hash Key First') AS rfc4231_case6_base64,
       envoisms.hmac_sha256_base64(decode(repeat('aa', 131), 'hex'),
                                   'Test Using Larger Than Block-Size Key - Hash Key First') =
       encode(decode('60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54', 'hex'), 'base64') AS case6_matches_hex;
-- A webhook signature as the contract shows it: sha256=<hex HMAC(secret, raw body)>.
SELECT 'sha256=' || envoisms.hmac_sha256_hex('whsec_test', '{"event":"message.test"}') AS signature;

-- secure_equals: true only for identical strings.
SELECT v.label, envoisms.secure_equals(v.a, v.b) AS equal
FROM (VALUES
    (1, 'identical', 'sha256=abc', 'sha256=abc'),
    (2, 'last byte differs', 'sha256=abc', 'sha256=abd'),
    (3, 'first byte differs', 'sha256=abc', 'Sha256=abc'),
    (4, 'prefix of the other', 'sha256=ab', 'sha256=abc'),
    (5, 'longer than the other', 'sha256=abcd', 'sha256=abc'),
    (6, 'both empty', '', ''),
    (7, 'empty and not', '', 'a'),
    (8, 'multibyte identical', 'مرحبا', 'مرحبا'),
    (9, 'null', NULL, 'a')
) AS v(n, label, a, b)
ORDER BY v.n;

-- random_bytes_hex: 2n lower-hex digits, different every call.
SELECT envoisms.random_bytes_hex(1) ~ '^[0-9a-f]{2}$' AS one_byte,
       envoisms.random_bytes_hex(32) ~ '^[0-9a-f]{64}$' AS thirty_two_bytes,
       length(envoisms.random_bytes_hex(1024)) AS hex_length_of_1024,
       envoisms.random_bytes_hex(16) <> envoisms.random_bytes_hex(16) AS differs;
SELECT count(DISTINCT envoisms.random_bytes_hex(8)) AS distinct_of_1000
FROM generate_series(1, 1000);
SELECT envoisms.random_bytes_hex(0);
SELECT envoisms.random_bytes_hex(1025);
SELECT envoisms.random_bytes_hex(-1);
SELECT envoisms.random_bytes_hex(NULL) IS NULL AS null_in_null_out;

-- random_digits: n decimal digits, leading zeros kept.
SELECT envoisms.random_digits(1) ~ '^[0-9]$' AS one_digit,
       envoisms.random_digits(6) ~ '^[0-9]{6}$' AS six_digits,
       envoisms.random_digits(32) ~ '^[0-9]{32}$' AS thirty_two_digits;
SELECT envoisms.random_digits(0);
SELECT envoisms.random_digits(33);
SELECT envoisms.random_digits(NULL) IS NULL AS null_in_null_out;
-- Crude uniformity over 20000 digits: each of the ten appears 2000 times
-- on average (standard deviation about 42), so 1700..2300 is 7 sigma.
WITH digits AS (
    SELECT regexp_split_to_table(string_agg(envoisms.random_digits(32), ''), '') AS d
    FROM generate_series(1, 625)
)
SELECT count(DISTINCT d) AS distinct_digits,
       count(*) AS total,
       bool_and(c BETWEEN 1700 AND 2300) AS each_between_1700_and_2300
FROM (SELECT d, count(*) OVER (PARTITION BY d) AS c FROM digits) AS counted;
-- The same for the first digit of 6-digit codes: a code may start with 0.
SELECT count(DISTINCT left(envoisms.random_digits(6), 1)) AS distinct_first_digits
FROM generate_series(1, 2000);

-- Argument errors carry SQLSTATE 22023 (invalid_parameter_value).
DO $$
DECLARE
    state text;
BEGIN
    PERFORM envoisms.random_digits(0);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    RAISE NOTICE 'random_digits(0): %', state;
END
$$;
DO $$
DECLARE
    state text;
BEGIN
    PERFORM envoisms.random_bytes_hex(2000);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    RAISE NOTICE 'random_bytes_hex(2000): %', state;
END
$$;

-- NULL in, NULL out.
SELECT envoisms.sha256_hex(NULL) IS NULL AS sha_null,
       envoisms.hmac_sha256_hex(NULL, 'x') IS NULL AS hmac_null_key,
       envoisms.hmac_sha256_base64('k'::bytea, NULL) IS NULL AS hmac64_null_data;

-- api_key_hash: the SHA-256 of the key a Bearer header carries; NULL for
-- anything that is not "Bearer env_live_|env_test_ + 48 lower-hex digits".
SELECT h.label, envoisms.api_key_hash(h.header) = envoisms.sha256_hex(h.key) AS matches,
       envoisms.api_key_hash(h.header) IS NULL AS refused
  FROM (VALUES
    (1, 'live key', 'Bearer env_live_' || repeat('0a', 24), 'env_live_' || repeat('0a', 24)),
    (2, 'test key, scheme in lower case', 'bearer env_test_' || repeat('f1', 24), 'env_test_' || repeat('f1', 24)),
    (3, 'scheme in upper case, tab, blanks and CR LF around', 'BEARER' || E'\t' || ' env_live_' || repeat('9b', 24) || E' \r\n', 'env_live_' || repeat('9b', 24)),
    (4, 'two spaces before, two after', 'Bearer  env_live_' || repeat('0a', 24) || '  ', 'env_live_' || repeat('0a', 24)),
    (5, 'upper-case hex', 'Bearer env_live_' || repeat('0A', 24), NULL),
    (6, '46 hex digits', 'Bearer env_live_' || repeat('0a', 23), NULL),
    (7, '49 hex digits', 'Bearer env_live_' || repeat('0a', 24) || '0', NULL),
    (8, 'unknown prefix', 'Bearer env_prod_' || repeat('0a', 24), NULL),
    (9, 'no blank after the scheme', 'Bearerenv_live_' || repeat('0a', 24), NULL),
    (10, 'Basic scheme', 'Basic env_live_' || repeat('0a', 24), NULL),
    (11, 'a letter beyond f', 'Bearer env_live_' || repeat('0a', 23) || 'g0', NULL),
    (12, 'scheme alone', 'Bearer ', NULL),
    (13, 'empty', '', NULL)) AS h(n, label, header, key)
 ORDER BY h.n;
SELECT envoisms.api_key_hash(NULL) IS NULL AS hash_null;
