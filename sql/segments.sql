-- segments: envoisms.sms_segments and envoisms.sms_split.
-- GSM-7 parts hold 160 septets alone or 153 when concatenated; extension
-- characters (^ { } \ [ ~ ] | € and form feed) cost two septets and an
-- escape pair is never split. UCS-2 parts hold 70 units alone or 67 when
-- concatenated; a character outside the BMP costs two units and a
-- surrogate pair is never split.

-- One row per vector: label, then what sms_segments says.
SELECT v.label, s.encoding, s.segments, s.units, s.characters
FROM (VALUES
    (1, 'empty', ''),
    (2, 'hello', 'hello'),
    (3, 'contract example', 'Votre code de validation est 849204'),
    (4, 'gsm 160', repeat('a', 160)),
    (5, 'gsm 161', repeat('a', 161)),
    (6, 'gsm 306', repeat('a', 306)),
    (7, 'gsm 307', repeat('a', 307)),
    (8, 'gsm 459', repeat('a', 459)),
    (9, 'gsm 460', repeat('a', 460)),
    (10, 'gsm 1600', repeat('a', 1600)),
    (11, 'gsm 1601', repeat('a', 1601)),
    (12, 'gsm accents é à è ù ì ò Ç', 'Déjà payé à Fès: où, là, Ç'),
    (13, 'gsm greek capitals', 'ΔΦΓΛΩΠΨΣΘΞ'),
    (14, 'gsm symbols @£$¥¤§¡¿_', '@£$¥¤§¡¿_'),
    (15, 'gsm cr lf', E'a\r\nb'),
    (16, 'euro alone', '€'),
    (17, 'form feed alone', E'\f'),
    (18, 'all ten extension chars', E'^{}\\[~]|€\f'),
    (19, '1600 euros', repeat('€', 1600)),
    (20, 'backtick is not gsm', 'a`b'),
    (21, 'tab is not gsm', E'a\tb'),
    (22, 'ç is not gsm', 'Merci, reçu'),
    (23, 'ê is not gsm', 'Fête'),
    (24, 'greek small alpha is not gsm', 'α'),
    (25, 'ucs2 70 arabic', repeat('م', 70)),
    (26, 'ucs2 71 arabic', repeat('م', 71)),
    (27, 'ucs2 134 arabic', repeat('م', 134)),
    (28, 'ucs2 135 arabic', repeat('م', 135)),
    (29, 'ucs2 69 ascii + ç', repeat('a', 69) || 'ç'),
    (30, 'ucs2 70 ascii + ç', repeat('a', 70) || 'ç'),
    (31, 'ucs2 extension char costs 1', repeat('€', 69) || 'ç'),
    (32, 'mixed arabic french', 'Bonjour مرحبا, votre code est 1234'),
    (33, 'ucs2 1600 arabic', repeat('م', 1600)),
    (34, 'ucs2 1601 arabic', repeat('م', 1601)),
    (35, 'emoji alone', '😀'),
    (36, '35 emoji = 70 units', repeat('😀', 35)),
    (37, '36 emoji = 72 units', repeat('😀', 36)),
    (38, 'surrogate pair straddles 67', repeat('م', 66) || '😀' || repeat('م', 66)),
    (39, 'surrogate pair ends part 1', repeat('م', 65) || '😀' || repeat('م', 67)),
    (40, '69 arabic + emoji = 71 units', repeat('م', 69) || '😀'),
    (41, '68 arabic + emoji = 70 units', repeat('م', 68) || '😀'),
    (42, 'flag = two non-bmp chars', '🇲🇦')
) AS v(n, label, body),
LATERAL envoisms.sms_segments(v.body) AS s
ORDER BY v.n;

-- Each extension character at the single-part boundary (158 or 159 'a'
-- plus the character), and across the 153-septet boundary: 152 'a', the
-- character, 152 'a' is 306 septets yet three parts, because the escape
-- pair cannot be split after septet 153; with 151 'a' in front it fits.
SELECT c.label,
       (SELECT units FROM envoisms.sms_segments(c.ch)) AS units_alone,
       (SELECT segments FROM envoisms.sms_segments(repeat('a', 158) || c.ch)) AS parts_at_160,
       (SELECT segments FROM envoisms.sms_segments(repeat('a', 159) || c.ch)) AS parts_at_161,
       (SELECT segments FROM envoisms.sms_segments(repeat('a', 152) || c.ch || repeat('a', 152))) AS parts_straddling,
       (SELECT segments FROM envoisms.sms_segments(repeat('a', 151) || c.ch || repeat('a', 153))) AS parts_fitting,
       (SELECT array_agg(char_length(p)) FROM envoisms.sms_split(repeat('a', 152) || c.ch || repeat('a', 152)) AS p) AS split_straddling
