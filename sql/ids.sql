-- ids: envoisms.new_id and envoisms.id_time. An id is prefix "_" 12 hex
-- digits of Unix milliseconds and 16 random hex digits; ids sort by time.

-- Format, for every prefix the API uses and the 2- and 8-letter limits.
SELECT p AS prefix, envoisms.new_id(p) ~ ('^' || p || '_[0-9a-f]{28}$') AS well_formed
FROM unnest(ARRAY['msg', 'batch', 'vrf', 'ctc', 'lst', 'cmp', 'tpl', 'whk', 'key',
                  'acc', 'evt', 'ab', 'abcdefgh']) WITH ORDINALITY AS x(p, n)
ORDER BY n;

-- Bad prefixes are errors.
SELECT envoisms.new_id('a');
SELECT envoisms.new_id('abcdefghi');
SELECT envoisms.new_id('');
SELECT envoisms.new_id('MSG');
SELECT envoisms.new_id('ms1');
SELECT envoisms.new_id('ms_g');
SELECT envoisms.new_id('msé');
SELECT envoisms.new_id(' msg');
SELECT envoisms.new_id(NULL) IS NULL AS null_in_null_out;
DO $$
DECLARE
    state text;
BEGIN
    PERFORM envoisms.new_id('Bad');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    RAISE NOTICE 'new_id(''Bad''): %', state;
END
$$;

-- Unique, and strictly increasing in the order they are made, even when
-- many share one millisecond.
WITH made AS (
    SELECT n, envoisms.new_id('msg') AS id FROM generate_series(1, 20000) AS n
)
SELECT count(DISTINCT id) AS distinct_ids,
       bool_and(id < next_id) AS increasing
FROM (SELECT id, lead(id) OVER (ORDER BY n) AS next_id FROM made) AS pairs;

-- An id made later sorts after, and its time is later.
CREATE TEMP TABLE ids_made (n int, id text);
INSERT INTO ids_made VALUES (1, envoisms.new_id('msg'));
SELECT pg_sleep(0.01);
INSERT INTO ids_made VALUES (2, envoisms.new_id('msg'));
SELECT a.id < b.id AS later_sorts_after,
       envoisms.id_time(b.id) - envoisms.id_time(a.id) >= interval '10 ms' AS time_is_later
FROM ids_made a, ids_made b
WHERE a.n = 1 AND b.n = 2;
DROP TABLE ids_made;

-- id_time: the millisecond the id was made.
SELECT abs(extract(epoch FROM envoisms.id_time(envoisms.new_id('msg')) - clock_timestamp())) < 1
       AS time_is_now;
SELECT envoisms.id_time('msg_0196f3a1b2c3d4e5f6a7b8c9d0e1') AS decoded,
       envoisms.id_time('msg_0196f3a1b2c3d4e5f6a7b8c9d0e1') =
       to_timestamp(x'0196f3a1b2c3'::bigint / 1000.0) AS matches_hex;
SELECT envoisms.id_time('abcdefgh_000000000000ffffffffffffffff') AS epoch_with_8_letter_prefix;

-- id_time: NULL for anything that is not an id.
SELECT v.label, envoisms.id_time(v.id) AS id_time
FROM (VALUES
    (1, 'empty', ''),
    (2, 'no prefix', '_0196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (3, 'no underscore', 'msg0196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (4, 'one-letter prefix', 'm_0196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (5, 'nine-letter prefix', 'abcdefghi_0196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (6, 'upper-case prefix', 'MSG_0196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (7, 'upper-case hex', 'msg_0196F3A1B2C3D4E5F6A7B8C9D0E1'),
    (8, 'not hex', 'msg_0196f3a1b2c3d4e5f6a7b8c9d0eg'),
    (9, 'one digit short', 'msg_0196f3a1b2c3d4e5f6a7b8c9d0e'),
    (10, 'one digit long', 'msg_0196f3a1b2c3d4e5f6a7b8c9d0e1f'),
    (11, 'two underscores', 'ms_g_196f3a1b2c3d4e5f6a7b8c9d0e1'),
    (12, 'uuid', '0196f3a1-b2c3-7d4e-85f6-a7b8c9d0e1ff'),
    (13, 'null', NULL)
) AS v(n, label, id)
ORDER BY v.n;

-- iso_time (C) writes what to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
-- writes, whatever the session's time zone: 20,000 times from 4713 BC to
-- 200000 AD, fractions of a second included, and the edges.
SET timezone = 'Africa/Casablanca';
SELECT count(*) AS times,
       count(*) FILTER (WHERE envoisms.iso_time(t) IS DISTINCT FROM
                              to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) AS differ
  FROM (SELECT timestamptz '4713-01-01 00:00:00+00 BC' + (random() * (timestamptz '200000-12-31 00:00:00+00' - timestamptz '4713-01-01 00:00:00+00 BC')) AS t
          FROM generate_series(1, 20000)
        UNION ALL
        VALUES (timestamptz '2026-05-15 10:30:00.999999+00'), (timestamptz '2026-05-15 11:30:00+01'),
               (timestamptz '0001-01-01 00:00:00+00'), (timestamptz '0001-12-31 23:59:59+00 BC'),
               (timestamptz '9999-12-31 23:59:59+00'), (timestamptz '10000-01-01 00:00:00+00'),
               (timestamptz '1970-01-01 00:00:00+00'), (timestamptz '2000-02-29 12:00:00+00')) AS s(t);
SELECT envoisms.iso_time(timestamptz '2026-05-15 11:30:00.5+01') AS contract_example,
       envoisms.iso_time('infinity') IS NULL AS infinity_null,
       envoisms.iso_time('-infinity') IS NULL AS minus_infinity_null;
RESET timezone;

-- message_charge_valid: the CHECK of messages (a refund never exceeds the
-- charge; a sandbox message is never charged).
SELECT envoisms.message_charge_valid(0.31, 0, false) AS charged,
       envoisms.message_charge_valid(0.31, 0.31, false) AS refunded_all,
       envoisms.message_charge_valid(0.31, 0.3101, false) AS refunded_more,
       envoisms.message_charge_valid(0, 0, true) AS sandbox_free,
       envoisms.message_charge_valid(0.0000, 0, true) AS sandbox_zero_scale,
       envoisms.message_charge_valid(0.31, 0, true) AS sandbox_charged;