FROM (VALUES
    (1, 'caret', '^'),
    (2, 'left brace', '{'),
    (3, 'right brace', '}'),
    (4, 'backslash', E'\\'),
    (5, 'left bracket', '['),
    (6, 'tilde', '~'),
    (7, 'right bracket', ']'),
    (8, 'pipe', '|'),
    (9, 'euro', '€'),
    (10, 'form feed', E'\f')
) AS c(n, label, ch)
ORDER BY c.n;

-- sms_split: parts in order, by the same rules.
SELECT ordinality AS part, char_length(p) AS characters
FROM envoisms.sms_split(repeat('a', 161)) WITH ORDINALITY AS p;
SELECT ordinality AS part, char_length(p) AS characters
FROM envoisms.sms_split(repeat('م', 66) || '😀' || repeat('م', 66)) WITH ORDINALITY AS p;
SELECT ordinality AS part, p
FROM envoisms.sms_split('hello') WITH ORDINALITY AS p;
SELECT count(*) AS parts_of_empty FROM envoisms.sms_split('');
-- The emoji opens part 2 whole: part 1 is 66 units, part 2 the emoji (2) + 65.
SELECT p = '😀' || repeat('م', 65) AS part2_is_emoji_and_65
FROM envoisms.sms_split(repeat('م', 66) || '😀' || repeat('م', 66)) WITH ORDINALITY AS x(p, n)
WHERE n = 2;

-- For many bodies mixing one- and two-unit characters: the parts
-- re-concatenate to the body, there are as many as sms_segments bills,
-- none is over its capacity, and each part but the last is full (the next
-- character would not have fitted), i.e. the split is the greedy one.
WITH chunks(chunk) AS (
    VALUES ('a'), ('€'), ('a€'), ('ab^'), ('م'), ('😀'), ('م😀'), ('a😀'), ('€ç')
), bodies AS (
    SELECT chunk, n, repeat(chunk, n) AS body
    FROM chunks, generate_series(1, 400, 7) AS n
), parts AS (
    SELECT b.chunk, b.n, b.body, s.encoding, s.segments, x.p, x.i,
           lead(x.p) OVER (PARTITION BY b.chunk, b.n ORDER BY x.i) AS next_p
    FROM bodies b
    CROSS JOIN LATERAL envoisms.sms_segments(b.body) AS s
    CROSS JOIN LATERAL envoisms.sms_split(b.body) WITH ORDINALITY AS x(p, i)
), costs AS (
    SELECT parts.*,
           (SELECT sum(CASE
                         WHEN encoding = 'ucs2' THEN CASE WHEN ascii(ch) > 65535 THEN 2 ELSE 1 END
                         WHEN ch IN ('^', '{', '}', E'\\', '[', '~', ']', '|', '€', E'\f') THEN 2
                         ELSE 1 END)
            FROM regexp_split_to_table(p, '') AS ch) AS part_units,
           (SELECT CASE
                     WHEN encoding = 'ucs2' THEN CASE WHEN ascii(left(next_p, 1)) > 65535 THEN 2 ELSE 1 END
                     WHEN left(next_p, 1) IN ('^', '{', '}', E'\\', '[', '~', ']', '|', '€', E'\f') THEN 2
                     ELSE 1 END) AS next_units
    FROM parts
), per_body AS (
    SELECT chunk, n, body, encoding, segments,
           string_agg(p, '' ORDER BY i) AS joined,
           count(*) AS split_parts,
           bool_and(part_units <= CASE
                        WHEN segments = 1 THEN CASE encoding WHEN 'gsm7' THEN 160 ELSE 70 END
                        ELSE CASE encoding WHEN 'gsm7' THEN 153 ELSE 67 END END) AS within_capacity,
           bool_and(next_p IS NULL OR part_units + next_units >
                        CASE encoding WHEN 'gsm7' THEN 153 ELSE 67 END) AS greedy
    FROM costs
    GROUP BY chunk, n, body, encoding, segments
)
SELECT count(*) AS bodies,
       count(*) FILTER (WHERE joined = body) AS rejoin_ok,
       count(*) FILTER (WHERE split_parts = segments) AS count_ok,
       count(*) FILTER (WHERE within_capacity) AS capacity_ok,
       count(*) FILTER (WHERE greedy) AS greedy_ok,
       count(*) FILTER (WHERE segments > 1) AS multipart
FROM per_body;

-- NULL in, nothing out (STRICT).
SELECT count(*) AS rows_for_null FROM envoisms.sms_segments(NULL);
SELECT count(*) AS rows_for_null FROM envoisms.sms_split(NULL);
